package converge

import (
	"fmt"
	"time"
)

// Progress is one reading of the source QEMU's migration (its query-migrate answer), as the policies read it.
type Progress struct {
	// Elapsed is the time since the run (vmscatter's `send`) started, not since this VM's migration did: timebound's
	// deadline holds for the whole send, the scan, the seed and the prime included.
	Elapsed      time.Duration
	PagesSent    int64 // pages QEMU has sent, whole or as zero flags
	Remaining    int64 // bytes QEMU still counts as dirty
	Total        int64 // bytes of guest RAM
	Transferred  int64 // bytes QEMU has written
	Iterations   int64 // dirty-sync count: 1 during the first pass
	PageSize     int64
	Throttle     int  // QEMU's auto-converge throttle now, percent (cpu-throttle-percentage)
	AutoConverge bool // the throttle's capability is on for this migration (Policy.ThrottlesVCPUs)
}

// Step is what a policy asks of the migration's driver after one reading.
type Step struct {
	// SwitchOver: stop the VM now, so that QEMU sends the rest and completes (MPLM's "stop and send the dirty
	// rest"). With downtime-limit at 1 ms QEMU would complete only once nothing is left; stopping the VM instead
	// makes the moment the policy's. The driver records the time of the stop: QEMU does not count a stop it did not
	// make in its own downtime figure.
	SwitchOver bool
	// PinVCPUs > 0: over-commit the VM's vCPU threads onto that many host CPUs (TLM's marker), once.
	PinVCPUs int
	Reason   string // for the log
}

// Steering decides, reading by reading, when the membound and timebound policies act during a migration. It is
// pure: the driver reads QEMU, feeds each reading to Observe and carries out the Step. Once it has returned
// SwitchOver it returns nothing more. Owned by one goroutine.
type Steering struct {
	p              Policy
	budget         TimeBudget
	pass, passSize int64
	throttleAt     int // QEMU's throttle at this pass's start
	waitedOff      int // passes that did not shrink, let run while the throttle was on but had not bitten yet
	pinned, done   bool
}

// Steering returns the policy's decider; precopy and autoconverge never act, QEMU steers them.
func (p Policy) Steering() *Steering { return &Steering{p: p} }

// Acts reports whether the policy ever asks for anything during a migration.
func (p Policy) Acts() bool { return p.Kind == PolicyTimebound || p.Kind == PolicyMembound }

// Observe takes one reading of an active migration and returns what to do now.
func (s *Steering) Observe(pr Progress) Step {
	if s.done {
		return Step{}
	}
	switch s.p.Kind {
	case PolicyMembound:
		// dirty-sync-count is 1 during the first pass, 2 during the first dirty pass; at 3 both are done.
		if pr.Iterations >= 3 {
			s.done = true
			return Step{SwitchOver: true, Reason: "membound: full pass and one dirty pass done, switching over"}
		}
	case PolicyTimebound:
		return s.timebound(pr)
	}
	return Step{}
}

// shrinkMargin is how much smaller than the previous pass's dirty set a pass's must be for another pass to be worth
// its time: a set that shrinks by less is a hot set the link cannot outrun, and each pass re-sends it whole.
const shrinkMargin = 0.9

// throttleWaits is how many passes that do not shrink timebound lets run while QEMU's throttle is on but has not
// bitten: QEMU throttles at the second sync that finds the guest dirtying more than half of what it sent, and a
// first pass of mostly primed pages (references, which QEMU counts at full size) never does.
const throttleWaits = 2

// timebound switches over at the first of:
//
//   - the budget: the time since the run started plus the stop-and-copy of the dirty set reaches the deadline;
//   - non-convergence: a pass starts with a dirty set not smaller (by shrinkMargin) than the previous pass's. The
//     next stop sends at least that set whenever it comes, so waiting cannot lower the downtime; it only re-sends
//     the hot set and spends the deadline. Except where QEMU's throttle may yet slow the guest: the set just
//     synced was dirtied under the old throttle, so when the throttle rose at this sync, the next pass is dirtied
//     more slowly and gets its chance; and while the capability is on but QEMU has not throttled yet (it waits for
//     two syncs that find the guest outrunning the link), up to throttleWaits passes wait for it. The budget still
//     holds the deadline.
//
// It pins the vCPUs at the marker (or at the first dirty pass).
func (s *Steering) timebound(pr Progress) Step {
	pageSize := pr.PageSize
	if pageSize <= 0 {
		pageSize = 4096
	}
	s.budget.Observe(pr.PagesSent, pr.Elapsed)
	var note string // why a pass that does not shrink goes on (for the log)
	if pr.Iterations != s.pass {
		// A pass starts just after QEMU synced its dirty bitmap: what remains then is the dirty set, which is what a
		// stop will have to send; during the pass `remaining` shrinks and would underestimate it.
		first := s.pass == 0
		prevSize, prevThrottle := s.passSize, s.throttleAt
		s.pass, s.passSize, s.throttleAt = pr.Iterations, pr.Remaining, pr.Throttle
		if !first && pr.Iterations >= 2 && prevSize > 0 && float64(pr.Remaining) >= shrinkMargin*float64(prevSize) {
			switch {
			case pr.Throttle > prevThrottle:
				note = "timebound: the dirty set does not shrink, but the throttle just rose"
			case pr.AutoConverge && pr.Throttle == 0 && s.waitedOff < throttleWaits:
				s.waitedOff++
				note = "timebound: the dirty set does not shrink, waiting for QEMU's throttle"
			default:
				s.done = true
				return Step{SwitchOver: true, Reason: fmt.Sprintf("timebound: the dirty set does not shrink (%d MiB after %d MiB), waiting cannot lower the downtime, switching over",
					pr.Remaining>>20, prevSize>>20)}
			}
		}
	}
	if s.budget.MustSwitch(max(pr.Remaining, s.passSize)/pageSize, pr.Elapsed, s.p.Deadline) {
		s.done = true
		return Step{SwitchOver: true, Reason: "timebound: switching over so that the rest fits before the deadline"}
	}
	if !s.pinned && pr.Total > 0 && (float64(pr.Transferred)/float64(pr.Total) >= s.p.Marker || pr.Iterations >= 2) {
		s.pinned = true
		return Step{PinVCPUs: s.p.OvercommitCPUs, Reason: "timebound: marker passed, over-committing vCPUs"}
	}
	return Step{Reason: note}
}

// Rate is the stop-and-copy rate the time budget has measured, pages/s (for the log).
func (s *Steering) Rate() float64 { return s.budget.rate }
