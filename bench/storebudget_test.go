package bench

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/bench/fixture"
	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/report"
)

// TestStoreBudgetKeepsReferences runs the same guests twice, three 128 MiB guests to two targets: first with the
// receivers' content stores unbounded in practice (the defaults), then with each store cut to the seeded contents
// and a quarter of the contents the first run's prime wanted (--store-disk), and a memory budget (--store-limit)
// under which the old in-memory store would have held a few hundred pages. The second run must plan within the stores (contents left
// out, none refused), move every VM intact with references, send at most 1.3 times the first run's bytes, and keep
// each receiver's peak RSS within its memory budget plus its destinations' RAM.
func TestStoreBudgetKeepsReferences(t *testing.T) {
	requireLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	const guests, memMiB = 3, 128
	c := newCluster(t, ctx, ClusterConfig{Targets: 2, TargetCapacity: spreadCapacity(guests, 2, memMiB)})
	opts := fixture.GuestOptions{MemoryMiB: memMiB, Workload: workload}

	type outcome struct {
		rep  report.Report
		tx   uint64
		hwm  []int64 // per target: the receiver's peak RSS, bytes
		vmst []int   // per target: VMs placed there
	}
	receivers := make([]*exec.Cmd, len(c.Targets))
	run := func(name string, receiverArgs []string) outcome {
		t.Helper()
		var pids []int
		for i := range c.Targets {
			c.KillReceiver(i)
			if r := receivers[i]; r != nil {
				_ = r.Process.Kill()
				_ = r.Wait()
			}
			receivers[i] = startReceiverWith(t, ctx, c, i, receiverArgs)
			pids = append(pids, receivers[i].Process.Pid)
		}
		gs, err := c.StartGuests(ctx, name, guests, opts)
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range gs {
			waitOK(t, ctx, g.SerialPath, 3)
		}
		res, err := c.Send(ctx, gs, "--parallel", "2")
		if err != nil {
			t.Fatal(err)
		}
		if res.Exit != 0 {
			t.Fatalf("%s: send exit %d:\n%s", name, res.Exit, res.Stderr)
		}
		out := outcome{rep: res.Report, tx: res.SourceTx, vmst: make([]int, len(c.Targets))}
		for _, v := range res.Report.VMs {
			if v.Status != report.StatusMigrated {
				t.Fatalf("%s: %s: %s: %s", name, v.Name, v.Status, v.Error)
			}
			if v.Pages.Referenced == 0 {
				t.Errorf("%s: %s arrived with no page as a reference", name, v.Name)
			}
			ti := c.TargetIndex(v.Target)
			out.vmst[ti]++
			dir := c.DestinationDir(ti, v.Name)
			waitOK(t, ctx, filepath.Join(dir, "serial.log"), 6) // the guest goes on verifying its memory there
		}
		for i, pid := range pids {
			out.hwm = append(out.hwm, mustPeakRSS(t, pid))
			for _, v := range res.Report.VMs { // free the CPUs for the next run
				if c.TargetIndex(v.Target) == i {
					quitQEMU(ctx, filepath.Join(c.DestinationDir(i, v.Name), "qmp.sock"))
				}
			}
		}
		tot := res.Report.Totals
		t.Logf("%s: wire %d bytes (prime %d), source tx %d, stores %+v, receivers' peak RSS %v, warnings %q",
			name, tot.WireBytes, tot.PrimeBytes, res.SourceTx, res.Report.Stores, out.hwm, res.Report.Warnings)
		return out
	}

	free := run("free", nil)
	wanted, seeded := 0, 0
	for _, s := range free.rep.Stores {
		if s.LeftOut != 0 {
			t.Fatalf("the default stores left contents out: %+v", free.rep.Stores)
		}
		wanted, seeded = max(wanted, s.Wanted), max(seeded, s.Seeded)
	}
	if wanted < 1000 {
		t.Fatalf("the prime wanted only %d contents at a target: nothing to cut", wanted)
	}
	// Room for the seed and a quarter of what the prime wanted at the busiest target.
	contents := seeded + wanted/4
	memLimit := int64(contents) * 160 // dedup.StoreIndexBytesPerContent: the index of that many contents
	tight := run("tight", []string{"--store-limit", strconv.FormatInt(memLimit, 10),
		"--store-disk", strconv.Itoa(contents * 4096)})
	leftOut := 0
	for _, s := range tight.rep.Stores {
		leftOut += s.LeftOut
		if s.Capacity > contents {
			t.Errorf("%s advertised %d contents, over the %d its budgets allow", s.Target, s.Capacity, contents)
		}
	}
	if leftOut == 0 {
		t.Errorf("no content was left out at stores of %d contents: the budget did not bind (%+v)", contents, tight.rep.Stores)
	}
	for _, w := range tight.rep.Warnings {
		if strings.Contains(w, "did not store") || strings.Contains(w, ": it holds ") {
			t.Errorf("a receiver refused contents the sender planned: %s", w)
		}
	}
	ratio := float64(tight.rep.Totals.WireBytes) / float64(free.rep.Totals.WireBytes)
	t.Logf("stores of %d contents (%d seeded and a quarter of %d; the old in-memory store would have held %d pages in %d bytes): wire %d vs %d bytes, %.2fx; source tx %d vs %d",
		contents, seeded, wanted, memLimit/4096, memLimit, tight.rep.Totals.WireBytes, free.rep.Totals.WireBytes, ratio, tight.tx, free.tx)
	if ratio > 1.3 {
		t.Errorf("a quarter of the store sent %.2fx the bytes of an unbounded one, over 1.3x", ratio)
	}
	for i, h := range tight.hwm {
		limit := memLimit + int64(tight.vmst[i])*int64(opts.RAMBytes())
		if h > limit {
			t.Errorf("target %d: receiver peak RSS %d bytes, over its store budget plus its destinations' RAM (%d)", i, h, limit)
		}
	}
}

// startReceiverWith starts target i's receiver as Cluster.StartReceiver does, with extra flags. The test kills it
// (by its PID) when it ends, if the caller has not.
func startReceiverWith(t *testing.T, ctx context.Context, c *Cluster, i int, extra []string) *exec.Cmd {
	t.Helper()
	logf, err := os.OpenFile(c.ReceiverLog(i), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	args := []string{"receive", "--listen", c.ReceiverAddr(i), "--data-dir", c.DataDir(i), "--key-file", c.KeyFile,
		"--capacity", c.cfg.TargetCapacity, "--allow-path", c.SharedDir()}
	if cache, err := fixture.CacheDir(); err == nil {
		args = append(args, "--allow-path", filepath.Dir(cache))
	}
	cmd := c.Targets[i].Command(context.Background(), c.cfg.Bin, append(args, extra...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := c.Targets[i].Do(func() error {
			conn, err := net.DialTimeout("tcp", c.ReceiverAddr(i), time.Second)
			if err == nil {
				conn.Close()
			}
			return err
		})
		if err == nil {
			return cmd
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("receiver on %s does not accept connections: %v", c.Targets[i].Name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// quitQEMU asks a destination QEMU to quit; a QEMU already gone is fine.
func quitQEMU(ctx context.Context, sock string) {
	q, err := qmp.Dial(ctx, sock)
	if err != nil {
		return
	}
	defer q.Close()
	_ = q.Quit(ctx)
}

// mustPeakRSS is peakRSS, failing the test when the process's status cannot be read.
func mustPeakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	n, err := peakRSS(pid)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
