package commit

// Dest is the destination side of one VM's migration: the receiver's half of the protocol. Not safe for
// concurrent use: one goroutine steps it.
//
// Its rule: until it has journaled Loaded and said LOADED, the source cannot have decided START, so the
// destination is the receiver's to tear down on any failure. From LOADED until START or ABORT of its epoch it
// may do nothing irreversible: it keeps the destination paused and waits for the sender's word, and if the
// sender is lost it waits for the sender or `vmscatter recover` to come back with it (AwaitResolution). From
// START on the VM is the destination's: it is never torn down for a lost connection, and handed back (ABORTED)
// only if QEMU refused to start it, so that its guest never ran.
//
// The sender retries and the receiver answers: every answer is given again for a repeated START, COMMIT or
// ABORT of the same epoch, also from a terminal phase.
type Dest struct {
	machine
	launched bool // LaunchDest issued: a destination process may exist until DestExited
	gone     bool // DestExited heard
	restored bool // rebuilt at Finish: an earlier receiver process may have started the guest
	why      string

	undo   *Dest // the machine before the last step, and that step's event: JournalFailed takes it again
	undoEv Event
}

// NewDest returns the destination side of a migration in Begin, for the epoch of the OPEN that created it. A
// receiver keeps one Dest per VM, the latest epoch's; it makes a new one only for an OPEN of a greater epoch
// than a terminal one's.
func NewDest(epoch uint64) *Dest {
	return &Dest{machine: machine{epoch: epoch, phase: Begin}}
}

// RestoreDest rebuilds the destination side from its last journal entry, when a receiver restarts, and
// returns what the driver must do first. After these, the driver delivers DestExited if the destination's
// process is gone.
//
//   - Prepare, Perform (journaled as Prepare): LOADED was never said, so no START can exist: tear down.
//   - Loaded: only the sender knows whether START was decided: wait for it (AwaitResolution), never reap.
//   - Finish: START was received and journaled: start the destination (again; `cont` is idempotent).
//   - RolledBack: the epoch was resolved to the source: make sure its destination is gone (ABORTED follows).
//   - Committed: terminal, nothing to do.
func RestoreDest(last Entry) (*Dest, []Action) {
	d := NewDest(last.Epoch)
	d.phase, d.journaled = last.Phase, last.Phase
	switch last.Phase {
	case Prepare, Perform:
		d.launched = true
		d.teardown("the receiver restarted before the destination loaded")
	case Loaded:
		d.launched = true
		d.emit(Action{Kind: AwaitResolution})
	case Finish:
		d.launched, d.restored = true, true
		d.emit(Action{Kind: StartDest})
	case RolledBack:
		d.launched = true
		d.why = "the receiver restarted after it resolved the epoch to the source"
		d.phase = RollingBack
		d.emit(Action{Kind: KillDest})
	}
	return d, d.out
}

// Phase is the phase the destination side is in.
func (d *Dest) Phase() Phase { return d.phase }

// Epoch is the migration's epoch.
func (d *Dest) Epoch() uint64 { return d.epoch }

// Step feeds one event and returns what the driver must do, in order (see the package doc).
func (d *Dest) Step(ev Event) []Action {
	if ev.Kind == JournalFailed {
		undo, again := d.undo, d.undoEv
		return d.retake(ev, func() bool {
			if undo != nil {
				*d = *undo
			}
			return undo != nil
		}, func() []Action { return d.Step(again) })
	}
	before := *d
	before.out, before.undo = nil, nil
	d.undo, d.undoEv = &before, ev
	d.out = nil
	if d.common(ev) {
		return d.out
	}
	d.dispatch(ev)
	return d.out
}

// dispatch hands ev to the phase's handler.
func (d *Dest) dispatch(ev Event) {
	switch d.phase {
	case Begin:
		d.begin(ev)
	case Prepare, Perform:
		d.beforeLoaded(ev)
	case Loaded:
		d.loadedPhase(ev)
	case Finish:
		d.finishPhase(ev)
	case Confirm:
		d.confirm(ev)
	case RollingBack:
		d.rollingBack(ev)
	default:
		d.terminal(ev)
	}
}

func isFrame(ev Event, f Frame) bool { return ev.Kind == Recv && ev.Frame == f }

func (d *Dest) begin(ev Event) {
	switch {
	case isFrame(ev, FrameOpen):
		if !d.journal(Prepare) {
			d.why = d.journalWhy("no destination was started")
			d.tornDown()
			return
		}
		d.emit(Action{Kind: LaunchDest})
		d.launched = true
		d.phase = Prepare
	case isFrame(ev, FrameAbort):
		d.journal(RolledBack)
		d.send(FrameAborted, "")
		d.finish(RolledBack, StatusRolledBack, because("aborted by the sender before OPEN", ev))
	case isFrame(ev, FrameStart):
		d.send(FrameError, "START for a migration this receiver never opened")
		d.unexpected(ev)
	case ev.Kind == PeerLost || ev.Kind == Timeout || ev.Kind == Stop:
		d.finish(RolledBack, StatusRolledBack, because("ended before OPEN ("+ev.Kind.String()+")", ev))
	default:
		d.unexpected(ev)
	}
}

// beforeLoaded handles Prepare (the destination starting) and Perform (the stream flowing): the sender cannot
// have decided START, so every failure tears the destination down.
func (d *Dest) beforeLoaded(ev Event) {
	switch {
	case ev.Kind == DestReady && d.phase == Prepare:
		d.send(FrameReady, "")
		d.phase = Perform
	case ev.Kind == DestLoaded && d.phase == Perform:
		if !d.journal(Loaded) {
			d.teardown(d.journalWhy("LOADED was not said"))
			return
		}
		d.send(FrameLoaded, "")
		d.phase = Loaded
	case isFrame(ev, FrameStreamEnd) && d.phase == Perform:
		// the data plane's: the rebuilder closes the destination's input
	case ev.Kind == DestExited:
		d.gone = true
		d.teardown(because("the destination QEMU exited", ev))
	case ev.Kind == DestFailed:
		d.teardown(because("the destination failed", ev))
	case isFrame(ev, FrameAbort):
		d.teardown(because("aborted by the sender", ev))
	case isFrame(ev, FrameStreamCancel):
		d.teardown(because("the source stream failed", ev))
	case isFrame(ev, FrameError):
		d.teardown(because("the sender gave up", ev))
	case ev.Kind == PeerLost:
		d.teardown(because("the connection to the sender was lost", ev))
	case ev.Kind == Timeout:
		d.teardown(because("timed out in "+d.phase.String(), ev))
	case ev.Kind == Stop:
		d.teardown("the receiver is stopping")
	case isFrame(ev, FrameStart):
		d.send(FrameError, "START before LOADED")
		d.unexpected(ev)
	default:
		d.unexpected(ev)
	}
}

// teardown resolves the epoch to the source: journal RolledBack first, so that no START of this epoch is
// ever obeyed again, then kill the destination; ABORTED follows once it is gone.
//
// Once Finish is journaled, only the record of RolledBack tells recover that the guest never ran here: without
// it the destination is kept as it is (paused: `cont` failed) and the VM left for recover.
func (d *Dest) teardown(why string) {
	d.why = why
	if !d.journal(RolledBack) && d.journaled >= Finish {
		d.finish(Unresolved, StatusUnresolved, d.journalWhy(why+"; the hand-back cannot be recorded, so the "+
			"destination is kept as it is; free the data directory and run `vmscatter recover`"))
		return
	}
	d.phase = RollingBack
	if d.launched && !d.gone {
		d.emit(Action{Kind: KillDest})
		return
	}
	d.tornDown()
}

func (d *Dest) tornDown() {
	d.send(FrameAborted, d.why)
	d.finish(RolledBack, StatusRolledBack, d.why)
}

func (d *Dest) loadedPhase(ev Event) {
	switch {
	case isFrame(ev, FrameStart):
		if !d.journal(Finish) {
			// The guest never ran here and the source holds the whole VM, paused: hand it back.
			d.teardown(d.journalWhy("the destination was not started"))
			return
		}
		d.emit(Action{Kind: StartDest})
		d.phase = Finish
	case isFrame(ev, FrameAbort):
		d.teardown(because("aborted by the sender", ev))
	case ev.Kind == DestExited:
		// Paused since it loaded, so its guest never ran: say so, and the sender takes the VM back.
		d.gone = true
		d.teardown(because("the destination QEMU exited while paused", ev))
	case isFrame(ev, FrameStreamEnd):
	case ev.Kind == PeerLost:
		d.emit(Action{Kind: AwaitResolution})
	case ev.Kind == Reconnected:
	case ev.Kind == Stop:
		// not a safe point: the sender's word is owed; the driver keeps waiting until it comes or Timeout
	case ev.Kind == Timeout:
		d.finish(Unresolved, StatusUnresolved, "loaded, but neither START nor ABORT came: the destination stays "+
			"paused; run `vmscatter recover`")
	default:
		d.unexpected(ev)
	}
}

func (d *Dest) finishPhase(ev Event) {
	switch {
	case ev.Kind == DestStarted && d.gone:
		d.finish(Unresolved, StatusUnresolved, "the destination started, then its QEMU exited: the VM ran there; "+
			"run `vmscatter recover`")
	case ev.Kind == DestStarted:
		d.send(FrameRunning, "")
		d.phase = Confirm
	case ev.Kind == DestFailed && d.restored:
		d.finish(Unresolved, StatusUnresolved, because("the destination cannot be started, and an earlier receiver "+
			"process may have started it", ev)+"; run `vmscatter recover`")
	case ev.Kind == DestFailed:
		// QEMU refused `cont`, or was gone before it: the guest never ran, so the VM can go back to the source.
		d.teardown(because("the destination could not start", ev))
	case ev.Kind == DestExited:
		// A notice of the exit; StartDest's own outcome says whether the guest may have run.
		d.gone = true
	case isFrame(ev, FrameStart), ev.Kind == PeerLost, ev.Kind == Reconnected, ev.Kind == Stop:
		// StartDest is under way; RUNNING follows
	case isFrame(ev, FrameAbort):
		d.refuseAbort(ev)
	case ev.Kind == Timeout && d.gone:
		d.finish(Unresolved, StatusUnresolved, "the destination QEMU exited after START: the VM may have run there; "+
			"run `vmscatter recover`")
	case ev.Kind == Timeout:
		d.finish(Unresolved, StatusUnresolved, "START received but the destination did not confirm it runs; run "+
			"`vmscatter recover`")
	default:
		d.unexpected(ev)
	}
}

func (d *Dest) refuseAbort(ev Event) {
	d.send(FrameError, "ABORT after START: the VM is the destination's")
	d.unexpected(ev)
}

func (d *Dest) confirm(ev Event) {
	switch {
	case isFrame(ev, FrameCommit):
		d.commit("")
	case isFrame(ev, FrameStart):
		d.send(FrameRunning, "")
	case ev.Kind == PeerLost || ev.Kind == Timeout || ev.Kind == Stop:
		d.commit("; COMMIT was not heard (" + ev.Kind.String() + ")")
	case ev.Kind == Reconnected:
	case ev.Kind == DestExited:
		d.gone = true
		d.finish(Unresolved, StatusUnresolved, because("the destination QEMU exited after it ran; the source's "+
			"copy is stale: run `vmscatter recover`", ev))
	case isFrame(ev, FrameAbort):
		d.refuseAbort(ev)
	default:
		d.unexpected(ev)
	}
}

func (d *Dest) commit(note string) {
	if !d.journal(Committed) {
		note += "; " + d.journalWhy("COMMIT is not recorded")
	}
	if note == "" {
		d.send(FrameDone, "")
	}
	d.finish(Committed, StatusMigrated, "the destination runs"+note)
}

func (d *Dest) rollingBack(ev Event) {
	switch {
	case ev.Kind == DestExited:
		d.gone = true
		d.tornDown()
	case ev.Kind == Timeout:
		d.finish(Unresolved, StatusUnresolved, "the destination did not exit after kill; it never ran and no "+
			"START of this epoch will be obeyed; run `vmscatter recover`")
	case ev.Kind == Recv && ev.Frame != FrameCommit, ev.Kind == PeerLost, ev.Kind == Reconnected, ev.Kind == Stop,
		ev.Kind == DestFailed, ev.Kind == DestReady, ev.Kind == DestLoaded:
		// the teardown is under way; ABORTED follows
	default:
		d.unexpected(ev)
	}
}

// terminal answers the sender's retries, so that a sender that lost the connection learns the outcome.
func (d *Dest) terminal(ev Event) {
	if ev.Kind != Recv {
		return
	}
	switch d.phase {
	case Committed:
		switch ev.Frame {
		case FrameStart:
			d.send(FrameRunning, "")
		case FrameCommit:
			d.send(FrameDone, "")
		case FrameAbort:
			d.refuseAbort(ev)
		default:
			d.unexpected(ev)
		}
	case RolledBack:
		switch ev.Frame {
		case FrameOpen, FrameStart, FrameAbort:
			d.send(FrameAborted, "this epoch was resolved to the source")
		case FrameStreamEnd, FrameStreamCancel:
		default:
			d.unexpected(ev)
		}
	default: // Unresolved
		switch ev.Frame {
		case FrameStart, FrameAbort, FrameCommit:
			// The word this side waited for, from the sender or from `vmscatter recover`: Unresolved is never
			// journaled, so the journal still says where the VM stands, and from there the word is obeyed as a
			// restarted receiver would obey it.
			if d.journaled >= Loaded && d.journaled <= Confirm && (ev.Frame != FrameCommit || d.journaled >= Finish) {
				d.phase, d.launched = d.journaled, true
				d.dispatch(ev)
				return
			}
			d.send(FrameError, "this receiver never loaded or started this epoch's destination: nothing to start, keep or confirm")
		}
		d.unexpected(ev)
	}
}
