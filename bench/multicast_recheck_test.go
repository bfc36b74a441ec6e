package bench

import (
	"context"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/bench/fixture"
	"github.com/vmscatter/vmscatter/bench/lab"
	"github.com/vmscatter/vmscatter/scatter/report"
)

// TestGroupThatStopsAnsweringGoesByUnicast moves two guests to two targets through a bridge that, once the sender
// has joined and probed its group, stops carrying the group's packets to the source: the receivers get the group's
// data and the sender none of their answers, as when IGMPv2 report suppression left the source's port out of the
// lab bridge's group table (docs/benchmarks.md). The sender must find out as the group's data is about to flow
// and send its contents by unicast at once, not after 3 s of silence; both VMs move intact.
func TestGroupThatStopsAnsweringGoesByUnicast(t *testing.T) {
	requireLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	c := newCluster(t, ctx, ClusterConfig{Targets: 2, TargetCapacity: spreadCapacity(2, 2, 128), Snooping: true})
	// A TCP part of a few seconds, so that the source's port is gone when the group's turn comes.
	if err := c.Source.Shape(lab.Shaping{Rate: 100_000_000}); err != nil {
		t.Fatal(err)
	}
	gs, err := c.StartGuests(ctx, "mcq", 2, fixture.GuestOptions{MemoryMiB: 128, Workload: workload})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gs {
		waitOK(t, ctx, g.SerialPath, 3)
	}
	bridge := func(args ...string) ([]byte, error) {
		return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", c.Lab.BridgeNS, "bridge"}, args...)...).Output()
	}
	// Once the sender has joined its group (its port enters the bridge's table) and probed it, the bridge's port
	// towards the source drops every packet to the groups: the receivers' answers.
	groups := netip.MustParsePrefix("239.255.0.0/16")
	var cut atomic.Bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !cut.Load() {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			out, err := bridge("mdb", "show")
			if err != nil || !strings.Contains(string(out), "port v0 grp 239.255.") { // v0: the source's port
				continue
			}
			time.Sleep(300 * time.Millisecond) // the sender's probe at the prime's start takes a few ms
			if err := c.Source.ShapeIngress(lab.Shaping{Loss: 100, To: groups}); err != nil {
				t.Error(err)
				return
			}
			cut.Store(true)
			return
		}
	}()
	res, err := c.Send(ctx, gs, "--parallel", "2", "--log-level", "debug")
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("send stderr:\n%s", res.Stderr)
	if res.Exit != 0 {
		t.Fatalf("send exit %d", res.Exit)
	}
	if !cut.Load() {
		t.Fatal("the source's port never entered the bridge's group table: the test cut nothing")
	}
	for _, v := range res.Report.VMs {
		if v.Status != report.StatusMigrated {
			t.Fatalf("%s: %s: %s", v.Name, v.Status, v.Error)
		}
		waitOK(t, ctx, filepath.Join(c.DestinationDir(c.TargetIndex(v.Target), v.Name), "serial.log"), 6)
	}
	warned := false
	for _, w := range res.Report.Warnings {
		warned = warned || strings.Contains(w, "stopped answering before its data")
	}
	if !warned {
		t.Errorf("no warning that the group went by unicast; warnings %q", res.Report.Warnings)
	}
	if strings.Contains(res.Stderr, "dropped as too slow") {
		t.Error("the sender waited for the silent receivers and dropped them, instead of finding out before the data")
	}
}
