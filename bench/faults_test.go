package bench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/qemu/qmp"
)

var (
	faultsN     = flag.Int("faults.n", 0, "TestFaultCampaign: run this many trials drawn from -faults.seed (every fault at every point first) instead of the small campaign")
	faultsSeed  = flag.Uint64("faults.seed", 1, "TestFaultCampaign: the campaign's seed")
	faultsTrial = flag.Int("faults.trial", 0, "TestFaultCampaign: run only this trial of the campaign")
	faultsOut   = flag.String("faults.out", "", "TestFaultCampaign: keep every trial's directory here, with trials.jsonl and summary.md")
	faultsSum   = flag.String("faults.summarize", "", "TestFaultSummary: the trials.jsonl files (comma-separated) of a campaign run in parts, to summarize as one")
)

// TestFaultCampaign strikes real runs of vmscatter send with faults (docs/reliability.md): the sender killed or
// hung up, a receiver killed and restarted, a destination QEMU killed, the source's link silent around START; then
// vmscatter recover settles what is left. Every VM must then run exactly once, in state running, its workload
// still verifying. By default it runs the small campaign, each fault once; -faults.n runs a bigger one.
func TestFaultCampaign(t *testing.T) {
	requireLab(t)
	timeout := 20 * time.Minute
	if d, ok := t.Deadline(); ok {
		timeout = time.Until(d) - time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	specs := SmallCampaign(*faultsSeed, 2)
	if *faultsN > 0 {
		specs = PlanCampaign(*faultsSeed, *faultsN, 2)
	}
	if *faultsTrial > 0 {
		if *faultsTrial > len(specs) {
			t.Fatalf("-faults.trial %d: the campaign has %d trials", *faultsTrial, len(specs))
		}
		specs = specs[*faultsTrial-1 : *faultsTrial]
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (qemu-utils; make deps installs it): the campaign's guests have disks")
	}
	cfg := CampaignConfig{Bin: vmscatterBin, Dir: *faultsOut, Keep: *faultsOut != "", Disks: true, Logf: t.Logf}
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	} else if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var results []*TrialResult
	for _, spec := range specs {
		t.Logf("trial %s", spec)
		res, err := RunTrial(ctx, cfg, spec)
		if err != nil {
			t.Errorf("trial %d could not run: %v", spec.N, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		results = append(results, res)
		t.Logf("trial %d: struck at %s (%s): %s; send exit %d %s; recover runs %d; %s", spec.N, res.Moment, res.At,
			res.Injected, res.Send.Exit, res.Send.Killed, res.RecoverRuns, vmsLine(res))
		if res.Problem() {
			t.Errorf("trial %s: lost %d, doubled %d, faulty %d, recover runs %d, idempotent %v; notes: %s; files: %s",
				spec, res.Lost, res.Doubled, res.Faulty, res.RecoverRuns, res.Idempotent, strings.Join(res.Notes, "; "), res.Dir)
		}
	}
	var sum strings.Builder
	WriteSummary(&sum, results, "src")
	t.Logf("campaign (seed %d):\n%s", *faultsSeed, sum.String())
	if *faultsOut != "" {
		if err := WriteTrials(filepath.Join(*faultsOut, "trials.jsonl"), results); err != nil {
			t.Error(err)
		}
		if err := os.WriteFile(filepath.Join(*faultsOut, "summary.md"), []byte(sum.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
}

func vmsLine(res *TrialResult) string {
	var parts []string
	for _, v := range res.VMs {
		s := fmt.Sprintf("%s on %s", v.Name, orNone(v.Host))
		if v.Problem != "" {
			s = fmt.Sprintf("%s: %s", v.Name, v.Problem)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

// TestPointsAndMoments: a point is reached on the way forward only, and the moments are named as the figures need.
func TestPointsAndMoments(t *testing.T) {
	cases := []struct {
		at      Where
		reached []Point
		label   string
	}{
		{Where{Target: -1}, []Point{AtBegin}, "Begin"},
		{Where{Sender: "Prepare", Target: 0}, []Point{AtBegin, AtPrepare}, "Prepare"},
		{Where{Sender: "Perform", Source: qmp.RunStateRunning, Receiver: "Prepare"}, []Point{AtBegin, AtPrepare, AtPerform},
			"Perform, priming · receiver Prepare"},
		{Where{Sender: "Perform", Migrating: true}, []Point{AtBegin, AtPrepare, AtPerform}, "Perform, streaming"},
		{Where{Sender: "Perform", Source: qmp.RunStatePostMigrate, Migrating: true, Completed: true}, []Point{AtBegin, AtPrepare,
			AtPerform, AtCompleted}, "Perform, source completed"},
		{Where{Sender: "Perform", Completed: true, Receiver: "Loaded"}, []Point{AtBegin, AtPrepare, AtPerform, AtCompleted, AtLoaded},
			"Perform, source completed · receiver Loaded"},
		{Where{Sender: "Finish", Receiver: "Loaded"}, []Point{AtBegin, AtPrepare, AtPerform, AtCompleted, AtLoaded, AtFinish},
			"Finish · receiver Loaded"},
		{Where{Sender: "Confirm"}, []Point{AtBegin, AtPrepare, AtPerform, AtCompleted, AtLoaded, AtFinish, AtConfirm}, "Confirm"},
		{Where{Sender: "RollingBack", Completed: true}, []Point{AtBegin}, "RollingBack"},
		{Where{Sender: "RolledBack"}, []Point{AtBegin}, "RolledBack"},
	}
	all := []Point{AtBegin, AtPrepare, AtPerform, AtCompleted, AtLoaded, AtFinish, AtConfirm}
	for _, c := range cases {
		for _, p := range all {
			want := false
			for _, r := range c.reached {
				want = want || r == p
			}
			if got := p.reached(c.at); got != want {
				t.Errorf("%s: %s reached %v, want %v", c.at, p, got, want)
			}
		}
		if got := c.at.Label(); got != c.label {
			t.Errorf("%s: label %q, want %q", c.at, got, c.label)
		}
	}
}

// TestPlanCampaign: a campaign as big as the grid tries every fault at every point, and a seed gives the same
// campaign again, trial by trial.
func TestPlanCampaign(t *testing.T) {
	grid := faultGrid()
	plan := PlanCampaign(7, len(grid)+5, 2)
	seen := map[gridCell]bool{}
	for _, s := range plan[:len(grid)] {
		seen[gridCell{kind: s.Kind, point: s.Point, long: s.UntilExit}] = true
	}
	for _, c := range grid {
		if !seen[c] {
			t.Errorf("%+v not tried", c)
		}
	}
	again := PlanCampaign(7, len(grid)+5, 2)
	for i := range plan {
		if plan[i] != again[i] {
			t.Errorf("trial %d: %s, then %s", i+1, plan[i], again[i])
		}
		if s := plan[i]; s.Victim < 0 || s.Victim > 1 || s.Delay < 0 || (s.Kind == ReceiverKill || s.Kind == PartitionSrc && !s.UntilExit) != (s.Hold > 0) {
			t.Errorf("trial %s: out of range", s)
		}
	}
	if small := SmallCampaign(7, 2); len(small) != len(kindOrder) {
		t.Errorf("the small campaign has %d trials, want one per fault (%d)", len(small), len(kindOrder))
	}
}

// TestFaultSummary prints the summary of a campaign run in parts (-faults.summarize a/trials.jsonl,b/trials.jsonl):
// a trial replayed alone replaces the campaign's run of it.
func TestFaultSummary(t *testing.T) {
	if *faultsSum == "" {
		t.Skip("-faults.summarize not given")
	}
	results, err := ReadTrials(strings.Split(*faultsSum, ",")...)
	if err != nil {
		t.Fatal(err)
	}
	var sum strings.Builder
	WriteSummary(&sum, results, "src")
	t.Logf("%d trials:\n%s", len(results), sum.String())
}
