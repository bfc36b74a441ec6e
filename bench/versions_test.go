package bench

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/bench/fixture"
	"github.com/vmscatter/vmscatter/qemu/qemutest"
)

// TestScatterEveryQEMUVersionRealGuests moves real guests (kernel, workload verifying memory and disk) under each
// QEMU version Debian ships that vmscatter supports, through `vmscatter send` between namespace hosts, and a 7.2
// source to a 10.0 target (`receive --qemu`, the source's concrete machine type). Each must arrive running and
// keep verifying.
func TestScatterEveryQEMUVersionRealGuests(t *testing.T) {
	requireLab(t)
	for _, c := range []struct{ name, source, target string }{
		{"10.0", "10.0", "10.0"},
		{"11.1", "11.1", "11.1"},
		{"7.2 to 10.0", "7.2", "10.0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			src, dst := qemutest.Binary(t, c.source), qemutest.Binary(t, c.target)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			cl := newCluster(t, ctx, ClusterConfig{Targets: 1, Disks: true, ReceiverQEMU: dst})
			guests, err := cl.StartGuests(ctx, "v", 2, fixture.GuestOptions{QEMU: src, MemoryMiB: 128, Workload: workload})
			if err != nil {
				t.Fatal(err)
			}
			for _, g := range guests {
				waitOK(t, ctx, g.SerialPath, 3)
			}
			res, err := cl.Send(ctx, guests)
			if err != nil {
				t.Fatal(err)
			}
			if res.Exit != 0 {
				t.Fatalf("QEMU %s: send exit %d:\n%s", c.name, res.Exit, res.Stderr)
			}
			for _, v := range res.Report.VMs {
				if v.Status != "migrated" {
					t.Fatalf("QEMU %s: %s: %s: %s", c.name, v.Name, v.Status, v.Error)
				}
				dir := cl.DestinationDir(cl.TargetIndex(v.Target), v.Name)
				if st, err := qmpStatus(ctx, filepath.Join(dir, "qmp.sock")); st != "running" {
					t.Errorf("QEMU %s: %s is %q on its target: %v", c.name, v.Name, st, err)
				}
				// The guest goes on verifying its memory and its disk on the target.
				waitOK(t, ctx, filepath.Join(dir, "serial.log"), 10)
			}
		})
	}
}
