package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vmscatter/vmscatter/bench/fixture"
	"github.com/vmscatter/vmscatter/bench/guest/guestlog"
	"github.com/vmscatter/vmscatter/bench/lab"
	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/commit"
	"github.com/vmscatter/vmscatter/scatter/report"
)

// A fault campaign (issue #13, docs/reliability.md): trials, each a real run of `vmscatter send` (guests running
// the self-verifying workload, two targets, a slowed source link) with one fault injected at a point of it, then
// `vmscatter recover` until it settles and once more, then the census: every VM must run exactly once (never on
// both hosts, never on neither), in state running, its workload still verifying. Each trial has a lab of its own.
// Trials are drawn from a seed, and each trial's own draws (delay, hold, victim) from the seed and its number, so
// any trial can be run again alone.

// FaultKind is what a trial does to the run.
type FaultKind string

// The faults.
const (
	SenderKill   FaultKind = "sender-kill"   // SIGKILL of `vmscatter send`
	SenderHUP    FaultKind = "sender-hup"    // SIGHUP of `vmscatter send`: it stops at its next safe point
	ReceiverKill FaultKind = "receiver-kill" // SIGKILL of the victim's receiver, restarted on its data dir after Hold
	DestKill     FaultKind = "dest-kill"     // SIGKILL of the victim's destination QEMU
	PartitionSrc FaultKind = "partition"     // the source's link drops every packet, both ways, for Hold
	// The disk a side journals on fills (a tmpfs over the directory, filled at the point) and is freed once send
	// has exited, before recover runs.
	SenderDiskFull   FaultKind = "sender-disk-full"   // the sender's state directory
	ReceiverDiskFull FaultKind = "receiver-disk-full" // the victim's directory in each receiver's data dir
)

// diskFull reports whether the fault fills a disk.
func (k FaultKind) diskFull() bool { return k == SenderDiskFull || k == ReceiverDiskFull }

// FaultSpec is one trial.
type FaultSpec struct {
	N     int           `json:"n"`
	Kind  FaultKind     `json:"kind"`
	Point Point         `json:"point"`
	Delay time.Duration `json:"delay"` // from the point to the fault
	Hold  time.Duration `json:"hold"`  // receiver-kill: down this long; partition: lasts this long
	// UntilExit holds a partition until the sender has exited, and runs `vmscatter recover` once while the link is
	// still cut (it must wait for the receiver, or act only where no receiver's word is needed), before it heals.
	UntilExit bool `json:"until_exit,omitempty"`
	Victim    int  `json:"victim"` // the guest whose migration the point is of
	Target    int  `json:"target"` // receiver-kill before the victim has a target: the receiver to kill
	// Paused pauses the second guest before the run: it must end paused, wherever it ends, and verify its memory
	// once it is continued.
	Paused bool `json:"paused,omitempty"`
	// NoDedup runs send with --no-dedup: no prime, every page in the stream, which then flows for seconds (with
	// the prime, most pages travel as references and the stream is over in a fraction of a second).
	NoDedup bool `json:"no_dedup"`
}

func (s FaultSpec) String() string {
	str := fmt.Sprintf("#%d %s at %s +%v (victim guest %d)", s.N, s.Kind, s.Point, s.Delay.Round(time.Millisecond), s.Victim+1)
	if s.Hold > 0 {
		str += fmt.Sprintf(", hold %v", s.Hold.Round(time.Millisecond))
	}
	if s.UntilExit {
		str += ", until send exits"
	}
	if s.Paused {
		str += ", guest 2 paused"
	}
	if s.NoDedup {
		str += ", --no-dedup"
	}
	return str
}

type gridCell struct {
	kind    FaultKind
	point   Point
	long    bool // partition: until the sender has given up and exited
	noDedup bool // SmallCampaign's choice of --no-dedup, where the stream must last (drawTrial draws it)
}

// faultGrid is every (fault, point) a full campaign covers: the process faults at every point where their victim
// exists, the partition around START, short and long.
func faultGrid() []gridCell {
	all := []Point{AtBegin, AtPrepare, AtPerform, AtCompleted, AtLoaded, AtFinish, AtConfirm}
	var g []gridCell
	for _, k := range []FaultKind{SenderKill, SenderHUP, ReceiverKill, DestKill, SenderDiskFull, ReceiverDiskFull} {
		for _, p := range all {
			if k == DestKill && p == AtBegin {
				continue // no destination yet
			}
			g = append(g, gridCell{kind: k, point: p})
		}
	}
	for _, p := range []Point{AtCompleted, AtLoaded, AtFinish} {
		g = append(g, gridCell{kind: PartitionSrc, point: p}, gridCell{kind: PartitionSrc, point: p, long: true})
	}
	return g
}

// PlanCampaign draws n trials from seed: the whole grid first, shuffled, while n allows, then cells drawn at random.
func PlanCampaign(seed uint64, n, guests int) []FaultSpec {
	r := rand.New(rand.NewPCG(seed, 0))
	grid := faultGrid()
	r.Shuffle(len(grid), func(i, j int) { grid[i], grid[j] = grid[j], grid[i] })
	var out []FaultSpec
	for i := range n {
		cell := grid[i%len(grid)]
		if i >= len(grid) {
			cell = grid[r.IntN(len(grid))]
		}
		out = append(out, drawTrial(seed, i+1, cell, guests))
	}
	return out
}

// SmallCampaign is the campaign `make test` runs: each fault once, where it matters most.
func SmallCampaign(seed uint64, guests int) []FaultSpec {
	cells := []gridCell{
		{kind: SenderKill, point: AtFinish},                // START decided, nobody to see it through: recover finishes it
		{kind: SenderHUP, point: AtPerform, noDedup: true}, // the operator stops the run: it rolls back by itself
		{kind: ReceiverKill, point: AtLoaded},              // a loaded destination outlives its receiver and waits for the word
		{kind: DestKill, point: AtPerform, noDedup: true},  // the stream's end dies: roll back
		{kind: PartitionSrc, point: AtCompleted},           // the link goes silent just before START
		{kind: SenderDiskFull, point: AtCompleted},         // Finish cannot be journaled: no START, the VM goes back
		{kind: ReceiverDiskFull, point: AtLoaded},          // the receiver cannot journal START: it hands the VM back
	}
	var out []FaultSpec
	for i, c := range cells {
		s := drawTrial(seed, i+1, c, guests)
		s.NoDedup = c.noDedup
		out = append(out, s)
	}
	return out
}

// drawTrial draws trial n's delay, hold, victim and target from its own generator.
func drawTrial(seed uint64, n int, cell gridCell, guests int) FaultSpec {
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	between := func(lo, hi time.Duration) time.Duration { return lo + time.Duration(r.Int64N(int64(hi-lo)+1)) }
	s := FaultSpec{N: n, Kind: cell.kind, Point: cell.point, Victim: r.IntN(guests), Target: r.IntN(2), NoDedup: r.IntN(2) == 1,
		Paused: guests > 1 && r.IntN(4) == 0}
	switch cell.point {
	case AtBegin: // inventory and scan take about 100 ms in the lab
		s.Delay = between(0, 150*time.Millisecond)
	case AtPrepare: // the destination starts in about 100 ms
		s.Delay = between(0, 100*time.Millisecond)
	case AtPerform: // the prime (with dedup) about 4 s, the stream 0.5 s with dedup and 10 s without
		s.Delay = between(0, 5*time.Second)
	default: // in the lab LOADED, START, RUNNING, the source's quit and DONE follow within about 10 ms
		s.Delay = between(0, 3*time.Millisecond)
	}
	switch {
	case cell.kind == ReceiverKill:
		s.Hold = between(500*time.Millisecond, 5*time.Second)
	case cell.kind == PartitionSrc && cell.long:
		s.UntilExit = true
	case cell.kind == PartitionSrc:
		s.Hold = between(3*time.Second, 15*time.Second)
	}
	return s
}

// CampaignConfig configures the trials.
type CampaignConfig struct {
	Bin       string // the vmscatter binary
	Dir       string // trial N works in Dir/trial-NNN
	Guests    int    // per trial; default 2
	MemoryMiB int    // per guest; default 128
	Rate      uint64 // the source link's rate in bit/s, so that a stream lasts seconds; default 100e6
	SendArgs  []string
	// Disks gives every guest a qcow2 disk on the lab's shared storage, which its workload writes and verifies
	// (needs qemu-img).
	Disks bool
	Keep  bool // keep every trial's directory; a trial with a problem keeps its own regardless
	Logf  func(format string, args ...any)
}

func (cfg *CampaignConfig) fill() {
	if cfg.Guests == 0 {
		cfg.Guests = 2
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 128
	}
	if cfg.Rate == 0 {
		cfg.Rate = 100e6
	}
	if cfg.SendArgs == nil {
		// The VMs migrate at once; a stalled migration rolls back after 90 s rather than 10 minutes.
		cfg.SendArgs = []string{"--parallel", "2", "--timeout", "90s", "--log-level", "info"}
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
}

// TrialResult is what one trial did and found.
type TrialResult struct {
	Spec    FaultSpec `json:"spec"`
	Dir     string    `json:"dir,omitempty"` // kept: every trial's with Keep, else only one with a problem
	Reached bool      `json:"reached"`       // the point was reached and the fault struck (a sender can end first)
	// At is where the victim stood when the fault struck; for a sender killed, where its journal stopped.
	At       Where          `json:"at"`
	Moment   string         `json:"moment"` // At's label, for the figures
	Injected string         `json:"injected,omitempty"`
	Send     SendOutcome    `json:"send"`
	Recovers []RecoverRound `json:"recovers"`
	// RecoverRuns is how many runs of `vmscatter recover` it took until one exited 0; 0 if none did.
	RecoverRuns int `json:"recover_runs"`
	// RecoverCut is the run of recover while the partition still held (UntilExit).
	RecoverCut *RecoverRound `json:"recover_cut,omitempty"`
	Idempotent bool          `json:"idempotent"` // one more run found nothing to do and changed nothing
	VMs        []VMOutcome   `json:"vms"`
	// ReceiverAfter is the victim's receiver journal once the sender exited, before recover: a destination killed
	// after its receiver journaled Finish was (or may have been: `cont` was on its way) the VM.
	ReceiverAfter string   `json:"receiver_after,omitempty"`
	Lost          int      `json:"lost"`    // VMs that run nowhere
	Doubled       int      `json:"doubled"` // VMs two or more QEMUs of which exist
	Faulty        int      `json:"faulty"`  // VMs in the wrong state, or whose workload stopped verifying
	Killed        int      `json:"killed"`  // VMs that died with the destination the fault killed
	Notes         []string `json:"notes,omitempty"`
	Elapsed       time.Duration
}

// Problem reports whether the trial found anything wrong.
func (t *TrialResult) Problem() bool {
	return t.Lost+t.Doubled+t.Faulty > 0 || (t.RecoverRuns == 0 && t.Killed == 0) || !t.Idempotent
}

// SendOutcome is how the sender ended.
type SendOutcome struct {
	Exit   int               `json:"exit"`
	Killed string            `json:"killed,omitempty"` // the signal that ended it
	Hung   bool              `json:"hung,omitempty"`   // it had not exited 10 minutes after the fault: killed
	VMs    map[string]string `json:"vms,omitempty"`    // status: error, from its report
}

// RecoverRound is one run of `vmscatter recover`.
type RecoverRound struct {
	Exit int               `json:"exit"`
	VMs  map[string]string `json:"vms,omitempty"` // status: why, for each VM it found unsettled
}

// VMOutcome is the census of one VM after the trial.
type VMOutcome struct {
	Name    string `json:"name"`
	Copies  []Copy `json:"copies"`
	Ran     bool   `json:"ran"`            // it ran before the migration (else it was paused)
	Host    string `json:"host,omitempty"` // where its one copy is
	Reports string `json:"reports"`        // the status the last report that mentions it gives
	Verdict string `json:"verdict"`
	Problem string `json:"problem,omitempty"`
	Stale   string `json:"stale,omitempty"` // copies beside the VM's, which went by themselves
}

// RunTrial runs one trial in a lab of its own. It returns an error only when the trial could not be run (no lab,
// a guest that did not boot); what the fault did is in the result.
func RunTrial(ctx context.Context, cfg CampaignConfig, spec FaultSpec) (res *TrialResult, err error) {
	cfg.fill()
	start := time.Now()
	dir := filepath.Join(cfg.Dir, fmt.Sprintf("trial-%03d", spec.N))
	os.RemoveAll(dir)
	res = &TrialResult{Spec: spec, At: Where{Target: -1}}
	note := func(format string, args ...any) {
		res.Notes = append(res.Notes, fmt.Sprintf(format, args...))
		cfg.Logf("trial %d: "+format, append([]any{spec.N}, args...)...)
	}
	c, err := NewCluster(ctx, ClusterConfig{Targets: 2, Bin: cfg.Bin, Dir: dir, Disks: cfg.Disks,
		TargetCapacity: spreadCapacity(cfg.Guests, 2, cfg.MemoryMiB)})
	if err != nil {
		return nil, err
	}
	var disks []*smallFS // a disk fault's small filesystems: unmounted after the cluster has killed its processes
	defer func() {
		c.Close()
		for _, f := range disks {
			if err := f.Unmount(); err != nil {
				note("unmounting %s: %v", f.dir, err)
			}
		}
		if res == nil {
			return // the trial could not run (the error says why): its directory stays for a look
		}
		res.Elapsed = time.Since(start)
		if cfg.Keep || res.Problem() {
			res.Dir = dir
		} else {
			os.RemoveAll(dir)
		}
	}()
	shaping := lab.Shaping{Rate: cfg.Rate}
	if err := c.Source.Shape(shaping); err != nil {
		return nil, err
	}
	guests, err := c.StartGuestsWith(ctx, fmt.Sprintf("f%dv", spec.N), cfg.Guests, func(name string) fixture.GuestOptions {
		return fixture.GuestOptions{MemoryMiB: cfg.MemoryMiB, Workload: workloadOf(spec.N, cfg.Disks), ExtraArgs: c.WatchArgs(name)}
	})
	if err != nil {
		return nil, err
	}
	for _, g := range guests {
		if _, err := waitConsole(ctx, g.SerialPath, 3, 2*time.Minute); err != nil {
			return nil, fmt.Errorf("%s before the run: %w", g.Name, err)
		}
	}
	ran := map[string]bool{}
	for i, g := range guests {
		ran[g.Name] = !(spec.Paused && i == 1)
		if !ran[g.Name] {
			if err := pause(ctx, g.QMPPath); err != nil {
				return nil, fmt.Errorf("pausing %s: %w", g.Name, err)
			}
		}
	}
	victim := guests[spec.Victim%len(guests)]
	w, err := c.Watch(ctx, victim.Name)
	if err != nil {
		return nil, err
	}
	watching := true
	defer func() {
		if watching {
			w.Close()
		}
	}()
	switch spec.Kind {
	case SenderDiskFull:
		f, err := mountSmallFS(c.StateDir())
		if err != nil {
			return nil, err
		}
		disks = append(disks, f)
	case ReceiverDiskFull:
		for i := range c.Targets {
			f, err := mountSmallFS(c.DestinationDir(i, victim.Name))
			if err != nil {
				return nil, err
			}
			disks = append(disks, f)
			// A receiver runs in a mount namespace of its own (ip netns exec), copied when it started: started
			// again, it has the new mount, and the tmpfs filled from here is the one it writes to.
			c.KillReceiver(i)
			if err := c.StartReceiver(ctx, i); err != nil {
				return nil, err
			}
		}
	}
	args := cfg.SendArgs
	if spec.NoDedup {
		args = append(slices.Clip(args), "--no-dedup")
	}
	run, err := c.StartSend(ctx, guests, args...)
	if err != nil {
		return nil, err
	}

	at, reached := w.WaitFor(ctx, spec.Point, run.Done(), 5*time.Minute)
	res.At = at
	if !reached {
		note("the run never reached %s (%s): no fault", spec.Point, at)
	} else {
		sleepCtx(ctx, spec.Delay)
		if spec.Kind.diskFull() {
			res.At, res.Injected, res.Reached = fillDisks(ctx, w, disks, spec, note)
		} else {
			res.At, res.Injected, res.Reached = inject(ctx, c, w, run, spec, shaping, note)
		}
	}
	res.Moment = res.At.Label()

	// The sender settles what it can by itself; then it must have exited.
	cut := res.Reached && spec.Kind == PartitionSrc && spec.UntilExit
	select {
	case <-run.Done():
	case <-time.After(10 * time.Minute):
		res.Send.Hung = true
		note("send had not exited 10 minutes after the fault: killed")
		_ = run.Signal(syscall.SIGKILL)
	case <-ctx.Done():
		return res, ctx.Err()
	}
	sr, err := run.Wait()
	if err != nil && sr.Killed == 0 {
		note("send: %v", err)
	}
	res.Send.Exit = sr.Exit
	if sr.Killed != 0 {
		res.Send.Killed = sr.Killed.String()
	}
	final := map[string]string{}
	for _, v := range sr.Report.VMs {
		if res.Send.VMs == nil {
			res.Send.VMs = map[string]string{}
		}
		res.Send.VMs[v.Name] = strings.TrimSuffix(v.Status+": "+v.Error, ": ")
		final[v.Name] = v.Status
	}
	for _, f := range disks { // the operator makes room before running recover
		if err := f.Free(); err != nil {
			note("freeing %s: %v", f.dir, err)
		}
	}
	w.Close()
	watching = false
	if res.At.Target >= 0 {
		res.ReceiverAfter, _ = c.ReceiverPhase(res.At.Target, victim.Name)
	}
	if cut {
		round, err := recoverRound(ctx, c, final)
		if err != nil {
			note("recover during the partition: %v", err)
		}
		res.RecoverCut = &round
		if err := Heal(c.Source, shaping); err != nil {
			note("healing the partition: %v", err)
		}
	}

	// Recover until it says every VM is settled (at most three runs), then once more to show it changes nothing.
	for i := 1; i <= 3 && res.RecoverRuns == 0; i++ {
		round, err := recoverRound(ctx, c, final)
		if err != nil {
			note("recover %d: %v", i, err)
		}
		res.Recovers = append(res.Recovers, round)
		if round.Exit == 0 && err == nil {
			res.RecoverRuns = i
		} else {
			sleepCtx(ctx, 5*time.Second)
		}
	}
	if res.RecoverRuns == 0 {
		note("recover did not settle every VM in %d runs", len(res.Recovers))
	}
	before := census(ctx, c, guests)
	round, err := recoverRound(ctx, c, final)
	res.Recovers = append(res.Recovers, round)
	after := census(ctx, c, guests)
	// Idempotent: nothing changes, and what was left for an operator is left as it was.
	last := res.Recovers[len(res.Recovers)-2]
	res.Idempotent = err == nil && sameCopies(before, after) &&
		((round.Exit == 0 && len(round.VMs) == 0) || (round.Exit == last.Exit && maps.Equal(round.VMs, last.VMs)))
	if !res.Idempotent {
		note("recover again: exit %d, %d VM(s) unsettled, err %v; copies before %v, after %v", round.Exit, len(round.VMs), err, before, after)
	}
	if st, err := c.Status(ctx); err == nil {
		_ = os.WriteFile(filepath.Join(dir, "status.txt"), []byte(st), 0o644)
	}

	for _, g := range guests {
		v := checkVM(ctx, c, g.Name, ran[g.Name], after[g.Name], final[g.Name])
		if v.Verdict == VerdictLost && spec.Kind == DestKill && g == victim && res.Reached && startedThere(res.ReceiverAfter) {
			v.Verdict = VerdictKilled
			v.Problem += fmt.Sprintf("; the fault killed its destination after the receiver journaled %s (its guest ran there, "+
				"or may have: the source's copy is stale)", res.ReceiverAfter)
		}
		switch v.Verdict {
		case VerdictLost:
			res.Lost++
		case VerdictDoubled:
			res.Doubled++
		case VerdictFaulty:
			res.Faulty++
		case VerdictKilled:
			res.Killed++
		}
		res.VMs = append(res.VMs, v)
	}
	return res, nil
}

// workloadOf is the guests' workload: a 16 MiB working set dirtied at 200 pages/s, shared across guests but 25%; with
// a disk, 128 blocks of it written at 50 a second, each written block made durable, and every block read back and
// checked once a second.
func workloadOf(n int, disk bool) fixture.Workload {
	w := fixture.Workload{WSS: 16 << 20, Rate: 200, Seed: uint64(n), Private: 0.25}
	if disk {
		w.DiskBlocks, w.DiskRate, w.DiskVPeriod = 128, 50, time.Second
	}
	return w
}

// inject strikes. It returns where the victim stood (by the journals just before; for a sender killed, where its
// journal stopped; the source QEMU's run state just after), what was done, and whether the fault struck at all.
func inject(ctx context.Context, c *Cluster, w *VMWatch, run *SendRun, spec FaultSpec, shaping lab.Shaping,
	note func(string, ...any)) (at Where, did string, struck bool) {
	at = w.journals()
	defer func() { at.Source = w.sourceState(ctx) }()
	switch spec.Kind {
	case SenderKill, SenderHUP:
		sig, name := syscall.SIGKILL, "SIGKILL"
		if spec.Kind == SenderHUP {
			sig, name = syscall.SIGHUP, "SIGHUP"
		}
		select {
		case <-run.Done():
			note("send had exited before the %s", name)
			return at, "", false
		default:
		}
		if err := run.Signal(sig); err != nil {
			note("%s to send: %v", name, err)
			return at, "", false
		}
		if sig == syscall.SIGKILL {
			<-run.Done()
			if run.Killed() != sig {
				note("send had exited before the SIGKILL reached it")
				return at, "", false
			}
			at = w.journals() // as the sender left it
		}
		return at, fmt.Sprintf("%s to send (pid %d)", name, run.PID), true
	case ReceiverKill:
		i := at.Target
		if i < 0 {
			i = spec.Target
		}
		c.KillReceiver(i)
		sleepCtx(ctx, spec.Hold)
		if err := c.StartReceiver(ctx, i); err != nil {
			note("restarting the receiver on %s: %v", c.Targets[i].Name, err)
		}
		return at, fmt.Sprintf("SIGKILL to the receiver on %s, restarted after %v", c.Targets[i].Name, spec.Hold.Round(time.Millisecond)), true
	case DestKill:
		// At Prepare the destination may still be starting: give it a moment to exist.
		for deadline := time.Now().Add(10 * time.Second); ; {
			if i := at.Target; i >= 0 {
				pid, err := c.KillDestination(i, w.vm)
				if err != nil {
					note("killing the destination: %v", err)
				}
				if pid > 0 {
					return at, fmt.Sprintf("SIGKILL to the destination QEMU on %s (pid %d)", c.Targets[i].Name, pid), true
				}
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				note("no destination QEMU of %s to kill (%s)", w.vm, at)
				return at, "", false
			}
			sleepCtx(ctx, 20*time.Millisecond)
			at = w.journals()
		}
	case PartitionSrc:
		if err := Partition(c.Source, shaping); err != nil {
			note("partition: %v", err)
			return at, "", false
		}
		if spec.UntilExit {
			return at, "the source's link dropped every packet both ways until send exited and recover had run once", true
		}
		sleepCtx(ctx, spec.Hold)
		if err := Heal(c.Source, shaping); err != nil {
			note("healing the partition: %v", err)
		}
		return at, fmt.Sprintf("the source's link dropped every packet both ways for %v", spec.Hold.Round(time.Millisecond)), true
	}
	return at, "", false
}

// fillDisks fills the trial's small filesystems.
func fillDisks(ctx context.Context, w *VMWatch, disks []*smallFS, spec FaultSpec, note func(string, ...any)) (at Where, did string, struck bool) {
	at = w.journals()
	defer func() { at.Source = w.sourceState(ctx) }()
	for _, f := range disks {
		if err := f.Fill(); err != nil {
			note("filling %s: %v", f.dir, err)
			return at, "", false
		}
	}
	what := "the sender's state directory"
	if spec.Kind == ReceiverDiskFull {
		what = "the victim's directory on every receiver"
	}
	return at, what + " filled up (ENOSPC), freed once send exited", true
}

// recoverRound runs `vmscatter recover` once and notes each VM's status in final.
func recoverRound(ctx context.Context, c *Cluster, final map[string]string) (RecoverRound, error) {
	rr, err := c.Recover(ctx)
	if rr == nil {
		return RecoverRound{Exit: -1}, err
	}
	round := RecoverRound{Exit: rr.Exit}
	for _, v := range rr.Report.VMs {
		if round.VMs == nil {
			round.VMs = map[string]string{}
		}
		round.VMs[v.Name] = strings.TrimSuffix(v.Status+": "+v.Error, ": ")
		final[v.Name] = v.Status
	}
	return round, err
}

// census lists every guest's copies.
func census(ctx context.Context, c *Cluster, guests []*fixture.Guest) map[string][]Copy {
	out := map[string][]Copy{}
	for _, g := range guests {
		cps, _ := c.Copies(ctx, g.Name)
		out[g.Name] = cps
	}
	return out
}

func sameCopies(a, b map[string][]Copy) bool {
	if len(a) != len(b) {
		return false
	}
	for k, x := range a {
		y := b[k]
		if !slices.EqualFunc(x, y, func(p, q Copy) bool { return p.PID == q.PID && p.State == q.State }) {
			return false
		}
	}
	return true
}

// The census's verdicts on a VM.
const (
	VerdictOK      = "ok"
	VerdictLost    = "lost"    // it runs nowhere: no copy running (if it ran before), no copy holding it (if not)
	VerdictDoubled = "doubled" // two copies run it (if it ran before), or hold it (if not)
	VerdictFaulty  = "faulty"  // one copy, as it should be, but in the wrong state, or its workload stopped verifying
	// VerdictKilled: it runs nowhere because the fault killed the copy that was (or may have been) the VM: a
	// destination QEMU killed after its receiver journaled Finish, the step before `cont`.
	VerdictKilled = "killed"
)

// startedThere reports whether a receiver journal phase comes at or after Finish on the way forward: the receiver
// decided to start its destination, which then ran, or may have.
func startedThere(phase string) bool {
	p, _ := commit.ParsePhase(phase)
	return p == commit.Finish || p == commit.Confirm || p == commit.Committed
}

// checkVM judges one VM by its copies. A copy holds the VM unless it waits for an incoming migration (inmigrate,
// prelaunch: a destination that never loaded, and never can run). The VM must be held exactly once: running if it
// ran before (lost if no copy runs, doubled if two do), paused if not (doubled if two copies hold it). Any other copy
// is stale: it must go by itself (a receiver tears down a destination whose sender it lost) within a bound. The one
// copy's workload must print new progress lines and no BAD line (a paused copy is continued first), and it must run
// where the last report that mentions the VM says.
func checkVM(ctx context.Context, c *Cluster, vm string, ran bool, copies []Copy, reported string) VMOutcome {
	v := VMOutcome{Name: vm, Copies: copies, Reports: reported, Ran: ran}
	var holders, running []Copy
	for _, cp := range copies {
		if cp.State == qmp.RunStateInMigrate || cp.State == qmp.RunStatePrelaunch {
			continue
		}
		holders = append(holders, cp)
		if cp.State == qmp.RunStateRunning {
			running = append(running, cp)
		}
	}
	var the Copy
	switch {
	case ran && len(running) > 1:
		v.Verdict, v.Problem = VerdictDoubled, fmt.Sprintf("%d copies run: %s", len(running), describeCopies(running))
		return v
	case !ran && len(holders) > 1:
		v.Verdict, v.Problem = VerdictDoubled, fmt.Sprintf("%d copies hold it: %s", len(holders), describeCopies(holders))
		return v
	case ran && len(running) == 0:
		v.Verdict, v.Problem = VerdictLost, "it runs nowhere: "+orNone(describeCopies(copies))
		return v
	case !ran && len(holders) == 0:
		v.Verdict, v.Problem = VerdictLost, "no copy holds it: "+orNone(describeCopies(copies))
		return v
	case ran:
		the = running[0]
	default:
		the = holders[0]
	}
	v.Host = the.Host
	if !ran && the.State != qmp.RunStatePaused && the.State != qmp.RunStatePostMigrate {
		v.Verdict, v.Problem = VerdictFaulty, fmt.Sprintf("it was paused, but its copy on %s is %q", the.Host, the.State)
		return v
	}
	if len(copies) > 1 {
		gone, err := waitStaleGone(ctx, c, vm, the.PID, 90*time.Second)
		if err != nil {
			v.Verdict, v.Problem = VerdictFaulty, err.Error()
			return v
		}
		others := slices.DeleteFunc(slices.Clone(copies), func(cp Copy) bool { return cp.PID == the.PID })
		v.Stale = fmt.Sprintf("%s, gone by itself within %v", describeCopies(others), gone.Round(time.Second))
	}
	if want := map[string]bool{report.StatusMigrated: the.Host != c.Source.Name, report.StatusRolledBack: the.Host == c.Source.Name}; reported != "" {
		if ok, known := want[reported]; known && !ok {
			v.Verdict, v.Problem = VerdictFaulty, fmt.Sprintf("the report says %s, but it runs on %s", reported, the.Host)
			return v
		}
	}
	if !ran {
		if err := cont(ctx, the.spare); err != nil {
			v.Verdict, v.Problem = VerdictFaulty, fmt.Sprintf("continuing its copy on %s: %v", the.Host, err)
			return v
		}
	}
	if err := waitVerifying(ctx, the.SerialLog(), 90*time.Second); err != nil {
		v.Verdict, v.Problem = VerdictFaulty, fmt.Sprintf("its workload on %s: %v", the.Host, err)
		return v
	}
	v.Verdict = VerdictOK
	return v
}

func describeCopies(cps []Copy) string {
	var parts []string
	for _, cp := range cps {
		parts = append(parts, fmt.Sprintf("%s pid %d %s", cp.Host, cp.PID, orNone(string(cp.State))))
	}
	return strings.Join(parts, ", ")
}

// waitStaleGone waits until the VM's only copy is the one with PID keep, and says how long that took.
func waitStaleGone(ctx context.Context, c *Cluster, vm string, keep int, bound time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		cps, err := c.Copies(ctx, vm)
		if err == nil && len(cps) == 1 && cps[0].PID == keep {
			return time.Since(start), nil
		}
		if time.Since(start) > bound || ctx.Err() != nil {
			return 0, fmt.Errorf("a stale copy stays beside the VM for %v: %s", bound, describeCopies(cps))
		}
		sleepCtx(ctx, time.Second)
	}
}

// waitVerifying waits until a console log shows ten more progress lines than now and, for a guest with a disk, one
// more full pass over its disk, with no BAD line anywhere in it (memory or disk).
func waitVerifying(ctx context.Context, serial string, bound time.Duration) error {
	read := func() guestlog.Summary {
		b, _ := os.ReadFile(serial)
		s, _ := guestlog.Summarize(bytes.NewReader(b))
		return s
	}
	s0 := read()
	deadline := time.Now().Add(bound)
	for {
		s := read()
		if len(s.Bad) > 0 {
			return fmt.Errorf("the guest found corruption: %+v (%d BAD lines)", s.Bad[0], len(s.Bad))
		}
		if s.OKs >= s0.OKs+10 && (!s.Last.Disk || s.Last.DiskPass > s0.Last.DiskPass) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d progress lines and %d disk passes in %v, want 10 and 1", s.OKs-s0.OKs,
				s.Last.DiskPass-s0.Last.DiskPass, bound)
		}
		sleepCtx(ctx, 200*time.Millisecond)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

func pause(ctx context.Context, sock string) error {
	q, err := qmp.Dial(ctx, sock)
	if err != nil {
		return err
	}
	defer q.Close()
	return q.Stop(ctx)
}

func cont(ctx context.Context, sock string) error {
	if sock == "" {
		return fmt.Errorf("no spare QMP socket")
	}
	q, err := qmp.Dial(ctx, sock)
	if err != nil {
		return err
	}
	defer q.Close()
	return q.Cont(ctx)
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// WriteTrials appends results as JSON lines.
// ReadTrials reads the trials.jsonl files of campaigns run in parts (a campaign, then single trials replayed): a
// trial of the same number in a later file replaces the earlier one. The result is in trial order.
func ReadTrials(paths ...string) ([]*TrialResult, error) {
	byN := map[int]*TrialResult{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		for dec.More() {
			var r TrialResult
			if err := dec.Decode(&r); err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			byN[r.Spec.N] = &r
		}
	}
	var out []*TrialResult
	for _, n := range slices.Sorted(maps.Keys(byN)) {
		out = append(out, byN[n])
	}
	return out, nil
}

func WriteTrials(path string, results []*TrialResult) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	for _, r := range results {
		if err := enc.Encode(r); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}
