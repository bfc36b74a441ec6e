package commit

import "fmt"

// machine is what both sides share: the epoch, the phase, and the actions of the step being taken.
type machine struct {
	epoch     uint64
	phase     Phase
	journaled Phase // the last phase this side journaled: what a restart, or recover, finds
	out       []Action
}

func (m *machine) emit(a Action) { m.out = append(m.out, a) }

// journal records that this side reached p: the driver makes it durable before the actions that follow.
func (m *machine) journal(p Phase) {
	m.journaled = p
	m.emit(Action{Kind: Journal, Entry: Entry{p, m.epoch}})
}

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
