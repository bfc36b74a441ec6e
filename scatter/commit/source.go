package commit

import "strings"

// Source is the source side of one VM's migration: the sender's half of the protocol. Not safe for concurrent
// use: one goroutine steps it.
//
// Its rule: it owns the VM until it journals Finish and sends START. Before that it may roll back at any time,
// and it does so whenever anything fails, times out or is stopped. From then on it never resumes the source
// unless the destination says ABORTED (gone, never ran); if it cannot hear from the destination it keeps the
// source paused and ends Unresolved.
type Source struct {
	machine
	wasRunning bool // the VM ran before the migration: a rollback must leave it running

	opened     bool // OPEN sent: a destination may exist until ABORTED
	tuned      bool // StartSourceMigration issued: settings to restore on rollback
	migrating  bool // the source migration may be active: no end status heard yet
	completed  bool // SrcCompleted heard
	loaded     bool // LOADED heard
	settled    bool // the source VM left finish-migrate after its migration ended (or never migrated)
	running    bool // when settled: the source VM runs
	destGone   bool // ABORTED heard: the destination of this epoch is gone and never ran
	peerLost   bool
	srcGone    bool // the source QEMU exited
	resuming   bool // RolledBack journaled, the source being put back
	redialling bool // Reconnect asked for, not yet answered

	why    string // the first reason for rolling back
	status Status // the rollback's outcome

	undo   *Source // the machine before the last step, and that step's event: JournalFailed takes it again
	undoEv Event
}

// NewSource returns the source side of a migration in Begin. epoch must be greater than every epoch this VM's
// earlier migrations used (the sender's journal keeps the last one). wasRunning says whether the source VM
// runs now: a rollback leaves it as it was.
func NewSource(epoch uint64, wasRunning bool) *Source {
	return &Source{machine: machine{epoch: epoch, phase: Begin}, wasRunning: wasRunning}
}

// Phase is the phase the source side is in.
func (s *Source) Phase() Phase { return s.phase }

// Epoch is the migration's epoch.
func (s *Source) Epoch() uint64 { return s.epoch }

// DestMayLinger reports whether a destination of this epoch may still exist although the VM was rolled back: OPEN
// was sent and ABORTED never heard (the receiver was lost). It cannot run (no START is ever sent for a rolled-back
// epoch, and a receiver refuses one after ABORT), but it holds memory on its target until `vmscatter recover` has
// the receiver tear it down.
func (s *Source) DestMayLinger() bool { return s.phase == RolledBack && s.opened && !s.destGone }

// Step feeds one event and returns what the driver must do, in order (see the package doc).
func (s *Source) Step(ev Event) []Action {
	if ev.Kind == JournalFailed {
		undo, again := s.undo, s.undoEv
		return s.retake(ev, func() bool {
			if undo != nil {
				*s = *undo
			}
			return undo != nil
		}, func() []Action { return s.Step(again) })
	}
	before := *s
	before.out, before.undo = nil, nil
	s.undo, s.undoEv = &before, ev
	s.out = nil
	if s.common(ev) {
		return s.out
	}
	switch s.phase {
	case Begin:
		s.begin(ev)
	case Prepare:
		s.prepare(ev)
	case Perform, Loaded:
		s.perform(ev)
	case Finish:
		s.finishPhase(ev)
	case Confirm:
		s.confirm(ev)
	case RollingBack:
		s.rollingBack(ev)
	default:
		s.terminal(ev)
	}
	return s.out
}

func (s *Source) begin(ev Event) {
	switch ev.Kind {
	case Connected:
		if !s.journal(Prepare) {
			s.finish(RolledBack, StatusRolledBack, s.journalWhy("nothing was changed"))
			return
		}
		s.send(FrameOpen, "")
		s.opened = true
		s.phase = Prepare
	case PeerLost, Timeout:
		s.finish(RolledBack, StatusRolledBack, because("the target could not be reached; nothing was changed", ev))
	case Stop:
		s.finish(RolledBack, StatusRolledBack, "stopped before the migration began; nothing was changed")
	case SrcExited:
		s.finish(RolledBack, StatusFailed, because("the source QEMU exited before the migration began", ev))
	default:
		s.unexpected(ev)
	}
}

func (s *Source) prepare(ev Event) {
	switch {
	case ev.Kind == Recv && ev.Frame == FrameReady:
		if !s.journal(Perform) {
			s.rollback(s.journalWhy("the source was not touched"), StatusRolledBack)
			return
		}
		s.emit(Action{Kind: StartSourceMigration})
		s.tuned, s.migrating = true, true
		s.phase = Perform
	case ev.Kind == Recv && ev.Frame == FrameAborted:
		s.destGone = true
		s.rollback(because("the target could not start the destination", ev), StatusRolledBack)
	default:
		if !s.failBeforeFinish(ev) {
			s.unexpected(ev)
		}
	}
}

// perform handles Perform (the stream flows) and Loaded (the destination loaded it and the source migration
// completed: START waits only for the source VM to leave finish-migrate).
func (s *Source) perform(ev Event) {
	switch {
	case ev.Kind == SrcActive && s.phase == Perform:
	case ev.Kind == SrcCompleted && s.phase == Perform:
		s.migrating, s.completed = false, true
		s.maybeStart()
	case ev.Kind == Recv && ev.Frame == FrameLoaded && s.phase == Perform && !s.loaded:
		s.loaded = true
		s.maybeStart()
	case ev.Kind == SrcPaused && s.completed && !s.settled:
		s.settled = true
		s.maybeStart()
	case ev.Kind == SrcRunning && s.completed && !s.settled:
		// Someone resumed the source after it completed: its state has moved on, the destination's copy is stale.
		s.settled, s.running = true, true
		s.rollback("the source VM runs again after its migration completed", StatusRolledBack)
	case ev.Kind == SrcExited && s.completed:
		// The source's copy is gone after it sent everything: the destination's, once loaded, is the only one.
		s.srcGone = true
		s.maybeStart()
	case ev.Kind == SrcFailed && s.migrating:
		s.migrating = false
		s.rollback(because("the source migration failed", ev), StatusRolledBack)
	case ev.Kind == SrcCancelled && s.migrating:
		s.migrating = false
		s.rollback(because("the source migration was cancelled", ev), StatusRolledBack)
	case ev.Kind == StreamFailed && s.phase == Perform:
		s.rollback(because("the source stream failed", ev), StatusRolledBack)
	case ev.Kind == Recv && ev.Frame == FrameAborted:
		s.destGone = true
		s.rollback(because("the destination failed", ev), StatusRolledBack)
	default:
		if !s.failBeforeFinish(ev) {
			s.unexpected(ev)
		}
	}
}

// failBeforeFinish handles the events on which a source that still owns the VM rolls back.
func (s *Source) failBeforeFinish(ev Event) bool {
	switch {
	case ev.Kind == Recv && ev.Frame == FrameError:
		s.rollback(because("the receiver gave up", ev), StatusRolledBack)
	case ev.Kind == PeerLost:
		s.peerLost = true
		s.rollback(because("the connection to the receiver was lost", ev), StatusRolledBack)
	case ev.Kind == Timeout:
		s.rollback(because("timed out in "+s.phase.String(), ev), StatusRolledBack)
	case ev.Kind == Stop:
		s.rollback("stopped by the operator", StatusRolledBack)
	case ev.Kind == SrcExited:
		s.srcGone, s.migrating = true, false
		s.rollback(because("the source QEMU exited during the migration; the VM is lost", ev), StatusFailed)
	default:
		return false
	}
	return true
}

// maybeStart moves to Loaded once the destination loaded the stream and the source completed, and decides
// START once the source VM has also left finish-migrate (so that a hand-back can resume it at once).
func (s *Source) maybeStart() {
	if s.phase == Perform && s.completed && s.loaded {
		s.phase = Loaded
	}
	if s.phase == Loaded && (s.settled || s.srcGone) {
		s.decideStart()
	}
}

// decideStart is the point of no return: journal Finish, then START. Without a journal START is not sent: the
// VM goes back to the source, or, if the source's copy is gone, stays with the paused destination for recover.
func (s *Source) decideStart() {
	if !s.journal(Finish) {
		if s.srcGone {
			s.finish(Unresolved, StatusUnresolved, s.journalWhy("the source QEMU has exited and the destination "+
				"holds the only copy, paused; free the state directory and run `vmscatter recover`"))
			return
		}
		s.rollback(s.journalWhy("START was not sent"), StatusRolledBack)
		return
	}
	s.send(FrameStart, "")
	s.phase = Finish
}

func (s *Source) finishPhase(ev Event) {
	switch {
	case ev.Kind == Recv && ev.Frame == FrameRunning:
		s.journal(Confirm)
		s.phase = Confirm
		if s.srcGone {
			s.send(FrameCommit, "")
		} else {
			s.emit(Action{Kind: QuitSource})
		}
	case ev.Kind == Recv && ev.Frame == FrameAborted:
		// The destination handed the VM back: its START failed and its guest never ran.
		s.destGone = true
		s.rollback(because("the destination could not start", ev), StatusRolledBack)
	case ev.Kind == PeerLost:
		s.peerLost = true
		s.redial()
	case ev.Kind == Reconnected:
		s.peerLost, s.redialling = false, false
		s.send(FrameStart, "")
	case ev.Kind == Timeout:
		s.finish(Unresolved, StatusUnresolved, "START was sent but RUNNING not heard: the destination may run, so "+
			"the source stays paused; run `vmscatter recover`")
	case ev.Kind == Stop:
	case ev.Kind == SrcExited:
		s.srcGone = true
	default:
		s.unexpected(ev)
	}
}

func (s *Source) confirm(ev Event) {
	switch {
	case ev.Kind == SrcExited && !s.srcGone && s.peerLost:
		s.srcGone = true
		s.commit("; COMMIT could not be sent")
	case ev.Kind == SrcExited && !s.srcGone:
		s.srcGone = true
		s.send(FrameCommit, "")
	case ev.Kind == SrcRefused && !s.srcGone:
		s.finish(Unresolved, StatusUnresolved, because("the source QEMU did not quit", ev)+"; the destination runs, "+
			"so never resume the source; run `vmscatter recover`")
	case ev.Kind == Recv && ev.Frame == FrameDone && s.srcGone:
		s.commit("")
	case (ev.Kind == PeerLost || ev.Kind == Timeout) && s.srcGone:
		s.commit("; DONE was not heard")
	case ev.Kind == Timeout:
		s.finish(Unresolved, StatusUnresolved, "the destination runs but the source QEMU has not exited: never "+
			"resume it; run `vmscatter recover`")
	case ev.Kind == PeerLost:
		s.peerLost = true
	case ev.Kind == Reconnected:
		s.peerLost = false
		if s.srcGone {
			s.send(FrameCommit, "")
		}
	case ev.Kind == Stop:
	default:
		s.unexpected(ev)
	}
}

func (s *Source) commit(note string) {
	if !s.journal(Committed) {
		note += "; " + s.journalWhy("run `vmscatter recover` to settle the run's record")
	}
	s.finish(Committed, StatusMigrated, "the destination runs and the source QEMU has quit"+note)
}

// rollback takes the VM back: tell the destination to go, stop the source migration, then (advance) wait
// until the migration has ended, the source VM has left finish-migrate and the destination is gone, and put
// the source back as it was.
func (s *Source) rollback(why string, st Status) {
	if s.srcGone && st != StatusFailed {
		why, st = why+"; the source QEMU had exited, so the VM is lost", StatusFailed
	}
	if s.why == "" {
		s.why, s.status = why, st
	}
	if st == StatusFailed {
		s.status = st
	}
	s.phase = RollingBack
	if s.opened && !s.destGone && !s.peerLost {
		s.send(FrameAbort, why)
	}
	if s.migrating {
		s.emit(Action{Kind: CancelSourceMigration})
	}
	if !s.tuned {
		s.settled, s.running = true, s.wasRunning
	}
	s.advance()
}

// needsCont reports whether the settled source must be resumed to be as it was.
func (s *Source) needsCont() bool { return s.wasRunning && !s.running }

func (s *Source) advance() {
	if s.srcGone {
		if !s.resuming {
			s.journalRolledBack()
		}
		s.finish(RolledBack, StatusFailed, s.why)
		return
	}
	if s.migrating || !s.settled || s.resuming {
		return
	}
	note := ""
	if !s.destGone {
		if !s.peerLost {
			return // ABORT sent: wait for ABORTED
		}
		if s.needsCont() {
			s.redial() // the source may be resumed only once the destination is confirmed gone
			return
		}
		// The source runs (or was paused before): there is nothing to resume, and the destination cannot run
		// without a START that is never sent.
		note = "; the destination was not confirmed gone (run `vmscatter recover` to tidy it)"
	}
	s.journalRolledBack()
	if s.tuned {
		s.emit(Action{Kind: RestoreSource})
	}
	if s.needsCont() {
		s.emit(Action{Kind: ResumeSource})
		s.resuming = true
		s.why += note
		return
	}
	s.finish(RolledBack, s.status, s.why+note)
}

// journalRolledBack journals RolledBack before the source is put back. Unrecorded is as safe (the destination is
// gone or never ran), but the run's record stays unsettled, so the report says so.
func (s *Source) journalRolledBack() {
	if !s.journal(RolledBack) && !strings.Contains(s.why, s.noJournal) {
		s.why += "; " + s.journalWhy("run `vmscatter recover` to settle the run's record")
	}
}

func (s *Source) redial() {
	if !s.redialling {
		s.redialling = true
		s.emit(Action{Kind: Reconnect})
	}
}

func (s *Source) rollingBack(ev Event) {
	switch {
	case (ev.Kind == SrcCompleted || ev.Kind == SrcFailed || ev.Kind == SrcCancelled) && s.migrating:
		s.migrating = false
	case (ev.Kind == SrcRunning || ev.Kind == SrcPaused) && !s.migrating && !s.settled:
		s.settled, s.running = true, ev.Kind == SrcRunning
	case ev.Kind == SrcRunning && s.resuming:
		s.finish(RolledBack, s.status, s.why)
		return
	case ev.Kind == SrcRefused && s.resuming:
		s.finish(Unresolved, StatusUnresolved, because("the source VM could not be resumed", ev)+"; the destination "+
			"is gone; run `vmscatter recover`")
		return
	case ev.Kind == SrcRefused:
		// migrate_cancel refused: the migration's end status still comes.
	case ev.Kind == Recv && ev.Frame == FrameAborted && !s.destGone:
		s.destGone = true
	case ev.Kind == Recv && (ev.Frame == FrameReady || ev.Frame == FrameLoaded):
		// crossed our ABORT
	case ev.Kind == Recv && ev.Frame == FrameError:
		s.unexpected(ev)
	case ev.Kind == PeerLost:
		s.peerLost = true
	case ev.Kind == Reconnected:
		s.peerLost, s.redialling = false, false
		if !s.destGone {
			s.send(FrameAbort, s.why)
		}
	case ev.Kind == SrcExited:
		s.srcGone, s.migrating = true, false
		s.status = StatusFailed
		s.why += "; the source QEMU exited"
	case ev.Kind == Timeout:
		s.rollbackTimeout()
		return
	case ev.Kind == Stop:
	default:
		s.unexpected(ev)
		return
	}
	s.advance()
}

// rollbackTimeout ends a rollback that did not finish in time: done if only the destination's confirmation is
// missing and the source needs no resuming, else Unresolved with the source left as it is.
func (s *Source) rollbackTimeout() {
	switch {
	case s.resuming:
		s.finish(Unresolved, StatusUnresolved, "the destination is gone but the source VM did not resume in time; "+
			"run `vmscatter recover`")
	case s.migrating || !s.settled:
		s.finish(Unresolved, StatusUnresolved, "the source migration did not stop in time; run `vmscatter recover`")
	case !s.destGone && s.needsCont():
		s.finish(Unresolved, StatusUnresolved, "the receiver did not confirm the destination gone, so the source "+
			"stays paused; run `vmscatter recover`")
	default:
		s.peerLost = true // give up waiting for ABORTED
		s.advance()
	}
}

// terminal answers late events: only those that say the protocol was broken are worth a word.
func (s *Source) terminal(ev Event) {
	if ev.Kind != Recv {
		return
	}
	switch {
	case s.phase == Committed && (ev.Frame == FrameRunning || ev.Frame == FrameDone):
	case s.phase == RolledBack && (ev.Frame == FrameAborted || ev.Frame == FrameReady || ev.Frame == FrameLoaded):
	default:
		s.unexpected(ev)
	}
}
