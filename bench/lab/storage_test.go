package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestHostsShareTheFileSystem holds the lab's shared storage to what the package doc promises: a file written from
// one host is the same file, at the same path, from every other host and from the test process (same device and
// inode), so disk images of migrated guests need no copying between namespaces.
func TestHostsShareTheFileSystem(t *testing.T) {
	needRoot(t)
	l := newLab(t, Config{Hosts: []string{"a", "b"}})
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "shared", "disk.img")
	if out, err := l.Host("a").Command(ctx, "sh", "-c", "mkdir -p \"$(dirname \"$1\")\" && echo from-a > \"$1\"", "sh", path).CombinedOutput(); err != nil {
		t.Fatalf("writing from a: %v: %s", err, out)
	}
	out, err := l.Host("b").Command(ctx, "cat", path).CombinedOutput()
	if err != nil || string(out) != "from-a\n" {
		t.Fatalf("reading from b: %q, %v", out, err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%d:%d", st.Dev, st.Ino)
	for _, h := range l.Hosts() {
		out, err := h.Command(ctx, "stat", "-c", "%d:%i", path).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != want {
			t.Errorf("%s sees %q (%v), the test process %s", h.Name, out, err, want)
		}
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "from-a\n" {
		t.Fatalf("the test process reads %q, %v", b, err)
	}
}
