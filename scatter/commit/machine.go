package commit

import (
	"fmt"
	"slices"
)

// machine is what both sides share: the epoch, the phase, and the actions of the step being taken.
type machine struct {
	epoch     uint64
	phase     Phase
	journaled Phase // the last phase this side journaled: what a restart, or recover, finds
	out       []Action
	// noJournal says why this side's journal cannot be written, once a Journal failed ("" while it can). From
	// then on the machine journals nothing: it takes no step that needs a record (see journal) and takes the
	// others unrecorded.
	noJournal string
}

func (m *machine) emit(a Action) { m.out = append(m.out, a) }

// journal records that this side reached p: the driver makes it durable before the actions that follow. It
// reports false once the journal cannot be written. A step that the journal must guard (the source's OPEN,
// migrate and START; the destination's launch, LOADED and `cont`: each one that a restart or recover must know
// of to keep the VM running once) is then not taken, and the side goes back to the source instead. The others
// (resuming a source whose destination is gone, quitting one whose destination runs, committing) are as safe
// unrecorded: recover finds the VM where the peer's journal and the QEMUs say it is.
func (m *machine) journal(p Phase) bool {
	if m.noJournal != "" {
		return false
	}
	m.journaled = p
	m.emit(Action{Kind: Journal, Entry: Entry{p, m.epoch}})
	return true
}

// retake answers JournalFailed. The driver carried out the last step's actions up to its Journal and none after
// it. The machine goes back to the state before that step (undo), marks its journal broken, and takes the step
// again (redo), which no longer journals; of its actions, those the driver already carried out are dropped.
func (m *machine) retake(ev Event, undo func() bool, redo func() []Action) []Action {
	done := slices.IndexFunc(m.out, func(a Action) bool { return a.Kind == Journal })
	first := slices.Clone(m.out)
	if done < 0 || !undo() {
		m.out = nil
		m.unexpected(ev)
		return m.out
	}
	m.noJournal = because("the journal could not be written", ev)
	out := redo()
	if len(out) < done || !slices.Equal(out[:done], first[:done]) {
		panic(fmt.Sprintf("commit: a step taken again began differently: %v, then %v", first, out))
	}
	return out[done:]
}

// journalWhy is the reason a step the journal must guard was not taken.
func (m *machine) journalWhy(what string) string { return m.noJournal + ": " + what }

func (m *machine) send(f Frame, reason string) {
	m.emit(Action{Kind: Send, Frame: f, Epoch: m.epoch, Reason: reason})
}

// finish enters a terminal phase and reports the outcome.
func (m *machine) finish(p Phase, st Status, reason string) {
	m.phase = p
	m.emit(Action{Kind: Report, Status: st, Reason: reason})
}

func (m *machine) unexpected(ev Event) {
	r := fmt.Sprintf("unexpected %s in %v", ev.Name(), m.phase)
	if ev.Reason != "" {
		r += ": " + ev.Reason
	}
	m.emit(Action{Kind: ProtocolError, Reason: r})
}

// common handles what every phase does alike: it answers Query, and it ignores a frame of another epoch (a
// delayed frame of an earlier attempt, or a confused peer), so that no frame ever acts on a migration it does
// not belong to. It reports whether it handled ev.
func (m *machine) common(ev Event) bool {
	switch {
	case ev.Kind == Query:
		m.emit(Action{Kind: Answer, Entry: Entry{m.phase, m.epoch}})
		return true
	case ev.Kind == Recv && ev.Epoch != m.epoch:
		m.emit(Action{Kind: ProtocolError, Reason: fmt.Sprintf("%s of epoch %d ignored: this migration is epoch %d",
			ev.Frame, ev.Epoch, m.epoch)})
		return true
	}
	return false
}

// because joins a fixed cause with the event's own reason, if it has one.
func because(what string, ev Event) string {
	if ev.Reason == "" {
		return what
	}
	return what + ": " + ev.Reason
}
