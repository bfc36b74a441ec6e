package scatter_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/qemu/qemutest"
	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/dest"
	"github.com/vmscatter/vmscatter/scatter/host"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/source"
)

// These tests run real QEMU guests (SeaBIOS only, no kernel: they boot in well under a second under TCG) and a real
// receiver on loopback, with the sender in-process. Guests with a real kernel and workload, between network
// namespaces, are in package bench.

func requireQEMU(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("QEMU end-to-end test skipped in -short mode")
	}
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed (make deps installs it)")
	}
	return bin
}

type testGuest struct {
	name string
	qmp  string
	cmd  *exec.Cmd
	q    *qmp.Client
}

// startGuest starts a BIOS-only source guest and returns it connected over QMP.
func startGuest(t *testing.T, bin, dir, name string, memMiB int, extra ...string) *testGuest {
	t.Helper()
	sock := filepath.Join(dir, name+".qmp")
	args := append([]string{"-accel", "tcg", "-machine", "pc", "-m", strconv.Itoa(memMiB), "-nodefaults",
		"-display", "none", "-no-user-config", "-name", name, "-qmp", "unix:" + sock + ",server=on,wait=off",
		"-pidfile", filepath.Join(dir, name+".pid")}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		if q, err := qmp.Dial(ctx, sock); err == nil {
			g := &testGuest{name: name, qmp: sock, cmd: cmd, q: q}
			t.Cleanup(func() { g.q.Close() })
			return g
		}
		if ctx.Err() != nil {
			t.Fatalf("guest %s never opened QMP", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// release closes the test's QMP connection: QEMU serves one QMP client at a time, and the sender needs it.
func (g *testGuest) release() { g.q.Close() }

func (g *testGuest) status(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := qmp.Dial(ctx, g.qmp)
	if err != nil {
		return "gone: " + err.Error()
	}
	defer q.Close()
	s, err := q.Status(ctx)
	if err != nil {
		return "gone: " + err.Error()
	}
	return string(s)
}

func (g *testGuest) pmemsave(t *testing.T, q *qmp.Client, size int, path string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := q.Pmemsave(ctx, 0, int64(size), path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type testReceiver struct {
	addr    string
	dataDir string
	cancel  context.CancelFunc
	done    chan struct{}
	log     *bytes.Buffer
	r       *dest.Receiver
}

// startReceiver runs a receiver on 127.0.0.1. Destination QEMUs it leaves running are killed by pidfile at cleanup.
func startReceiver(t *testing.T, key []byte, mutate func(*dest.Config)) *testReceiver {
	t.Helper()
	dir := t.TempDir()
	logBuf := &bytes.Buffer{}
	cfg := dest.Config{DataDir: dir, Key: key, Log: slog.New(slog.NewTextHandler(&lockedWriter{w: io.MultiWriter(logBuf, testLogWriter{t})}, nil))}
	if mutate != nil {
		mutate(&cfg)
	}
	r, err := dest.NewReceiver(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tr := &testReceiver{addr: ln.Addr().String(), dataDir: dir, cancel: cancel, done: make(chan struct{}), log: logBuf, r: r}
	go func() { r.Serve(ctx, ln); close(tr.done) }()
	t.Cleanup(func() {
		cancel()
		<-tr.done
		killDestinations(dir)
	})
	return tr
}

// killDestinations kills, by the pid in their pidfiles, the destination QEMUs under a data directory.
func killDestinations(dataDir string) {
	files, _ := filepath.Glob(filepath.Join(dataDir, "*", "qemu.pid"))
	for _, f := range files {
		if pid := host.RunningPID(f); pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
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

func destQMP(t *testing.T, r *testReceiver, vm string) *qmp.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := qmp.Dial(ctx, filepath.Join(r.dataDir, vm, "qmp.sock"))
	if err != nil {
		t.Fatalf("destination of %s: %v", vm, err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

func sendCfg(key []byte, targets []string, guests ...*testGuest) source.Config {
	// Each run journals in a state dir of its own: a run that a test leaves unsettled must not hold the next
	// test's VM of the same name (which is what `send` does with a real state dir).
	state, err := os.MkdirTemp(stateDir, "send-")
	if err != nil {
		panic(err)
	}
	cfg := source.Config{Targets: targets, Key: key, Timeout: 2 * time.Minute, Progress: io.Discard, StateDir: state}
	for _, g := range guests {
		g.release()
		cfg.VMs = append(cfg.VMs, source.VMSpec{Name: g.name, QMP: g.qmp})
	}
	return cfg
}

// sendPinned migrates guests[i] to receivers[i] and fails the test unless every one migrated.
func sendPinned(t *testing.T, receivers []*testReceiver, guests ...*testGuest) *report.Report {
	t.Helper()
	var addrs []string
	for _, r := range receivers {
		addrs = append(addrs, r.addr)
	}
	cfg := sendCfg(testKey, addrs, guests...)
	cfg.Placement = map[string]string{}
	for i, g := range guests {
		cfg.Placement[g.name] = receivers[i].addr
	}
	rep, err := source.Send(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range rep.VMs {
		if v.Status != report.StatusMigrated {
			t.Fatalf("%s: %s: %s", v.Name, v.Status, v.Error)
		}
	}
	return rep
}

func waitExit(t *testing.T, g *testGuest) {
	t.Helper()
	done := make(chan struct{})
	go func() { g.cmd.Process.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("source QEMU of %s still runs after its migration", g.name)
	}
}

func TestMigrateTwoVMsToTwoReceiversOverLoopback(t *testing.T) {
	bin := requireQEMU(t)
	dir := t.TempDir()
	running := startGuest(t, bin, dir, "run1", 64)
	paused := startGuest(t, bin, dir, "frozen1", 64)
	r1, r2 := startReceiver(t, testKey, nil), startReceiver(t, testKey, nil)
	time.Sleep(time.Second) // let SeaBIOS write into RAM
	ctx := context.Background()
	if err := paused.q.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	want := paused.pmemsave(t, paused.q, 64<<20, filepath.Join(dir, "src.mem"))

	rep := sendPinned(t, []*testReceiver{r1, r2}, running, paused)
	for _, v := range rep.VMs {
		if v.Pages.Total == 0 || v.Pages.Total != v.Pages.Zero+v.Pages.Literal+v.Pages.Referenced || v.WireBytes == 0 {
			t.Errorf("%s: page counts %+v, wire %d", v.Name, v.Pages, v.WireBytes)
		}
	}
	if rep.VMs[0].Target != r1.addr || rep.VMs[1].Target != r2.addr {
		t.Errorf("pinned placement not honoured: %s, %s", rep.VMs[0].Target, rep.VMs[1].Target)
	}
	// The scan primed both targets, so most non-zero pages travel as references; the paused guest's memory does
	// not change after the scan, so all of its non-zero pages do.
	if rep.Totals.DistinctPages == 0 || rep.Totals.PrimeBytes == 0 {
		t.Errorf("no prime: %+v", rep.Totals)
	}
	for _, v := range rep.VMs {
		if v.Pages.Referenced == 0 {
			t.Errorf("%s: no page travelled as a reference: %+v", v.Name, v.Pages)
		}
	}
	// Among them those the prime left to its overlap (SeaBIOS's copy of itself at the top of RAM): the stream
	// waits for them rather than send them literal.
	if rep.Totals.PrimeOverlapContents == 0 {
		t.Error("the prime left nothing to its overlap")
	}
	if v := rep.VMs[1]; v.ScanNonZero == 0 || v.Pages.Referenced < v.ScanNonZero {
		t.Errorf("paused guest: %d pages referenced, want at least the %d non-zero RAM pages of the scan (its memory did not change since)",
			v.Pages.Referenced, v.ScanNonZero)
	}
	t.Logf("warnings %q, transport %s", rep.Warnings, rep.Transport)
	if rep.Transport != source.TransportMulticast {
		t.Errorf("transport %q: the contents both guests hold should have gone to both targets over multicast on lo", rep.Transport)
	}
	t.Logf("totals %+v; %s pages %+v; %s pages %+v", rep.Totals, rep.VMs[0].Name, rep.VMs[0].Pages, rep.VMs[1].Name, rep.VMs[1].Pages)
	waitExit(t, running)
	waitExit(t, paused)

	q1 := destQMP(t, r1, "run1")
	if s, _ := q1.Status(ctx); s != "running" {
		t.Errorf("run1 on its target is %q, want running", s)
	}
	q2 := destQMP(t, r2, "frozen1")
	if s, _ := q2.Status(ctx); s != "paused" {
		t.Errorf("frozen1 on its target is %q, want paused (it was paused at the source)", s)
	}
	got := paused.pmemsave(t, q2, 64<<20, filepath.Join(dir, "dst.mem"))
	if !bytes.Equal(got, want) {
		t.Fatalf("destination memory differs from the source's (%d of %d bytes differ)", diffCount(got, want), len(want))
	}
}

func diffCount(a, b []byte) int {
	n := 0
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			n++
		}
	}
	return n + max(len(a), len(b)) - min(len(a), len(b))
}

func TestWrongKeyRollsBack(t *testing.T) {
	bin := requireQEMU(t)
	g := startGuest(t, bin, t.TempDir(), "vm1", 32)
	r := startReceiver(t, []byte("another key, not the sender's!!!"), nil)
	rep, err := source.Send(context.Background(), sendCfg(testKey, []string{r.addr}, g))
	if !errors.Is(err, source.ErrNothingMigrated) {
		t.Fatalf("err = %v", err)
	}
	if v := rep.VMs[0]; v.Status != report.StatusRolledBack || !strings.Contains(v.Error, "key") {
		t.Fatalf("report: %+v", v)
	}
	if s := g.status(t); s != "running" {
		t.Fatalf("source is %q", s)
	}
	if !strings.Contains(r.log.String(), "does not know the key") {
		t.Errorf("receiver did not log the refusal:\n%s", r.log.String())
	}
}

func TestUnreachableReceiverRollsBack(t *testing.T) {
	bin := requireQEMU(t)
	g := startGuest(t, bin, t.TempDir(), "vm1", 32)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	rep, err := source.Send(context.Background(), sendCfg(testKey, []string{addr}, g))
	if err == nil || rep == nil || rep.VMs[0].Status != report.StatusRolledBack || !strings.Contains(rep.VMs[0].Error, "unreachable") {
		t.Fatalf("err %v, report %+v", err, rep)
	}
	if s := g.status(t); s != "running" {
		t.Fatalf("source is %q", s)
	}
}

// TestStreamFaultsRollBack breaks the stream in ways a real network or a dying receiver would: the stream cut
// short, the receiver gone mid-stream, and a timeout. Each time the source VM must run again afterwards and the
// receiver must hold no destination.
func TestStreamFaultsRollBack(t *testing.T) {
	bin := requireQEMU(t)
	const cut = 64 << 10 // bytes into the stream, well before its end
	for _, tc := range []struct {
		name    string
		stream  func(net.Conn) net.Conn // the source QEMU's stream as the sender reads it
		die     bool                    // the receiver's VM connection breaks after cut bytes
		timeout time.Duration
		want    string
	}{
		{"truncated stream", func(c net.Conn) net.Conn { return &faultConn{Conn: c, after: cut, eof: true} }, false, 0, "stream"},
		{"receiver dies mid-stream", nil, true, 0, "receiver"},
		{"timeout", func(c net.Conn) net.Conn { return newStallConn(c, cut) }, false, 3 * time.Second, "timed out"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := startGuest(t, bin, t.TempDir(), "vm1", 32)
			r := startReceiver(t, testKey, func(c *dest.Config) {
				c.LoadTimeout = 10 * time.Second
				if tc.die {
					c.WrapConn = secondConnBreaksAfter(cut)
				}
			})
			cfg := sendCfg(testKey, []string{r.addr}, g)
			if tc.stream != nil {
				cfg.WrapStream = func(_ string, c net.Conn) net.Conn { return tc.stream(c) }
			}
			if tc.timeout > 0 {
				cfg.Timeout = tc.timeout
			}
			rep, _ := source.Send(context.Background(), cfg)
			v := rep.VMs[0]
			if v.Status != report.StatusRolledBack || !strings.Contains(v.Error, tc.want) {
				t.Fatalf("report: %+v", v)
			}
			if s := g.status(t); s != "running" {
				t.Fatalf("source is %q after the rollback", s)
			}
			deadline := time.Now().Add(10 * time.Second)
			for host.RunningPID(filepath.Join(r.dataDir, "vm1", "qemu.pid")) > 0 {
				if time.Now().After(deadline) {
					t.Fatal("the receiver left its destination QEMU running")
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

// TestForcedFingerprintCollisionsNeverDeliverWrongPages fingerprints pages by their first byte only, so the scan
// merges thousands of different pages into one "content" and every lookup finds candidates that differ. The salted
// SHA-256 check must reject every one of them: the destination's memory must equal the source's byte for byte.
func TestForcedFingerprintCollisionsNeverDeliverWrongPages(t *testing.T) {
	bin := requireQEMU(t)
	dir := t.TempDir()
	g1 := startGuest(t, bin, dir, "weak1", 64)
	g2 := startGuest(t, bin, dir, "weak2", 64)
	r := startReceiver(t, testKey, nil)
	time.Sleep(time.Second)
	ctx := context.Background()
	var want [][]byte
	for _, g := range []*testGuest{g1, g2} {
		if err := g.q.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		want = append(want, g.pmemsave(t, g.q, 64<<20, filepath.Join(dir, g.name+".src")))
	}
	cfg := sendCfg(testKey, []string{r.addr}, g1, g2)
	cfg.Fingerprint = func(page []byte) dedup.Fingerprint { return dedup.Fingerprint(page[0]) }
	rep, err := source.Send(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Totals.DistinctPages > 256 {
		t.Fatalf("the weak fingerprint did not take: %d distinct contents", rep.Totals.DistinctPages)
	}
	for i, v := range rep.VMs {
		if v.Status != report.StatusMigrated {
			t.Fatalf("%s: %s: %s", v.Name, v.Status, v.Error)
		}
		q := destQMP(t, r, v.Name)
		got := g1.pmemsave(t, q, 64<<20, filepath.Join(dir, v.Name+".dst"))
		if !bytes.Equal(got, want[i]) {
			t.Fatalf("%s: %d bytes differ at the destination: a colliding page was delivered", v.Name, diffCount(got, want[i]))
		}
		t.Logf("%s: pages %+v (references only where the bytes were identical)", v.Name, v.Pages)
	}
}

// Both guests boot with the same blob in RAM, put there by a generic loader as a directly booted kernel is put
// there by QEMU. One target reads those pages from its own copy of the blob (the seed); the other's copy differs,
// so it refuses them and they are primed to it instead. Both destinations' memory equals the sources'.
func TestSeedFromBootFiles(t *testing.T) {
	bin := requireQEMU(t)
	dir := t.TempDir()
	blob := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(7, 8))
	for i := range blob {
		blob[i] = byte(rng.Uint32())
	}
	blobPath := filepath.Join(dir, "blob.bin")
	if err := os.WriteFile(blobPath, blob, 0o644); err != nil {
		t.Fatal(err)
	}
	loader := "loader,file=" + blobPath + ",addr=0x200000,force-raw=on"
	a := startGuest(t, bin, dir, "seeda", 64, "-device", loader)
	b := startGuest(t, bin, dir, "seedb", 64, "-device", loader)
	// r1's seed reads boot files only under its allowed paths.
	r1 := startReceiver(t, testKey, func(c *dest.Config) { c.AllowPaths = []string{dir} })
	other := filepath.Join(dir, "blob-elsewhere.bin") // r2's copy of the blob differs from the source's
	if err := os.WriteFile(other, bytes.Repeat([]byte{0x5a}, len(blob)), 0o644); err != nil {
		t.Fatal(err)
	}
	r2 := startReceiver(t, testKey, func(c *dest.Config) {
		c.AllowPaths = []string{dir}
		c.OpenSeedFile = func(p string) (*os.File, error) {
			if p == blobPath {
				p = other
			}
			return os.Open(p)
		}
	})
	time.Sleep(time.Second) // SeaBIOS runs; the blob stays where the loader put it
	ctx := context.Background()
	var want [][]byte
	for _, g := range []*testGuest{a, b} {
		if err := g.q.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		mem := g.pmemsave(t, g.q, 64<<20, filepath.Join(dir, g.name+".src"))
		if !bytes.Equal(mem[0x200000:0x200000+len(blob)], blob) {
			t.Fatalf("%s: the blob is not in guest RAM at 2 MiB", g.name)
		}
		want = append(want, mem)
	}
	rep := sendPinned(t, []*testReceiver{r1, r2}, a, b)
	// r1 read the blob's 256 pages from its copy; r2 refused them all.
	if got := rep.Totals.SeededContents; got != int64(len(blob)/4096) {
		t.Errorf("seeded %d contents, want %d (the blob's pages, on r1 only)", got, len(blob)/4096)
	}
	for i, r := range []*testReceiver{r1, r2} {
		q := destQMP(t, r, rep.VMs[i].Name)
		got := a.pmemsave(t, q, 64<<20, filepath.Join(dir, rep.VMs[i].Name+".dst"))
		if !bytes.Equal(got, want[i]) {
			t.Fatalf("%s: destination memory differs from the source's (%d bytes)", rep.VMs[i].Name, diffCount(got, want[i]))
		}
	}
	// The bound counts the blob once for r2, and not at all for r1, which had it.
	if rep.Totals.FinalBoundUnicastBytes <= 0 || rep.Totals.FinalBoundBytes > rep.Totals.WireBytes {
		t.Errorf("final bound %d (unicast %d) against %d wire bytes", rep.Totals.FinalBoundBytes, rep.Totals.FinalBoundUnicastBytes, rep.Totals.WireBytes)
	}
}

// TestMigrateEveryQEMUVersion moves a running and a paused guest of each QEMU version (Debian's builds, fetched by
// scripts/fetch-qemu.sh) through vmscatter, to a destination of the same version. QEMU 10.0 and later send
// SWITCHOVER_START between two RAM sections: it must reach the destination in its place, or the destination refuses
// the stream. The paused guest's memory must arrive byte for byte.
func TestMigrateEveryQEMUVersion(t *testing.T) {
	requireQEMU(t)
	for _, v := range qemutest.Versions[1:] { // the system's 7.2 is every other test's
		t.Run(v, func(t *testing.T) {
			bin := qemutest.Binary(t, v)
			dir := t.TempDir()
			running := startGuest(t, bin, dir, "run"+strings.ReplaceAll(v, ".", ""), 64)
			paused := startGuest(t, bin, dir, "frozen"+strings.ReplaceAll(v, ".", ""), 64)
			// A destination of the same version; its firmware (-L) lies in the fetched QEMU's cache directory.
			r := startReceiver(t, testKey, func(c *dest.Config) { c.QEMU, c.AllowPaths = bin, []string{filepath.Dir(bin)} })
			time.Sleep(time.Second) // SeaBIOS writes into RAM
			ctx := context.Background()
			if err := paused.q.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			want := paused.pmemsave(t, paused.q, 64<<20, filepath.Join(dir, "src.mem"))
			rep, err := source.Send(ctx, sendCfg(testKey, []string{r.addr}, running, paused))
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range rep.VMs {
				if v.Status != report.StatusMigrated {
					t.Fatalf("%s: %s: %s", v.Name, v.Status, v.Error)
				}
			}
			q := destQMP(t, r, paused.name)
			got := paused.pmemsave(t, q, 64<<20, filepath.Join(dir, "dst.mem"))
			if !bytes.Equal(got, want) {
				t.Fatalf("QEMU %s: destination memory differs from the source's (%d bytes)", v, diffCount(got, want))
			}
			if s, _ := destQMP(t, r, running.name).Status(ctx); s != "running" {
				t.Errorf("QEMU %s: %s on its target is %q", v, running.name, s)
			}
			t.Logf("QEMU %s: %+v", v, rep.Totals)
		})
	}
}
