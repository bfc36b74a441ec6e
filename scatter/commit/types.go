package commit

import (
	"fmt"
	"strconv"
)

// Phase is where one side of one VM's migration stands. The names are libvirt's migration phases; the last
// three are terminal.
type Phase uint8

const (
	Begin       Phase = iota // source: inventoried, nothing sent; destination: nothing heard
	Prepare                  // OPEN sent; the destination starts paused (-incoming defer, late-block-activate)
	Perform                  // the stream flows
	Loaded                   // the destination holds the whole VM, paused; the source migration completed
	Finish                   // START decided (source) or received (destination): the destination may run
	Confirm                  // RUNNING sent or heard: the source QEMU quits
	RollingBack              // the source takes the VM back: the destination is being torn down
	Committed                // terminal: the VM is the destination's and the source QEMU has quit
	RolledBack               // terminal: the VM is the source's and no destination of this epoch exists
	Unresolved               // terminal: this side could not settle the VM alone; `vmscatter recover` will
)

// Phases lists every phase in order.
var Phases = []Phase{Begin, Prepare, Perform, Loaded, Finish, Confirm, RollingBack, Committed, RolledBack, Unresolved}

var phaseNames = [...]string{"Begin", "Prepare", "Perform", "Loaded", "Finish", "Confirm", "RollingBack",
	"Committed", "RolledBack", "Unresolved"}

func (p Phase) String() string {
	if int(p) < len(phaseNames) {
		return phaseNames[p]
	}
	return "Phase(" + strconv.Itoa(int(p)) + ")"
}

// Terminal reports whether the phase is one a machine never leaves.
func (p Phase) Terminal() bool { return p >= Committed }

// ParsePhase is the inverse of Phase.String.
func ParsePhase(s string) (Phase, bool) {
	for i, n := range phaseNames {
		if n == s {
			return Phase(i), true
		}
	}
	return 0, false
}

// Frame is a control frame of the VM connection that the commit protocol reads or writes. The stream's own
// frames (PREFIX, PAGES, TAIL, RETURN_PATH, ...) are the pump's and the rebuilder's, not the machines'. Every
// frame here carries the epoch of the migration it belongs to.
type Frame uint8

const (
	FrameOpen         Frame = iota + 1 // S→R: start a destination for this VM and epoch
	FrameReady                         // R→S: the destination runs paused and waits for the stream
	FrameStreamEnd                     // S→R: the source closed its stream (sent by the pump, after the last byte)
	FrameStreamCancel                  // S→R: the source stream failed (read as ABORT before LOADED; the machines send ABORT)
	FrameLoaded                        // R→S: the destination loaded the whole stream and is paused
	FrameStart                         // S→R: the destination may run (the source journaled Finish first)
	FrameRunning                       // R→S: the destination runs (or stays paused, as the source was)
	FrameCommit                        // S→R: the source QEMU has quit
	FrameDone                          // R→S: COMMIT journaled
	FrameAbort                         // S→R: the source takes the VM back: tear the destination down
	FrameAborted                       // R→S: the destination of this epoch is gone and never ran (new in this protocol)
	FrameError                         // either way: a refusal; it changes no ownership by itself
)

var frameNames = [...]string{"", "OPEN", "READY", "STREAM_END", "STREAM_CANCEL", "LOADED", "START", "RUNNING",
	"COMMIT", "DONE", "ABORT", "ABORTED", "ERROR"}

func (f Frame) String() string {
	if f > 0 && int(f) < len(frameNames) {
		return frameNames[f]
	}
	return "Frame(" + strconv.Itoa(int(f)) + ")"
}

// EventKind says what happened.
type EventKind uint8

const (
	// The connection and the driver.
	Recv        EventKind = iota + 1 // a control frame arrived (Event.Frame, Event.Epoch)
	Connected                        // source: the VM connection to the target is up; begin
	Reconnected                      // the peer is back after PeerLost: source redialled it, or the destination was redialled
	PeerLost                         // the VM connection broke (or could not be made)
	Timeout                          // the time the driver allows for the current phase ran out
	Stop                             // the operator asked this process to stop (SIGTERM, SIGHUP): stop at a safe point
	Query                            // someone (`vmscatter recover`, `status`) asks where the VM stands
	// JournalFailed: the last step's Journal action could not be made durable (a full disk, an I/O error), and the
	// driver carried out none of the actions after it. The driver delivers it at once, before any other event.
	JournalFailed

	// The source QEMU, on the source host.
	SrcActive    // the source migration is active (it connected to the driver's socket)
	SrcCompleted // the source migration completed: the whole stream was written, the VM is stopped
	SrcFailed    // the source migration failed (also: `migrate` refused)
	SrcCancelled // the source migration was cancelled
	SrcRunning   // after the migration ended (or after `cont`): the source VM left finish-migrate and runs
	SrcPaused    // after the migration ended: the source VM left finish-migrate and is paused (postmigrate)
	SrcExited    // the source QEMU process is gone
	SrcRefused   // the source QEMU refused a command the machine asked for (cont, quit, migrate_cancel)
	StreamFailed // the driver's pump failed on the source stream (the source migration may still be active)

	// The destination QEMU, on the target host.
	DestReady   // the destination runs paused with migrate-incoming set and its socket connected
	DestLoaded  // the destination's incoming migration completed: it holds the whole VM, paused
	DestStarted // after StartDest: the destination is as the source was (running, or paused if the source was)
	DestFailed  // the destination refused a command or the stream, and its guest did not run
	DestExited  // the destination QEMU process is gone
)

var eventNames = [...]string{"", "Recv", "Connected", "Reconnected", "PeerLost", "Timeout", "Stop", "Query", "JournalFailed",
	"SrcActive", "SrcCompleted", "SrcFailed", "SrcCancelled", "SrcRunning", "SrcPaused", "SrcExited", "SrcRefused",
	"StreamFailed", "DestReady", "DestLoaded", "DestStarted", "DestFailed", "DestExited"}

func (k EventKind) String() string {
	if k > 0 && int(k) < len(eventNames) {
		return eventNames[k]
	}
	return "EventKind(" + strconv.Itoa(int(k)) + ")"
}

// Event is one input to a machine.
type Event struct {
	Kind   EventKind
	Frame  Frame  // Recv: which frame
	Epoch  uint64 // Recv: the epoch the frame carries
	Reason string // failures, ABORT and ERROR texts: for the report and the log
}

// Received is the event for a frame that arrived.
func Received(f Frame, epoch uint64, reason string) Event {
	return Event{Kind: Recv, Frame: f, Epoch: epoch, Reason: reason}
}

// Name is the event's kind, or the frame's name for Recv: what the phase tables are keyed by.
func (e Event) Name() string {
	if e.Kind == Recv {
		return e.Frame.String()
	}
	return e.Kind.String()
}

func (e Event) String() string {
	s := e.Name()
	if e.Kind == Recv {
		s += " e=" + strconv.FormatUint(e.Epoch, 10)
	}
	if e.Reason != "" {
		s += " " + strconv.Quote(e.Reason)
	}
	return s
}

// SourceEvents lists one event of every kind the source side can see, frames without their epoch.
func SourceEvents() []Event {
	return withFrames([]EventKind{Connected, Reconnected, PeerLost, Timeout, Stop, Query, JournalFailed, SrcActive, SrcCompleted,
		SrcFailed, SrcCancelled, SrcRunning, SrcPaused, SrcExited, SrcRefused, StreamFailed},
		FrameReady, FrameLoaded, FrameRunning, FrameDone, FrameAborted, FrameError)
}

// DestEvents lists one event of every kind the destination side can see, frames without their epoch.
func DestEvents() []Event {
	return withFrames([]EventKind{Reconnected, PeerLost, Timeout, Stop, Query, JournalFailed, DestReady, DestLoaded, DestStarted,
		DestFailed, DestExited},
		FrameOpen, FrameStreamEnd, FrameStreamCancel, FrameStart, FrameCommit, FrameAbort, FrameError)
}

func withFrames(kinds []EventKind, frames ...Frame) []Event {
	var out []Event
	for _, f := range frames {
		out = append(out, Event{Kind: Recv, Frame: f})
	}
	for _, k := range kinds {
		out = append(out, Event{Kind: k})
	}
	return out
}

// ActionKind says what the driver must do.
type ActionKind uint8

const (
	// Journal: make Entry durable (write and fsync) before carrying out any later action of the same Step. If it
	// cannot, carry out none of them and deliver JournalFailed at once.
	Journal ActionKind = iota + 1
	// Send: write Frame, with Epoch and Reason, on the VM connection. With no connection the driver drops it: the
	// source retries after Reconnected and the destination answers every retry again.
	Send
	// StartSourceMigration (source): remember the source's migration capabilities, parameters and vCPU affinity,
	// set the policy's, and `migrate` into the driver's socket; pump the stream. Outcome: SrcActive, SrcFailed.
	StartSourceMigration
	// CancelSourceMigration (source): stop pumping and `migrate_cancel`. Outcome: the migration's end status
	// (SrcCancelled, SrcFailed or SrcCompleted), then SrcRunning or SrcPaused once the VM left finish-migrate.
	CancelSourceMigration
	// RestoreSource (source): put back the capabilities, parameters and vCPU affinity StartSourceMigration
	// remembered. Best effort, no outcome event.
	RestoreSource
	// ResumeSource (source): `cont` the source VM. Outcome: SrcRunning, or SrcRefused.
	ResumeSource
	// QuitSource (source): `quit` the source QEMU, SIGKILL it if it has not exited after a grace period.
	// Outcome: SrcExited, or SrcRefused if it could not be made to exit.
	QuitSource
	// LaunchDest (destination): start the destination paused from the source's command line with -S, -incoming
	// defer and late-block-activate, set the source's capabilities, migrate-incoming, connect its socket.
	// Outcome: DestReady, DestFailed or DestExited.
	LaunchDest
	// StartDest (destination): `cont` the destination if the source ran (else leave it paused) and confirm its
	// status. Outcome: DestStarted; DestFailed if QEMU refused `cont` or was gone before it was sent (the guest
	// did not run); only DestExited if the QEMU exited while `cont` may have reached it (the machine then ends
	// Unresolved at the phase's Timeout).
	StartDest
	// KillDest (destination): kill the destination QEMU and reap it. Outcome: DestExited.
	KillDest
	// Reconnect (source): dial the receiver again for this VM and epoch; deliver Reconnected when the connection
	// is back (or Timeout when the phase's time is up).
	Reconnect
	// AwaitResolution (destination): the sender was lost while the destination is Loaded: only the sender (or
	// `vmscatter recover`) knows whether START was decided. Keep the destination paused and keep accepting the
	// sender's connection for this VM; its START or ABORT of this epoch is the answer. Never reap it meanwhile.
	AwaitResolution
	// Report: the machine reached a terminal phase; Status and Reason are its outcome.
	Report
	// Answer: reply to Query with Entry (the phase and epoch).
	Answer
	// ProtocolError: the event was not expected in this phase; it was ignored and nothing changed. Log Reason.
	ProtocolError
)

var actionNames = [...]string{"", "journal", "send", "start-source-migration", "cancel-source-migration",
	"restore-source", "resume-source", "quit-source", "launch-dest", "start-dest", "kill-dest", "reconnect",
	"await-resolution", "report", "answer", "protocol-error"}

func (k ActionKind) String() string {
	if k > 0 && int(k) < len(actionNames) {
		return actionNames[k]
	}
	return "ActionKind(" + strconv.Itoa(int(k)) + ")"
}

// Status is a VM's outcome, as the report gives it.
type Status string

// Outcomes.
const (
	StatusMigrated   Status = "migrated"    // runs on its target; the source QEMU has quit
	StatusRolledBack Status = "rolled_back" // the source VM runs on (or is paused, as it was) at the source
	StatusFailed     Status = "failed"      // the VM was lost through no decision of ours (a QEMU died)
	StatusUnresolved Status = "unresolved"  // left for `vmscatter recover`; Reason says what is known
)

// Entry is one journal record: the phase a side reached for a VM, and the migration's epoch.
type Entry struct {
	Phase Phase
	Epoch uint64
}

func (e Entry) String() string { return fmt.Sprintf("%v e=%d", e.Phase, e.Epoch) }

// Action is one output of a machine.
type Action struct {
	Kind   ActionKind
	Entry  Entry  // Journal, Answer
	Frame  Frame  // Send
	Epoch  uint64 // Send
	Status Status // Report
	Reason string // Send (ABORT, ABORTED, ERROR), Report, ProtocolError
}

func (a Action) String() string {
	s := a.Kind.String()
	switch a.Kind {
	case Journal, Answer:
		s += " " + a.Entry.String()
	case Send:
		s += fmt.Sprintf(" %v e=%d", a.Frame, a.Epoch)
	case Report:
		s += " " + string(a.Status)
	}
	if a.Reason != "" {
		s += " " + strconv.Quote(a.Reason)
	}
	return s
}
