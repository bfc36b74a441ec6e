package bench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/bench/fixture"
	"github.com/vmscatter/vmscatter/bench/guest/guestlog"
	"github.com/vmscatter/vmscatter/scatter/report"
)

// The scale test's size: as large as this machine (2 cores, 24 GiB, shared with other runs) allows in a few minutes.
// The guests' RAM exists twice while they move (source and destination QEMUs), beside the receivers' stores. The flags
// run other sizes (e.g. -big.guests 1 -big.mib 4096) and budgets.
var (
	scaleGuests   = flag.Int("big.guests", 4, "TestScaleBigGuests: guests to move")
	scaleGuestMiB = flag.Int("big.mib", 1536, "TestScaleBigGuests: RAM of each guest in MiB")
	// scaleStoreLimitMiB is each receiver's --store-limit: the memory of its content store (docs/store.md), whose
	// pages live in a file. The default is tight: 32 MiB of index hold about 210,000 contents, about half of what the
	// prime would send a target at the default size (1.6 GiB of contents), so the prime is cut to the budget and the
	// rest travels literal.
	scaleStoreLimitMiB = flag.Int64("big.store-limit", 32, "TestScaleBigGuests: each receiver's --store-limit in MiB")
)

// scaleReceiverOverheadMiB is what a receiver may hold beyond its store budget: its buffers and the Go runtime's heap
// headroom (a receiver of small guests peaks near 200 MiB). The destination QEMUs are processes of their own.
const scaleReceiverOverheadMiB = 1024

// TestScaleBigGuests moves guests of a real size (BigShape: GiBs of RAM filled with shared page cache, private data and
// zeros, 2 vCPUs, a disk on the shared storage, a NIC) through vmscatter to two targets. Every VM must arrive intact:
// running at its target, where it completes a full verification pass of its memory, of its page cache and of its
// disk without a failure, and keeps exchanging UDP echoes with the responder of the host it now runs on. Every VM
// must have received pages as references to primed contents, and no receiver may hold more memory than its store
// budget allows.
func TestScaleBigGuests(t *testing.T) {
	requireLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	shape := BigShape{MemoryMiB: *scaleGuestMiB}
	if err := shape.fill(); err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, ctx, ClusterConfig{Targets: 2, Big: &shape, StoreLimit: fmt.Sprintf("%dM", *scaleStoreLimitMiB),
		TargetCapacity: spreadCapacity(*scaleGuests, 2, *scaleGuestMiB)})
	t0 := time.Now()
	guests, err := c.StartGuests(ctx, "big", *scaleGuests, fixture.GuestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d guests of %s booted and filled in %.0f s", *scaleGuests, shape, time.Since(t0).Seconds())
	for i, g := range guests {
		s := waitGuest(t, ctx, g.SerialPath, "echoes at the source", func(s guestlog.Summary) bool {
			return s.Last.Cache && s.Last.Net && s.Last.NetRecv >= 3
		})
		if c.Echoes(0, i) == 0 {
			t.Fatalf("%s: the source's responder answered nothing (%+v)", g.Name, s.Last)
		}
	}

	res, err := c.Send(ctx, guests, "--parallel", "2")
	if err != nil {
		t.Fatal(err)
	}
	if res.Exit != 0 {
		t.Fatalf("exit %d\n%s", res.Exit, res.Stderr)
	}
	tot := res.Report.Totals
	peaks := c.ReceiverPeakRSS()
	t.Logf("moved %.2f GiB of guest RAM in %.1f s: %.1f MiB left the source (prime %.1f MiB), final bound %.1f MiB; "+
		"peak RSS: sender %.0f MiB, receivers %v (store limit %d MiB)", float64(tot.RAMBytes)/(1<<30), res.Elapsed.Seconds(),
		float64(res.SourceTx)/(1<<20), float64(tot.PrimeBytes)/(1<<20), float64(tot.FinalBoundBytes)/(1<<20),
		float64(res.PeakRSS)/(1<<20), mibs(peaks), *scaleStoreLimitMiB)
	for i, p := range peaks {
		if p <= 0 || p > (*scaleStoreLimitMiB+scaleReceiverOverheadMiB)<<20 {
			t.Errorf("receiver on %s peaked at %.0f MiB: want some, and at most its store limit %d MiB + %d MiB",
				c.Targets[i].Name, float64(p)/(1<<20), *scaleStoreLimitMiB, scaleReceiverOverheadMiB)
		}
	}
	for i, g := range guests {
		v := vmReport(t, res.Report, g.Name)
		if v.Status != report.StatusMigrated {
			t.Fatalf("%s: %s: %s", v.Name, v.Status, v.Error)
		}
		if v.Pages.Referenced == 0 {
			t.Errorf("%s: no page went as a reference (%+v)", v.Name, v.Pages)
		}
		t.Logf("%s → %s: pages %+v, %.1f MiB on its stream, %d ms, downtime %d ms", v.Name, v.Target, v.Pages,
			float64(v.WireBytes)/(1<<20), v.MigrationMS, v.DowntimeMS)
		ti := c.TargetIndex(v.Target)
		dir := c.DestinationDir(ti, g.Name)
		if st, err := qmpStatus(ctx, filepath.Join(dir, "qmp.sock")); st != "running" {
			t.Fatalf("%s on %s: %q, %v; want running", g.Name, v.Target, st, err)
		}
		src := summarize(t, g.SerialPath)
		if len(src.Bad) > 0 {
			t.Errorf("%s found corruption at the source: %+v", g.Name, src.Bad[0])
		}
		// At the target: a full pass over the memory, the page cache and the disk, each checked against what the
		// guest wrote or read at the source, and echoes from the target's responder.
		var first guestlog.OK
		dst := waitGuest(t, ctx, filepath.Join(dir, "serial.log"), "full passes at the target", func(s guestlog.Summary) bool {
			first = s.First
			return s.Last.Pass > s.First.Pass && s.Last.CachePass > s.First.CachePass && s.Last.DiskPass > s.First.DiskPass &&
				s.Last.NetRecv >= s.First.NetRecv+5
		})
		if first.Gen < src.Last.Gen || first.NetSent < src.Last.NetSent {
			t.Errorf("%s: the target's first line %+v is behind the source's last %+v: the guest's memory did not move",
				g.Name, first, src.Last)
		}
		if n := c.Echoes(ti+1, i); n < 5 {
			t.Errorf("%s: the responder on %s answered it %d times", g.Name, c.Targets[ti].Name, n)
		}
		t.Logf("%s at the target: passes memory %d, page cache %d, disk %d; echoes %d → %d", g.Name,
			dst.Last.Pass-dst.First.Pass, dst.Last.CachePass-dst.First.CachePass, dst.Last.DiskPass-dst.First.DiskPass,
			dst.First.NetRecv, dst.Last.NetRecv)
	}
}

// waitGuest waits until a console log satisfies done, failing the test at the first BAD line, or with what it saw when
// a big guest's pass takes too long.
func waitGuest(t *testing.T, ctx context.Context, serial, what string, done func(guestlog.Summary) bool) guestlog.Summary {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	for {
		s := summarize(t, serial)
		if len(s.Bad) > 0 {
			t.Fatalf("%s: the guest found corruption: %+v (%d BAD lines)", serial, s.Bad[0], len(s.Bad))
		}
		if s.OKs > 0 && done(s) {
			return s
		}
		select {
		case <-ctx.Done():
			b, _ := os.ReadFile(serial)
			t.Fatalf("%s: no %s: first %+v, last %+v; log tail:\n%s", serial, what, s.First, s.Last, tail(b, 800))
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func vmReport(t *testing.T, r report.Report, name string) report.VMReport {
	t.Helper()
	for _, v := range r.VMs {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("no VM %s in the report", name)
	return report.VMReport{}
}

func mibs(v []int64) string {
	s := ""
	for i, n := range v {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	}
	return s
}

func TestBigShapeDefaultsAndLimits(t *testing.T) {
	s := BigShape{}
	if err := s.fill(); err != nil {
		t.Fatal(err)
	}
	if s.MemoryMiB != 1536 || s.CPUs != 2 || s.Cache != 0.35 || s.Private != 0.35 || s.Rate != 200 {
		t.Fatalf("defaults %+v", s)
	}
	if b := s.bytesOf(s.Cache); b%4096 != 0 || b < 537<<20 || b > 538<<20 {
		t.Fatalf("35%% of 1536 MiB is %d bytes", b)
	}
	for _, bad := range []BigShape{{MemoryMiB: 256}, {MemoryMiB: 1024, Cache: 0.6, Private: 0.4}, {Cache: -0.1, Private: 0.5}} {
		if err := bad.fill(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestWaitFilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	g := &fixture.Guest{Name: "big1", SerialPath: filepath.Join(dir, "serial.log")}
	ok := string(guestlog.OK{Seq: 1, Cache: true, Net: true}.Append(nil))
	os.WriteFile(g.SerialPath, []byte(guestlog.ReadyMarker+"\nready wss=1\n"+ok+"\n"), 0o644)
	if err := waitFilled(ctx, g); err != nil {
		t.Fatal(err)
	}
	// A workload that ends before its first progress line fails the wait at once, with its console.
	os.WriteFile(g.SerialPath, []byte(guestlog.ReadyMarker+"\nworkload: opening the cache image: no such device\n"+
		guestlog.ExitedMarker+" rc=2\n"), 0o644)
	err := waitFilled(ctx, g)
	if err == nil || !strings.Contains(err.Error(), "no such device") || ctx.Err() != nil {
		t.Fatalf("%v", err)
	}
}
