package qemu

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// requireQemuImg skips, with the reason, where qemu-img and qemu-io (Debian's qemu-utils) are missing.
func requireQemuImg(t *testing.T) {
	t.Helper()
	for _, bin := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (qemu-utils; make deps installs it)", bin)
		}
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
}

// identify reads a file's identity the way the sender does.
func identify(t *testing.T, path, format string) ImageIdentity {
	t.Helper()
	f, size, err := OpenImage(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	id, err := IdentifyImage(f, size, format)
	if err != nil {
		t.Fatal(err)
	}
	id.Path = path
	return id
}

// verify checks a file against an identity the way the receiver does.
func verify(t *testing.T, id ImageIdentity, path string, readOnly bool) error {
	t.Helper()
	f, size, err := OpenImage(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return id.Verify(f, size, readOnly)
}

func TestQcow2IdentityOfRealImages(t *testing.T) {
	requireQemuImg(t)
	dir := t.TempDir()
	a := filepath.Join(dir, "a.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", a, "2G")
	run(t, "qemu-io", "-c", "write -P 0xab 0 64k", a)
	id := identify(t, a, "qcow2")
	if id.Format != "qcow2" || id.VirtualSize != 2<<30 || id.ClusterBits != 16 || id.BackingFile != "" || id.Head != nil ||
		len(id.L1) != 1 || id.L1[0][0] != 0 || id.L1[0][1] == 0 {
		t.Fatalf("identity %+v", id)
	}
	if probed := identify(t, a, ""); probed.Format != "qcow2" || len(probed.L1) != 1 {
		t.Fatalf("probed identity %+v", probed)
	}
	if err := verify(t, id, a, false); err != nil {
		t.Fatalf("the same file: %v", err)
	}
	if err := verify(t, id, a, true); err != nil {
		t.Fatalf("the same file, read-only: %v", err)
	}

	// The source keeps writing after it read the identity: a new L2 table, a longer file. Still the same image.
	run(t, "qemu-io", "-c", "write -P 0xcd 1G 64k", a)
	if err := verify(t, id, a, false); err != nil {
		t.Fatalf("the same file, written since: %v", err)
	}
	// A read-only image does not change: a different size means a different file.
	if err := verify(t, id, a, true); !errors.Is(err, ErrImageDiffers) || !strings.Contains(err.Error(), "size") {
		t.Fatalf("a read-only image that grew: %v", err)
	}

	// Another image of the same geometry, written in another order: its L2 tables lie elsewhere.
	b := filepath.Join(dir, "b.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", b, "2G")
	run(t, "qemu-io", "-c", "write -P 0xab 1G 64k", b)
	run(t, "qemu-io", "-c", "write -P 0xab 0 64k", b)
	err := verify(t, id, b, false)
	if !errors.Is(err, ErrImageDiffers) || !strings.Contains(err.Error(), "L1 entry 0") {
		t.Fatalf("another image: %v", err)
	}
	// Other geometry.
	c := filepath.Join(dir, "c.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", c, "1G")
	err = verify(t, id, c, false)
	if !errors.Is(err, ErrImageDiffers) || !strings.Contains(err.Error(), "virtual size 2147483648 at the source, 1073741824 here") ||
		!strings.Contains(err.Error(), "cluster size 65536 at the source, 4096 here") {
		t.Fatalf("another geometry: %v", err)
	}
	// A raw file where the source had a qcow2.
	r := filepath.Join(dir, "r.raw")
	os.WriteFile(r, make([]byte, 1<<20), 0o644)
	if err := verify(t, id, r, false); !errors.Is(err, ErrImageDiffers) || !strings.Contains(err.Error(), "format qcow2") {
		t.Fatalf("a raw file: %v", err)
	}

	// What the identity cannot tell: a copy taken since the source's last allocation holds the same bytes.
	cp := filepath.Join(dir, "copy.qcow2")
	b2, _ := os.ReadFile(a)
	os.WriteFile(cp, b2, 0o644)
	if err := verify(t, id, cp, false); err != nil {
		t.Fatalf("a fresh copy (documented as indistinguishable): %v", err)
	}
}

func TestIdentifyDisksFollowsBackingChains(t *testing.T) {
	requireQemuImg(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "1G")
	run(t, "qemu-io", "-c", "write -P 1 0 64k", base)
	mid := filepath.Join(dir, "mid.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", mid) // relative, as often
	top := filepath.Join(dir, "vm", "top.qcow2")
	os.Mkdir(filepath.Dir(top), 0o755)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top)
	raw := filepath.Join(dir, "data.raw")
	os.WriteFile(raw, bytes.Repeat([]byte{7}, 100<<10), 0o644)

	ids, err := IdentifyDisks([]string{"qemu-system-x86_64", "-drive", "file=" + top + ",format=qcow2,if=virtio",
		"-drive", "file=" + raw + ",format=raw,if=virtio", "-drive", "file=" + mid + ",readonly=on,if=none"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, id := range ids {
		got = append(got, filepath.Base(id.Path)+":"+id.Format+":"+id.BackingFile)
	}
	want := "top.qcow2:qcow2:" + mid + " mid.qcow2:qcow2:base.qcow2 base.qcow2:qcow2: data.raw:raw:"
	if strings.Join(got, " ") != want {
		t.Fatalf("identities %q, want %q", got, want)
	}
	if ids[1].BackingFormat != "qcow2" || len(ids[2].L1) != 1 || len(ids[3].Head) != 32 || ids[3].Size != 100<<10 {
		t.Fatalf("identities %+v", ids)
	}

	// -blockdev with an explicit backing node: QEMU does not read the header's, and neither does the walk.
	ids, err = IdentifyDisks([]string{"qemu-system-x86_64",
		"-blockdev", `{"driver":"file","filename":"` + top + `","node-name":"s"}`,
		"-blockdev", `{"driver":"qcow2","file":"s","node-name":"f","backing":null}`})
	if err != nil || len(ids) != 1 {
		t.Fatalf("explicit null backing: %+v, %v", ids, err)
	}
	if _, err := IdentifyDisks([]string{"qemu-system-x86_64", "-drive", "file=" + filepath.Join(dir, "nowhere.qcow2")}); err == nil {
		t.Fatal("a missing image at the source was identified")
	}
	if _, err := IdentifyDisks([]string{"qemu-system-x86_64", "-drive", "file=" + top, "-snapshot"}); !errors.Is(err, ErrDiskRefused) {
		t.Fatalf("-snapshot: %v", err)
	}
}

func TestRawIdentity(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.raw")
	content := bytes.Repeat([]byte("vmscatter"), 20000)
	os.WriteFile(a, content, 0o644)
	id := identify(t, a, "raw")
	if id.Format != "raw" || id.Size != int64(len(content)) || len(id.Head) != 32 || id.L1 != nil {
		t.Fatalf("identity %+v", id)
	}
	if err := verify(t, id, a, false); err != nil {
		t.Fatal(err)
	}
	// Data beyond the head may change while the source runs; the head and the size may not.
	changed := bytes.Clone(content)
	changed[HeadBytes+10] ^= 1
	os.WriteFile(a, changed, 0o644)
	if err := verify(t, id, a, false); err != nil {
		t.Fatalf("a write past the head: %v", err)
	}
	changed[10] ^= 1
	os.WriteFile(a, changed, 0o644)
	if err := verify(t, id, a, false); !errors.Is(err, ErrImageDiffers) || !strings.Contains(err.Error(), "SHA-256 of the first 64 KiB") {
		t.Fatalf("another head: %v", err)
	}
	os.WriteFile(a, append(content, 0), 0o644)
	if err := verify(t, id, a, false); !errors.Is(err, ErrImageDiffers) || !strings.Contains(err.Error(), "size (bytes)") {
		t.Fatalf("a raw image of another size: %v", err)
	}
	// Probed: a file that is not qcow2 at the source must not be one here.
	probed := identify(t, a, "")
	qc := filepath.Join(dir, "q")
	os.WriteFile(qc, qcow2Image(t, qcow2Spec{}), 0o644)
	if err := verify(t, probed, qc, false); !errors.Is(err, ErrImageDiffers) || !strings.Contains(err.Error(), "qcow2 here") {
		t.Fatalf("probed raw, qcow2 here: %v", err)
	}
	// A tiny image digests what there is.
	tiny := filepath.Join(dir, "tiny")
	os.WriteFile(tiny, []byte{1, 2, 3}, 0o644)
	if id := identify(t, tiny, ""); id.Size != 3 || len(id.Head) != 32 {
		t.Fatalf("tiny: %+v", id)
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	if id := identify(t, empty, "raw"); id.Size != 0 || len(id.Head) != 32 {
		t.Fatalf("empty: %+v", id)
	}
}

// qcow2Spec describes a synthetic qcow2 image (version 3, one L1 table of 16 entries after the header cluster).
type qcow2Spec struct {
	clusterBits uint32
	backing     string
	l1          map[int]uint64
	mutate      func(b []byte)
}

func qcow2Image(t *testing.T, s qcow2Spec) []byte {
	t.Helper()
	if s.clusterBits == 0 {
		s.clusterBits = 16
	}
	cs := 1 << s.clusterBits
	b := make([]byte, 3*cs)
	be := binary.BigEndian
	be.PutUint32(b[0:], qcow2Magic)
	be.PutUint32(b[4:], 3)
	if s.backing != "" {
		be.PutUint64(b[8:], 256)
		be.PutUint32(b[16:], uint32(len(s.backing)))
		copy(b[256:], s.backing)
	}
	be.PutUint32(b[20:], s.clusterBits)
	be.PutUint64(b[24:], 1<<30)
	be.PutUint32(b[36:], 16)
	be.PutUint64(b[40:], uint64(cs))
	be.PutUint64(b[48:], uint64(2*cs))
	be.PutUint32(b[96:], 4)
	be.PutUint32(b[100:], qcow2HeaderV3Len)
	for i, off := range s.l1 {
		be.PutUint64(b[cs+8*i:], off|1<<63) // the COPIED flag is not part of the offset
	}
	if s.mutate != nil {
		s.mutate(b)
	}
	return b
}

func TestQcow2HeaderChecks(t *testing.T) {
	good := qcow2Image(t, qcow2Spec{backing: "base.qcow2", l1: map[int]uint64{3: 0x30000, 9: 0x90000}})
	id, err := IdentifyImage(bytes.NewReader(good), int64(len(good)), "qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if id.BackingFile != "base.qcow2" || len(id.L1) != 2 || id.L1[0] != [2]uint64{3, 0x30000} || id.L1[1] != [2]uint64{9, 0x90000} {
		t.Fatalf("identity %+v", id)
	}
	// Header fields a running QEMU rewrites are not part of the identity.
	moved := qcow2Image(t, qcow2Spec{backing: "base.qcow2", l1: map[int]uint64{3: 0x30000, 9: 0x90000, 12: 0xc0000},
		mutate: func(b []byte) {
			binary.BigEndian.PutUint64(b[48:], 0x50000) // refcount table moved
			binary.BigEndian.PutUint64(b[72:], 1)       // dirty bit
			binary.BigEndian.PutUint32(b[60:], 2)       // snapshots
		}})
	if err := id.Verify(bytes.NewReader(moved), int64(len(moved)), false); err != nil {
		t.Fatalf("header fields QEMU rewrites: %v", err)
	}
	other := qcow2Image(t, qcow2Spec{backing: "other.qcow2", l1: map[int]uint64{3: 0x30000}})
	if err := id.Verify(bytes.NewReader(other), int64(len(other)), false); !errors.Is(err, ErrImageDiffers) || !strings.Contains(err.Error(), "backing file base.qcow2 at the source, other.qcow2 here") {
		t.Fatalf("another backing file: %v", err)
	}
	lost := qcow2Image(t, qcow2Spec{backing: "base.qcow2", l1: map[int]uint64{3: 0x30000}})
	if err := id.Verify(bytes.NewReader(lost), int64(len(lost)), false); !errors.Is(err, ErrImageDiffers) || !strings.Contains(err.Error(), "L1 entry 9") {
		t.Fatalf("an L1 entry gone: %v", err)
	}
	for name, mutate := range map[string]func(b []byte){
		"version 4":       func(b []byte) { binary.BigEndian.PutUint32(b[4:], 4) },
		"cluster bits 30": func(b []byte) { binary.BigEndian.PutUint32(b[20:], 30) },
		"L1 past the end": func(b []byte) { binary.BigEndian.PutUint64(b[40:], 1<<40) },
		"L1 unaligned":    func(b []byte) { binary.BigEndian.PutUint64(b[40:], 0x10008) },
		"huge L1":         func(b []byte) { binary.BigEndian.PutUint32(b[36:], 1<<30) },
		"backing name out of the cluster": func(b []byte) {
			binary.BigEndian.PutUint64(b[8:], 65530)
			binary.BigEndian.PutUint32(b[16:], 100)
		},
		"header length": func(b []byte) { binary.BigEndian.PutUint32(b[100:], 1<<20) },
		"oversized extension": func(b []byte) {
			binary.BigEndian.PutUint32(b[104:], qcow2ExtBackingFmt)
			binary.BigEndian.PutUint32(b[108:], 1<<20)
		},
	} {
		img := qcow2Image(t, qcow2Spec{mutate: mutate})
		if _, err := IdentifyImage(bytes.NewReader(img), int64(len(img)), ""); !errors.Is(err, ErrBadImage) {
			t.Errorf("%s: %v, want ErrBadImage", name, err)
		}
	}
	for _, n := range []int{0, 3, 71, 100} {
		if _, err := IdentifyImage(bytes.NewReader(good[:n]), int64(n), "qcow2"); err == nil {
			t.Errorf("a qcow2 image cut to %d bytes was identified", n)
		}
	}
	if _, err := IdentifyImage(bytes.NewReader(make([]byte, 4096)), 4096, "qcow2"); !errors.Is(err, ErrBadImage) {
		t.Errorf("zeros as qcow2: %v", err)
	}
}

func TestBackingPath(t *testing.T) {
	for _, c := range []struct{ image, backing, want string }{
		{"/srv/vm/top.qcow2", "base.qcow2", "/srv/vm/base.qcow2"},
		{"/srv/vm/top.qcow2", "../base/b.qcow2", "/srv/base/b.qcow2"},
		{"/srv/vm/top.qcow2", "/images/b.qcow2", "/images/b.qcow2"},
		{"/srv/vm/top.qcow2", "file:/images/b.qcow2", "/images/b.qcow2"},
		{"/srv/vm/top.qcow2", "nbd://server/exp", ""},
		{"/srv/vm/top.qcow2", `json:{"driver":"file"}`, ""},
	} {
		got, ok := BackingPath(c.image, c.backing)
		if got != c.want || ok != (c.want != "") {
			t.Errorf("BackingPath(%q, %q) = %q, %v; want %q", c.image, c.backing, got, ok, c.want)
		}
	}
}

func FuzzIdentifyImage(f *testing.F) {
	f.Add(qcow2Image(&testing.T{}, qcow2Spec{clusterBits: 9, backing: "b", l1: map[int]uint64{1: 0x10000}}), "")
	f.Add([]byte("QFI\xfb"), "qcow2")
	f.Fuzz(func(t *testing.T, b []byte, format string) {
		id, err := IdentifyImage(bytes.NewReader(b), int64(len(b)), format)
		if err != nil {
			return
		}
		// An image always matches its own identity.
		if err := id.Verify(bytes.NewReader(b), int64(len(b)), true); err != nil {
			t.Fatalf("an image differs from itself: %v", err)
		}
	})
}
