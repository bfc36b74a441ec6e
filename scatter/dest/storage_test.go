package dest

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscatter/vmscatter/qemu"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// sentDisks is what the sender puts in OPEN for argv, read at the source.
func sentDisks(t *testing.T, argv []string) []wire.DiskMsg {
	t.Helper()
	ids, err := qemu.IdentifyDisks(argv)
	if err != nil {
		t.Fatal(err)
	}
	var out []wire.DiskMsg
	for _, id := range ids {
		out = append(out, wire.DiskMsg(id))
	}
	return out
}

func argvWith(disks ...string) []string {
	argv := []string{"qemu-system-x86_64", "-m", "128"}
	for i, d := range disks {
		argv = append(argv, "-drive", "file="+d+",format=raw,if=none,id=d"+string(rune('0'+i)))
	}
	return argv
}

func TestCheckSharedStorage(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	os.WriteFile(a, bytes.Repeat([]byte("a"), 200<<10), 0o644)
	os.WriteFile(b, bytes.Repeat([]byte("b"), 100<<10), 0o644)
	argv := argvWith(a, b)
	sent := sentDisks(t, argv)

	// The same files at the same paths: shared storage.
	if unchecked, err := checkSharedStorage(argv, sent); err != nil || len(unchecked) != 0 {
		t.Fatalf("same files: %v, %v", unchecked, err)
	}
	// A VM without disks needs nothing.
	if _, err := checkSharedStorage([]string{"qemu-system-x86_64", "-m", "64"}, nil); err != nil {
		t.Fatal(err)
	}

	// Missing here, and another file at the other path: both named, with what differs.
	os.Rename(a, a+".moved")
	os.WriteFile(b, bytes.Repeat([]byte("B"), 100<<10), 0o644)
	_, err := checkSharedStorage(argv, sent)
	if !errors.Is(err, errNotShared) {
		t.Fatalf("missing and other: %v", err)
	}
	for _, want := range []string{"not on shared storage: ", a + " does not exist here",
		b + " differs: SHA-256 of the first 64 KiB"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not say %q", err, want)
		}
	}
	os.Rename(a+".moved", a)

	// A sender that identified nothing (or not this image) is refused, not trusted.
	if _, err := checkSharedStorage(argv, sent[:1]); err == nil || !strings.Contains(err.Error(), "no identity of disk image "+b) {
		t.Fatalf("an image without identity: %v", err)
	}
	// -snapshot: the destination would not see the source's writes.
	if _, err := checkSharedStorage(append(argv, "-snapshot"), sent); !errors.Is(err, qemu.ErrDiskRefused) {
		t.Fatalf("-snapshot: %v", err)
	}
	if _, err := checkSharedStorage([]string{"qemu-system-x86_64", "-drive", "file=" + a + ",snapshot=on"}, sent); !errors.Is(err, qemu.ErrDiskRefused) {
		t.Fatalf("snapshot=on: %v", err)
	}
	// Network storage is not checked, but said so.
	unchecked, err := checkSharedStorage(append(argvWith(a), "-drive", "file=rbd:pool/vm1,format=raw"), sent[:1])
	if err != nil || len(unchecked) != 1 || !strings.Contains(unchecked[0], "rbd image rbd:pool/vm1 (not checked") {
		t.Fatalf("rbd: %q, %v", unchecked, err)
	}
	// Malformed identities are a protocol error.
	bad := append([]wire.DiskMsg(nil), sent...)
	bad[0].Head = []byte{1}
	if _, err := checkSharedStorage(argv, bad); !errors.Is(err, wire.ErrFrame) {
		t.Fatalf("a short digest: %v", err)
	}
	if _, err := checkSharedStorage(argv, make([]wire.DiskMsg, wire.MaxDisks+1)); !errors.Is(err, wire.ErrFrame) {
		t.Fatalf("too many identities: %v", err)
	}
}

func TestCheckSharedStorageQcow2Chain(t *testing.T) {
	for _, bin := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (qemu-utils; make deps installs it)", bin)
		}
	}
	dir := t.TempDir()
	img := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%q: %v\n%s", args, err, out)
		}
	}
	base, top := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	img("qemu-img", "create", "-q", "-f", "qcow2", base, "1G")
	img("qemu-io", "-c", "write -P 1 0 64k", base)
	img("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
	img("qemu-io", "-c", "write -P 2 512M 64k", top)
	argv := []string{"qemu-system-x86_64", "-drive", "file=" + top + ",format=qcow2,if=none,id=disk0,cache=none",
		"-device", "virtio-blk-pci,drive=disk0"}
	sent := sentDisks(t, argv)
	if len(sent) != 2 || sent[1].Path != base {
		t.Fatalf("sent %+v", sent)
	}
	// The source goes on writing: still the same image.
	img("qemu-io", "-c", "write -P 3 900M 64k", top)
	if _, err := checkSharedStorage(argv, sent); err != nil {
		t.Fatal(err)
	}
	// The backing file is another image here (re-created: same geometry, other history).
	os.Remove(base)
	img("qemu-img", "create", "-q", "-f", "qcow2", base, "1G")
	img("qemu-io", "-c", "write -P 1 700M 64k", base)
	img("qemu-io", "-c", "write -P 1 0 64k", base)
	_, err := checkSharedStorage(argv, sent)
	if !errors.Is(err, errNotShared) || !strings.Contains(err.Error(), base+" (backing file of "+top+") differs: ") {
		t.Fatalf("another backing file: %v", err)
	}
	// The top image is another one: refused, and what is behind it is not looked at.
	os.Remove(top)
	img("qemu-img", "create", "-q", "-f", "qcow2", top, "2G")
	_, err = checkSharedStorage(argv, sent)
	if err == nil || !strings.Contains(err.Error(), top+" differs: ") || strings.Contains(err.Error(), "backing file of") {
		t.Fatalf("another top image: %v", err)
	}
}
