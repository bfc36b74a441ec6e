package stream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/qemu/qemutest"
	"github.com/vmscatter/vmscatter/qemu/qmp"
)

// guestFixture is the busybox guest a colleague builds (bench/fixture); the test boots it when present.
const guestFixture = "/root/.cache/vmscatter/fixture"

// guestRAM is 8 KiB short of 64 MiB, as the bench fixture sizes its TCG guests: a RAM block whose start and length
// are multiples of 64 pages sends QEMU 7.2's TCG onto a dirty-bitmap fast path that loses guest writes (DESIGN.md,
// "QEMU 7.2 migration stream"), which would make the memory comparison fail for a reason that is not the codec's.
const (
	guestRAM    = 64<<20 - 8<<10
	guestRAMArg = "65528K"
)

// streamVM is one QEMU process of the real-QEMU stream tests.
type streamVM struct {
	qmp    *qmp.Client
	stderr *bytes.Buffer
}

// startStreamVM starts a small TCG guest of machine type machine ("pc": the binary's newest i440FX type): SeaBIOS
// only, or the fixture kernel when it exists. It is killed by PID in t.Cleanup.
func startStreamVM(ctx context.Context, t *testing.T, bin, machine, dir, name string, extra ...string) *streamVM {
	t.Helper()
	sock := filepath.Join(dir, name+".qmp")
	args := []string{"-accel", "tcg", "-machine", machine, "-m", guestRAMArg, "-nodefaults", "-no-user-config",
		"-display", "none", "-serial", "none", "-qmp", "unix:" + sock + ",server=on,wait=off"}
	if kernel, initrd := filepath.Join(guestFixture, "vmlinuz"), filepath.Join(guestFixture, "initrd.img"); fileExists(kernel) && fileExists(initrd) {
		args = append(args, "-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0")
	}
	cmd := exec.Command(bin, append(args, extra...)...)
	vm := &streamVM{stderr: &bytes.Buffer{}}
	cmd.Stderr = &lockedWriter{w: vm.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() && vm.stderr.Len() > 0 {
			t.Logf("%s QEMU stderr:\n%s", name, vm.stderr)
		}
	})
	vm.qmp = qemutest.DialWhenReady(ctx, t, sock)
	t.Cleanup(func() { vm.qmp.Close() })
	return vm
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func (vm *streamVM) exec(ctx context.Context, t *testing.T, cmd string, args any, result any) {
	t.Helper()
	if err := vm.qmp.Execute(ctx, cmd, args, result); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
}

// waitMigration polls query-migrate until the migration completed, and fails the test if it failed.
func (vm *streamVM) waitMigration(ctx context.Context, t *testing.T, who string) {
	t.Helper()
	for {
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		vm.exec(ctx, t, "query-migrate", nil, &st)
		switch st.Status {
		case "completed":
			return
		case "failed", "cancelled":
			t.Fatalf("%s migration %s: %s", who, st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s migration still %q: %v", who, st.Status, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// regrouper re-encodes a decoded stream with every RAM section split into sections of size pages, page order
// reversed inside each. A split END section becomes PART sections followed by one END. SWITCHOVER_START goes out
// where it came: after every section that came before it.
type regrouper struct {
	enc        *Encoder
	size       int
	kind       SectionKind
	pages      []Page
	in, out    int // sections
	nPages     int
	nZero      int
	switchover int         // SWITCHOVER_START commands
	afterSwOv  SectionKind // kind of the section that followed SWITCHOVER_START
	keepSeed   *seedKeeper
}

func (g *regrouper) event(ev StreamEvent) error {
	if g.keepSeed != nil {
		g.keepSeed.event(ev)
	}
	switch ev := ev.(type) {
	case SwitchoverStart:
		g.switchover++
	case SectionBegin:
		if g.switchover > 0 && g.afterSwOv == 0 {
			g.afterSwOv = ev.Kind
		}
		g.kind, g.pages = ev.Kind, g.pages[:0]
		g.in++
		return nil
	case Page:
		ev.Data = bytes.Clone(ev.Data)
		g.pages = append(g.pages, ev)
		g.nPages++
		if ev.Zero {
			g.nZero++
		}
		return nil
	case SectionEnd:
		return g.flush()
	}
	return g.enc.WriteEvent(ev)
}

func (g *regrouper) flush() error {
	for first := true; first || len(g.pages) > 0; first = false {
		chunk := g.pages[:min(g.size, len(g.pages))]
		g.pages = g.pages[len(chunk):]
		kind := SectionKindPart
		if len(g.pages) == 0 {
			kind = g.kind
		}
		if err := g.enc.BeginSection(kind); err != nil {
			return err
		}
		for i := len(chunk) - 1; i >= 0; i-- {
			if err := g.enc.WritePage(chunk[i]); err != nil {
				return err
			}
		}
		if err := g.enc.EndSection(); err != nil {
			return err
		}
		g.out++
	}
	return nil
}

// TestRegroupedStreamLoadsInRealQEMU migrates a TCG guest from a source QEMU through the Decoder and an Encoder that
// regroups every RAM section into 7-page sections in reversed order, into a destination QEMU of the same version,
// for every version of qemutest.Versions (7.2 is the system's; 10.0 and 11.1 are fetched by scripts/fetch-qemu.sh,
// or skipped with the reason), without and with return-path. Both run "-machine pc", each its newest i440FX type, so
// the 10.0 and 11.1 sources send SWITCHOVER_START. The destination must load the stream and hold the source's RAM.
func TestRegroupedStreamLoadsInRealQEMU(t *testing.T) {
	for _, version := range qemutest.Versions {
		t.Run(version, func(t *testing.T) {
			bin := qemutest.Binary(t, version)
			for _, returnPath := range []bool{false, true} {
				name := "plain"
				if returnPath {
					name = "return-path"
				}
				t.Run(name, func(t *testing.T) {
					testRegroupedStream(t, migrationSetup{version: version, src: bin, dst: bin, returnPath: returnPath})
				})
			}
		})
	}
}

// TestMixedVersionsRealQEMU migrates a QEMU 7.2 source ("-machine pc") into a QEMU 10.0 destination through the codec.
// "-machine pc" is an alias of each binary's newest type (pc-i440fx-7.2 and pc-i440fx-10.0), so the destination is
// started with the source's concrete type, read from the source over QMP (qom-get /machine type), as libvirt does.
func TestMixedVersionsRealQEMU(t *testing.T) {
	src, dst := qemutest.Binary(t, "7.2"), qemutest.Binary(t, "10.0")
	testRegroupedStream(t, migrationSetup{version: "7.2", src: src, dst: dst, dstVersion: "10.0", returnPath: true})
}

// migrationSetup says which QEMU binaries migrate and how.
type migrationSetup struct {
	version    string // the source's QEMU version (qemutest.Versions)
	src, dst   string // binaries
	dstVersion string // the destination's version when it differs: it gets the source's concrete machine type
	returnPath bool
}

// concreteMachine asks a running QEMU for its machine type's own name (what "-machine pc" resolved to): the QOM type
// of /machine is that name with "-machine" appended.
func (vm *streamVM) concreteMachine(ctx context.Context, t *testing.T) string {
	t.Helper()
	var typ string
	vm.exec(ctx, t, "qom-get", map[string]any{"path": "/machine", "property": "type"}, &typ)
	name, ok := strings.CutSuffix(typ, "-machine")
	if !ok || name == "" {
		t.Fatalf("qom-get /machine type = %q", typ)
	}
	return name
}

func testRegroupedStream(t *testing.T, m migrationSetup) {
	if !fileExists(filepath.Join(guestFixture, "vmlinuz")) {
		t.Logf("no guest fixture in %s: migrating a SeaBIOS-only guest", guestFixture)
	}
	dir, err := os.MkdirTemp("", "vmsq") // short: unix socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	returnPath := m.returnPath

	src := startStreamVM(ctx, t, m.src, "pc", dir, "src")
	machine := src.concreteMachine(ctx, t)
	dstMachine := "pc"
	if m.dstVersion != "" {
		dstMachine = machine
	}
	dst := startStreamVM(ctx, t, m.dst, dstMachine, dir, "dst", "-incoming", "defer", "-S")
	if dm := dst.concreteMachine(ctx, t); dm != machine {
		t.Fatalf("source runs %s, destination %s", machine, dm)
	}
	if returnPath {
		caps := map[string]any{"capabilities": []map[string]any{{"capability": "return-path", "state": true}}}
		src.exec(ctx, t, "migrate-set-capabilities", caps, nil)
		dst.exec(ctx, t, "migrate-set-capabilities", caps, nil)
	}
	if fileExists(filepath.Join(guestFixture, "vmlinuz")) {
		time.Sleep(3 * time.Second) // let the guest kernel fill some memory
	}

	dstSock, srcSock := filepath.Join(dir, "dst.mig"), filepath.Join(dir, "src.mig")
	dst.exec(ctx, t, "migrate-incoming", map[string]any{"uri": "unix:" + dstSock}, nil)
	var dstConn *net.UnixConn
	for dstConn == nil {
		c, err := net.Dial("unix", dstSock)
		if err == nil {
			dstConn = c.(*net.UnixConn)
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("destination never listened: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	defer dstConn.Close()
	ln, err := net.Listen("unix", srcSock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	src.exec(ctx, t, "migrate", map[string]any{"uri": "unix:" + srcSock}, nil)
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	srcConn := c.(*net.UnixConn)
	defer srcConn.Close()
	go func() { <-ctx.Done(); srcConn.Close(); dstConn.Close() }()

	// With return-path on, the destination answers on the same socket; relay its bytes back to the source.
	relayed := make(chan error, 1)
	if returnPath {
		go func() {
			_, err := io.Copy(srcConn, dstConn)
			srcConn.CloseWrite()
			relayed <- err
		}()
	} else {
		relayed <- nil
	}

	g := &regrouper{enc: NewEncoder(dstConn), size: 7}
	if returnPath && m.dstVersion == "" && os.Getenv("VMSCATTER_WRITE_STREAM_SEED") != "" {
		g.keepSeed = &seedKeeper{path: realStreamSeed(m.version)}
	}
	d := NewDecoder(srcConn)
	var prefix Prefix
	for {
		ev, err := d.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("decoding the source's stream: %v", err)
		}
		if p, ok := ev.(Prefix); ok {
			prefix = p
		}
		if err := g.event(ev); err != nil {
			t.Fatalf("re-encoding: %v", err)
		}
	}
	if err := g.enc.Flush(); err != nil {
		t.Fatal(err)
	}
	dstConn.CloseWrite()
	if err := <-relayed; err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatalf("relaying the return path: %v", err)
	}
	swov := "no SWITCHOVER_START"
	if g.switchover > 0 {
		swov = fmt.Sprintf("%d SWITCHOVER_START (before the %v section)", g.switchover, g.afterSwOv)
	}
	t.Logf("QEMU %s source stream: %d bytes, %d pages (%d zero), %d RAM sections regrouped into %d; machine %s, "+
		"return path %v, %s, %d MULTIFD_FLUSH; destination %s",
		m.version, d.InputOffset(), g.nPages, g.nZero, g.in, g.out, prefix.Machine, prefix.ReturnPath, swov,
		d.MultifdFlushes(), dst.version(ctx, t))
	if prefix.ReturnPath != returnPath || g.nPages == 0 || g.out <= g.in || prefix.Machine != machine {
		t.Fatalf("the stream was not what the test set up")
	}
	// Machine types 10.0 and later send SWITCHOVER_START once, right before the END section; older ones never.
	if wantSwOv := machineAtLeast(machine, 10, 0); g.switchover != map[bool]int{false: 0, true: 1}[wantSwOv] ||
		wantSwOv && g.afterSwOv != SectionKindEnd {
		t.Fatalf("machine %s: %d SWITCHOVER_START, followed by a %v section", machine, g.switchover, g.afterSwOv)
	}
	dst.waitMigration(ctx, t, "destination")
	src.waitMigration(ctx, t, "source")

	srcMem, dstMem := filepath.Join(dir, "src.mem"), filepath.Join(dir, "dst.mem")
	src.exec(ctx, t, "pmemsave", map[string]any{"val": 0, "size": guestRAM, "filename": srcMem}, nil)
	dst.exec(ctx, t, "pmemsave", map[string]any{"val": 0, "size": guestRAM, "filename": dstMem}, nil)
	a, b := qemutest.ReadFile(t, srcMem), qemutest.ReadFile(t, dstMem)
	if len(a) != guestRAM || len(b) != guestRAM {
		t.Fatalf("pmemsave wrote %d and %d bytes", len(a), len(b))
	}
	var differ []string
	nonZero := 0
	zero := make([]byte, PageSize)
	for off := 0; off < guestRAM; off += PageSize {
		if !bytes.Equal(a[off:off+PageSize], zero) {
			nonZero++
		}
		if !bytes.Equal(a[off:off+PageSize], b[off:off+PageSize]) {
			differ = append(differ, fmt.Sprintf("%#x", off))
		}
	}
	if len(differ) > 0 {
		t.Fatalf("%d of %d guest pages differ after migration, first at %s", len(differ), guestRAM/PageSize,
			strings.Join(differ[:min(8, len(differ))], " "))
	}
	t.Logf("guest RAM identical on both sides: %d pages, %d non-zero", guestRAM/PageSize, nonZero)
	if nonZero < 50 {
		t.Fatalf("only %d non-zero pages: the comparison proves little", nonZero)
	}
	if g.keepSeed != nil {
		g.keepSeed.write(t)
	}
}

// version is the QEMU's own account of its version (query-version's package string, e.g. "Debian 1:10.0.2+...").
func (vm *streamVM) version(ctx context.Context, t *testing.T) string {
	t.Helper()
	var v struct {
		QEMU    struct{ Major, Minor, Micro int } `json:"qemu"`
		Package string                            `json:"package"`
	}
	vm.exec(ctx, t, "query-version", nil, &v)
	return fmt.Sprintf("QEMU %d.%d.%d (%s)", v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro, strings.TrimSpace(v.Package))
}

// machineAtLeast reports whether a versioned machine type such as "pc-i440fx-10.0" or "pc-q35-7.2" is of QEMU
// major.minor or later.
func machineAtLeast(machine string, major, minor int) bool {
	i := strings.LastIndexByte(machine, '-')
	var ma, mi int
	if _, err := fmt.Sscanf(machine[i+1:], "%d.%d", &ma, &mi); err != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

// seedKeeper keeps the first RAM section and the END section, each cut to a few pages, SWITCHOVER_START, and the
// whole tail of a real stream, to write the fuzz seed realStreamSeed(version) (run with VMSCATTER_WRITE_STREAM_SEED=1).
type seedKeeper struct {
	path                     string
	evs                      []StreamEvent
	sections                 int
	keep                     bool // inside a kept section
	data, zero, limitPerKind int
}

func (s *seedKeeper) event(ev StreamEvent) {
	switch e := ev.(type) {
	case SwitchoverStart:
		s.evs = append(s.evs, ev)
	case Prefix, RAMStart, SectionEnd:
		if _, end := ev.(SectionEnd); end && !s.keep {
			return
		}
		s.evs = append(s.evs, ev)
		s.keep = false
	case SectionBegin:
		s.sections++
		s.keep = s.sections == 1 || e.Kind == SectionKindEnd
		s.data, s.zero, s.limitPerKind = 0, 0, 2
		if s.sections == 1 {
			s.limitPerKind = 6
		}
		if s.keep {
			s.evs = append(s.evs, ev)
		}
	case Page:
		n := &s.data
		if e.Zero {
			n = &s.zero
		}
		if s.keep && *n < s.limitPerKind {
			*n++
			e.Data = bytes.Clone(e.Data)
			s.evs = append(s.evs, e)
		}
	case Tail:
		s.evs = append(s.evs, Tail{Raw: bytes.Clone(e.Raw)})
	}
}

func (s *seedKeeper) write(t *testing.T) {
	var out bytes.Buffer
	enc := NewEncoder(&out)
	for _, ev := range s.evs {
		if err := enc.WriteEvent(ev); err != nil {
			t.Fatalf("writing the seed: %v", err)
		}
	}
	enc.Flush()
	if out.Len() > 200<<10 {
		t.Logf("seed of %d bytes is too big to keep", out.Len())
		return
	}
	if err := os.MkdirAll(filepath.Dir(s.path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.path, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s (%d bytes, %d events)", s.path, out.Len(), len(s.evs))
}
