package commit

import "fmt"

// SourceState is what `vmscatter recover` observes of the source QEMU now.
type SourceState uint8

const (
	SourceGone      SourceState = iota // no QEMU for the VM on the source host
	SourceRunning                      // it runs
	SourcePaused                       // stopped and not migrating (paused, postmigrate)
	SourceMigrating                    // a migration is active, or the VM is still in finish-migrate
)

var sourceStateNames = [...]string{"gone", "running", "paused", "migrating"}

func (s SourceState) String() string { return sourceStateNames[s] }

// DestState is what the receiver reports of the destination QEMU now.
type DestState uint8

const (
	DestUnknown DestState = iota // the receiver could not be asked
	DestGone                     // no destination QEMU for the VM (or its host is declared fenced by the operator)
	DestPaused                   // it exists and is paused
	DestRunning                  // it runs
)

var destStateNames = [...]string{"unknown", "gone", "paused", "running"}

func (s DestState) String() string { return destStateNames[s] }

// Situation is everything recover knows of one VM: both journals and both QEMUs as observed now.
type Situation struct {
	Source     Entry // the sender's last journal entry for the VM; Phase Begin: none
	WasRunning bool  // from the sender's journal: the VM ran before the migration
	SourceNow  SourceState

	DestKnown bool  // the receiver answered with its journal (false: unreachable, or declared fenced)
	Dest      Entry // the receiver's last journal entry for the VM, if DestKnown; Phase Begin: none
	DestNow   DestState
}

// Side names a copy of the VM.
type Side uint8

// Sides.
const (
	Nobody     Side = iota // not decided yet
	SourceSide             // the source's copy is the VM
	DestSide               // the destination's copy is the VM
)

func (s Side) String() string { return [...]string{"nobody", "source", "dest"}[s] }

// Verdict says what recover does with a Plan.
type Verdict uint8

const (
	Resolved Verdict = iota // exactly one copy, as the VM was, and both journals say so: nothing to do
	Act                     // carry out Plan.Fix, observe again, and Decide again
	Wait                    // a side must answer first (the receiver is unreachable): try again later
	Manual                  // only an operator can decide; Plan.Why says what is known
)

func (v Verdict) String() string { return [...]string{"resolved", "act", "wait", "manual"}[v] }

// Fix is one step of recovery. Each is idempotent, and journals before it acts.
type Fix uint8

const (
	NoFix Fix = iota
	// FixCancelSource (source host): migrate_cancel; wait until the migration has ended and the VM has left
	// finish-migrate.
	FixCancelSource
	// FixTearDownDest (receiver): journal RolledBack(epoch), so that no START of the epoch is ever obeyed, then
	// kill the destination if it exists and wait until it is gone.
	FixTearDownDest
	// FixResumeSource (source host): journal RolledBack(epoch), restore the source's migration capabilities,
	// parameters and vCPU affinity, and `cont` the source if the VM ran before.
	FixResumeSource
	// FixStartDest (receiver): journal Finish(epoch) unless it is there, then `cont` the destination if the VM ran
	// before.
	FixStartDest
	// FixQuitSource (source host): journal Confirm(epoch), then quit the source QEMU (SIGKILL if it stays).
	FixQuitSource
	// FixMarkCommitted (both): journal Committed(epoch) where it is not yet.
	FixMarkCommitted
)

func (f Fix) String() string {
	return [...]string{"none", "cancel-source", "tear-down-dest", "resume-source", "start-dest", "quit-source",
		"mark-committed"}[f]
}

// Plan is Decide's answer.
type Plan struct {
	Verdict Verdict
	Owner   Side // whose copy is to be the VM
	Fix     Fix  // the next step, when Verdict is Act
	Why     string
}

func (p Plan) String() string {
	s := fmt.Sprintf("%v owner=%v", p.Verdict, p.Owner)
	if p.Fix != NoFix {
		s += " fix=" + p.Fix.String()
	}
	return s + ": " + p.Why
}

// Decide is `vmscatter recover`'s rule for one VM: the next step towards exactly one copy of it, as it was
// (running if it ran). recover observes, decides, carries out the step, and decides again until Resolved;
// Wait and Manual stop it for this VM.
//
// The destination's copy is the VM if its guest may have run (the receiver journals Finish before `cont`, or it
// runs now), or if START was decided (the sender journals Finish before START) and it still exists. Otherwise
// the source's copy is, and it is resumed only after the receiver has confirmed the destination gone and has
// journaled the epoch RolledBack, so that a START still in flight is refused. Nothing is ever guessed from a
// side that cannot be asked.
func Decide(s Situation) Plan {
	e := s.Source.Epoch
	src, dst := s.Source.Phase, Begin
	if s.DestKnown && s.Dest.Phase != Begin {
		switch {
		case s.Dest.Epoch > e:
			return Plan{Manual, Nobody, NoFix, fmt.Sprintf("the receiver journaled epoch %d, later than the sender's %d",
				s.Dest.Epoch, e)}
		case s.Dest.Epoch == e:
			dst = s.Dest.Phase
		}
		// an earlier epoch's entry says nothing about this migration
	}
	if src == Begin {
		if dst != Begin {
			return Plan{Manual, Nobody, NoFix, "the receiver journaled a migration the sender has no record of"}
		}
		return Plan{Resolved, SourceSide, NoFix, "no migration recorded"}
	}
	srcRunning := s.SourceNow == SourceRunning
	if srcRunning && s.DestNow == DestRunning {
		return Plan{Manual, Nobody, NoFix, "both copies run"}
	}
	startDecided := src == Finish || src == Confirm || src == Committed
	mayHaveRun := s.DestNow == DestRunning || dst == Finish || dst == Confirm || dst == Committed
	runKnown := mayHaveRun || s.DestKnown

	switch {
	case mayHaveRun && src == RolledBack:
		return Plan{Manual, Nobody, NoFix, "the sender rolled back but the destination may have run"}
	case mayHaveRun && srcRunning:
		return Plan{Manual, Nobody, NoFix, "the source runs and the destination may have run"}
	case mayHaveRun:
		return decideDest(s, src, dst)
	case !runKnown && startDecided && s.DestNow == DestGone:
		return Plan{Manual, Nobody, NoFix, "START was decided and the destination's host is gone: the VM may have run there"}
	case !runKnown && startDecided && srcRunning:
		return Plan{Manual, Nobody, NoFix, "the source runs though START was decided, and the receiver cannot say " +
			"whether its destination ran"}
	case !runKnown && startDecided:
		return Plan{Wait, Nobody, NoFix, "START was decided: only the receiver can say whether its destination ran"}
	case runKnown && (src == Confirm || src == Committed):
		return Plan{Manual, Nobody, NoFix, "the sender heard RUNNING but the receiver's journal says its destination never ran"}
	case startDecided && !srcRunning && s.DestNow == DestPaused && dst != RolledBack:
		return decideDest(s, src, dst)
	}
	return decideSource(s, src, dst)
}

// decideSource brings the source's copy back: the destination never ran.
func decideSource(s Situation, src, dst Phase) Plan {
	act := func(f Fix, why string) Plan { return Plan{Act, SourceSide, f, why} }
	if s.SourceNow == SourceMigrating {
		return act(FixCancelSource, "the source is still migrating")
	}
	asWas := s.SourceNow == SourceRunning || (s.SourceNow == SourcePaused && !s.WasRunning)
	if s.DestNow == DestUnknown {
		switch {
		case s.SourceNow == SourceGone:
			return Plan{Manual, SourceSide, NoFix, "the source QEMU is gone and the receiver cannot be asked"}
		case asWas && src != RolledBack:
			return act(FixResumeSource, "the source is as it was; the receiver cannot be asked, but no START was decided")
		case asWas:
			return Plan{Wait, SourceSide, NoFix, "the source is as it was; the receiver cannot be asked to tear its copy down"}
		}
		return Plan{Wait, SourceSide, NoFix, "the source may be resumed only once the receiver confirms the destination gone"}
	}
	if s.DestNow == DestPaused || (s.DestKnown && dst != Begin && dst != RolledBack) {
		return act(FixTearDownDest, "the destination never ran: tear it down and resolve the epoch to the source")
	}
	if s.SourceNow == SourceGone {
		return Plan{Manual, SourceSide, NoFix, "the source QEMU is gone and the destination never ran: start the VM from its disks"}
	}
	if !asWas || src != RolledBack {
		return act(FixResumeSource, "the destination is gone and never ran")
	}
	return Plan{Resolved, SourceSide, NoFix, "the source's copy is the VM"}
}

// decideDest carries the switch-over through: the destination may have run, or START was decided and it exists.
func decideDest(s Situation, src, dst Phase) Plan {
	act := func(f Fix, why string) Plan { return Plan{Act, DestSide, f, why} }
	switch s.DestNow {
	case DestGone:
		return Plan{Manual, DestSide, NoFix, "the destination may have run and its QEMU is gone; the source's copy is stale"}
	case DestUnknown:
		return Plan{Wait, DestSide, NoFix, "the receiver cannot be asked"}
	}
	if s.SourceNow == SourceMigrating {
		return act(FixCancelSource, "the source is migrating again")
	}
	live := s.DestNow == DestRunning || (!s.WasRunning && (dst == Finish || dst == Committed))
	if !live {
		return act(FixStartDest, "START was decided (or the destination ran): start the destination")
	}
	switch s.SourceNow {
	case SourceRunning:
		return Plan{Manual, DestSide, NoFix, "the source runs beside the destination's copy"}
	case SourcePaused:
		return act(FixQuitSource, "the destination's copy is the VM: the source's must go")
	}
	if src != Committed || dst != Committed {
		return act(FixMarkCommitted, "the destination's copy is the only one")
	}
	return Plan{Resolved, DestSide, NoFix, "the destination's copy is the VM"}
}
