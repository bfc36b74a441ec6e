package dest

import (
	"os"
	"path/filepath"
	"testing"
)

// A run's socket directory outlives the first of its VMs to end: another VM of the run, whose destination QEMU has
// not yet created its socket there, still needs it. It goes with the last.
func TestSocketDirOutlivesItsFirstUser(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	var d socketDirs
	for range 2 {
		if err := d.acquire(dir); err != nil {
			t.Fatal(err)
		}
	}
	d.release(dir) // the first VM's stream ended; the second's QEMU has not bound its socket yet
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("the directory went with the first of two users: %v", err)
	}
	d.release(dir)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the directory stayed after its last user: %v", err)
	}
	// A later VM of the same run creates it again.
	if err := d.acquire(dir); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Fatalf("not created again: %v", err)
	}
	d.release(dir)
}
