package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/vmscatter/vmscatter/bench/fixture"
	"github.com/vmscatter/vmscatter/bench/guest/guestlog"
)

// DemoConfig is the embedded default scenario of `vmscatter demo`.
type DemoConfig struct {
	Bin       string // the vmscatter binary
	Dir       string // work directory; removed afterwards unless Keep
	Guests    int    // default 4
	Targets   int    // default 2
	MemoryMiB int    // per guest; default 128
	Keep      bool
	Out       io.Writer // progress and the summary
}

// RunDemo boots real guests on a namespace source host, scatters them across namespace target hosts with the
// vmscatter binary, checks that each runs on its target and keeps verifying its memory, and prints the report.
func RunDemo(ctx context.Context, cfg DemoConfig) error {
	scenarioDefaults(&cfg.Guests, &cfg.Targets, &cfg.MemoryMiB)
	out := cfg.Out
	say := func(format string, args ...any) { fmt.Fprintf(out, "demo: "+format+"\n", args...) }
	if os.Geteuid() != 0 {
		return errors.New("the demo creates network namespaces and needs root")
	}
	say("building the guest fixture (Debian cloud kernel + busybox initramfs; cached after the first run)")
	if _, err := fixture.Ensure(ctx); err != nil {
		return err
	}
	capacity := spreadCapacity(cfg.Guests, cfg.Targets, cfg.MemoryMiB)
	say("lab: source host + %d target hosts in network namespaces (198.18.0.0/24), receivers offering %s each", cfg.Targets, capacity)
	c, err := NewCluster(ctx, ClusterConfig{Targets: cfg.Targets, Bin: cfg.Bin, Dir: cfg.Dir, TargetCapacity: capacity})
	if err != nil {
		return err
	}
	defer c.Close()
	say("booting %d guests of %d MiB under TCG, each running the self-verifying workload", cfg.Guests, cfg.MemoryMiB)
	guests, err := c.StartGuests(ctx, "vm", cfg.Guests, fixture.GuestOptions{MemoryMiB: cfg.MemoryMiB,
		Workload: fixture.Workload{WSS: 16 << 20, Rate: 200, Seed: 7, Private: 0.25}})
	if err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	say("vmscatter send --vms vm1=…,vm%d=… --targets %s …", cfg.Guests, c.ReceiverAddr(0))
	c.Progress = out
	res, err := c.Send(ctx, guests)
	if err != nil {
		return err
	}
	say("report written to %s (exit code %d)", res.ReportPath, res.Exit)
	printSummary(out, c, res)
	// Every migrated guest must run at its target and go on verifying its memory.
	var failed []string
	for _, v := range res.Report.VMs {
		if v.Status != "migrated" {
			failed = append(failed, fmt.Sprintf("%s: %s: %s", v.Name, v.Status, v.Error))
			continue
		}
		serial := filepath.Join(c.DestinationDir(c.TargetIndex(v.Target), v.Name), "serial.log")
		if err := waitGuestOK(ctx, serial, 5, 30*time.Second); err != nil {
			failed = append(failed, fmt.Sprintf("%s on %s: %v", v.Name, v.Target, err))
		}
	}
	if len(failed) > 0 {
		for _, f := range failed {
			say("FAILED %s", f)
		}
		return fmt.Errorf("%d VMs did not make it", len(failed))
	}
	say("all %d guests run on their targets and keep verifying their memory: no BAD line anywhere", len(res.Report.VMs))
	if cfg.Keep {
		say("kept %s", cfg.Dir)
	}
	return nil
}

// scenarioDefaults fills the embedded default scenario: 4 guests of 128 MiB onto 2 targets.
func scenarioDefaults(guests, targets, memoryMiB *int) {
	if *guests == 0 {
		*guests = 4
	}
	if *targets == 0 {
		*targets = 2
	}
	if *memoryMiB == 0 {
		*memoryMiB = 128
	}
}

func printSummary(w io.Writer, c *Cluster, res *SendResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "VM\tTARGET\tSTATUS\tPAGES\tZERO\tREFERENCED\tLITERAL\tWIRE MiB\tDOWNTIME ms\t")
	for _, v := range res.Report.VMs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%.1f\t%d\t\n", v.Name, v.Target, v.Status, v.Pages.Total, v.Pages.Zero,
			v.Pages.Referenced, v.Pages.Literal, float64(v.WireBytes)/(1<<20), v.DowntimeMS)
	}
	tw.Flush()
	t := res.Report.Totals
	fmt.Fprintf(w, "guest RAM %.0f MiB; %d non-zero pages, %d distinct; prime %.1f MiB; on the wire %.1f MiB in all\n",
		float64(t.RAMBytes)/(1<<20), t.NonZeroPages, t.DistinctPages, float64(t.PrimeBytes)/(1<<20), float64(t.WireBytes)/(1<<20))
	fmt.Fprintf(w, "source interface sent %.1f MiB in %.1f s over %s; lower bound for it (each distinct page the destinations "+
		"loaded once%s, compressed as it travelled) %.1f MiB: %.2f× it; %d pages came from the targets' own boot files\n",
		float64(res.SourceTx)/(1<<20), res.Elapsed.Seconds(), res.Report.Transport, map[bool]string{true: "", false: " per target"}[res.Report.Transport == "multicast"],
		float64(t.FinalBoundBytes)/(1<<20), float64(res.SourceTx)/float64(max(1, t.FinalBoundBytes)), t.SeededContents)
}

// waitGuestOK waits until a console log shows n progress lines and no failure.
func waitGuestOK(ctx context.Context, serial string, n int, timeout time.Duration) error {
	_, err := waitConsole(ctx, serial, n, timeout)
	return err
}

// waitConsole waits until a console log shows n progress lines, and fails at once on a BAD line. It returns the
// log's summary as it last read it.
func waitConsole(ctx context.Context, serial string, n int, timeout time.Duration) (guestlog.Summary, error) {
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(serial)
		s, _ := guestlog.Summarize(bytes.NewReader(b))
		if len(s.Bad) > 0 {
			return s, fmt.Errorf("the guest found corrupted memory: %+v", s.Bad[0])
		}
		if s.OKs >= n {
			return s, nil
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("%d progress lines after %v, want %d", s.OKs, timeout, n)
		}
		select {
		case <-ctx.Done():
			return s, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
