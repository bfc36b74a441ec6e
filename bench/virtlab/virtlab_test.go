package virtlab

import (
	"context"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/scatter/virt"
)

// TestLabMigratesWithLibvirt brings up two lab hosts, defines and starts a fixture domain on one and migrates it
// with libvirt's own --p2p migration (no vmscatter): the lab itself works, and the domain ends defined and running on
// the target, undefined on the source.
func TestLabMigratesWithLibvirt(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest under libvirt")
	}
	if err := TestsWanted(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := t.TempDir()
	l, err := New(ctx, Config{Hosts: []string{"src", "a"}, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	src, a := l.Host("src"), l.Host("a")
	g, err := src.DefineGuest(ctx, dir, "vm1", GuestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.StartGuest(ctx, g); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Virt.PID("vm1"); err != nil {
		t.Fatal(err)
	}
	mctx, mcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer mcancel()
	// libvirt's own migration: the data over TCP between the lab hosts' addresses.
	err = src.Virt.MigrateDirect(mctx, "vm1", a.URI, "tcp://"+a.Addr.String(), true)
	if err != nil {
		t.Fatal(err)
	}
	st, err := a.Virt.State(ctx, "vm1")
	if err != nil || st != virt.StateRunning {
		t.Fatalf("on the target: %q, %v", st, err)
	}
	if ok, err := src.Virt.Exists(ctx, "vm1"); ok || err != nil {
		t.Fatalf("still on the source: %v, %v", ok, err)
	}
}
