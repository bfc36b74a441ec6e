package dest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/commit"
	"github.com/vmscatter/vmscatter/scatter/host"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// vmDriver is one VM on this receiver: the driver of its commit.Dest (the latest epoch's), kept across VM
// connections and receiver restarts (through the journal). The machine decides; the driver only carries out its
// actions and reports what happened as events.
//
// One goroutine at a time (loop) owns the machine, the destination QEMU and the VM's current connection, and
// carries out each step's actions in order. Everything else reaches it as a function on its events channel
// (post), run in the order posted:
//
//   - the readers of VM connections: a new connection (OPEN or ATTACH), its frames (commit.Received, with the
//     epoch the frame carries), its end (PeerLost), a failed stream (DestFailed);
//   - the destination's goroutines: the launch (DestReady, DestFailed), the load (DestLoaded, DestFailed), the
//     start (DestStarted, DestFailed) and the process's exit (DestExited);
//   - the timers (Timeout) and the receiver's shutdown (Stop).
//
// Events the loop raises itself (an outcome known at once) go to later, run before the next posted one.
//
// The loop runs while the VM needs it (a phase that is not terminal, a connection, an outcome pending) and ends
// when it is idle; the next post starts it again. The fields under "guarded by r.mu" are the Receiver's, the
// rest the loop's. actions.go has the QEMU actions, conn.go how connections reach the loop, restore.go the
// receiver's start (RestoreDest) and stop.
type vmDriver struct {
	r      *Receiver
	name   string
	dir    string // DATA-DIR/<vm>: the destination's files and the commit record
	log    *slog.Logger
	events chan func()

	// guarded by r.mu
	running bool // a loop goroutine runs
	queued  int  // posted and not yet run: the loop does not end while there are any
	atRest  bool // nothing under way that the receiver's shutdown must wait for (see resting)

	// owned by the loop
	later []func()

	d        *commit.Dest
	gen      uint64        // counts machines: an outcome of an earlier migration of the VM is dropped
	rec      record        // the last record journaled (or restored)
	open     *wire.OpenMsg // the OPEN of this migration; nil when restored or attached
	run      bool          // the source ran: StartDest `cont`s
	stopping bool          // Stop delivered: delivered again whenever the phase changes

	conn       *vmConn // the current connection: the machine's frames go to it
	answerTo   *vmConn // the connection a QUERY being answered came on
	streamConn *vmConn // the connection that carried OPEN, whose frames are the stream

	dest     *destination // the destination QEMU, while it is known to exist
	pid      int          // its pid, for READY, LOADED and RUNNING (also once it is let go)
	exitSeen bool         // DestExited delivered for this migration's destination (or for its absence)

	launching       context.CancelFunc // LaunchDest under way
	killAfterLaunch bool               // KillDest came while launching
	qc              net.Conn           // the destination's incoming socket, while the stream may flow
	stream          *rebuilder         // installed on streamConn from READY on
	load            *loadWatch         // the wait for the destination's load, from READY to its outcome
	streamEnded     bool               // STREAM_END heard: the load's own bound runs
	starting        bool               // StartDest under way
	started         qmp.RunState       // the destination's state StartDest confirmed
	console         *host.ConsoleWatch // DONE's first_output_unix_ms, when OPEN asked
	consoleStop     context.CancelFunc

	timer    *time.Timer
	timerTok uint64
	timerKey timerKey
}

// timerKey says which phase timer is armed: a new one is armed whenever the phase, the machine or whether an
// outcome is pending changes.
type timerKey struct {
	gen     uint64
	phase   commit.Phase
	pending bool
}

// vm returns the VM's driver, creating it (with no machine yet) if the receiver has none.
func (r *Receiver) vm(name string) *vmDriver {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.vms[name]
	if m == nil {
		m = &vmDriver{r: r, name: name, dir: filepath.Join(r.cfg.DataDir, name), log: r.log.With("vm", name),
			events: make(chan func(), 16), atRest: true}
		r.vms[name] = m
	}
	return m
}

// post hands f to the VM's loop, starting the loop if it is not running. After the receiver has shut down, f is
// dropped.
func (m *vmDriver) post(f func()) {
	r := m.r
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	m.queued++
	if !m.running {
		m.running = true
		r.loops++
		go m.loop()
	}
	r.mu.Unlock()
	m.events <- f // the loop runs until it has taken every queued function
}

func (m *vmDriver) loop() {
	r := m.r
	for {
		f := <-m.events
		f()
		for len(m.later) > 0 {
			g := m.later[0]
			m.later = m.later[1:]
			g()
		}
		m.settle()
		idle := m.idle()
		if idle {
			m.letGo()
		}
		r.mu.Lock()
		m.queued--
		m.atRest = m.resting()
		r.cond.Broadcast()
		if idle && m.queued == 0 {
			m.running = false
			r.loops--
			r.mu.Unlock()
			return
		}
		r.mu.Unlock()
	}
}

func (m *vmDriver) raise(f func()) { m.later = append(m.later, f) }

// pending reports whether a QEMU action's outcome is awaited: the phase's Timeout waits for it (each action has a
// bound of its own). KillDest is not one: the RollingBack phase's Timeout is its bound.
func (m *vmDriver) pending() bool {
	return m.launching != nil || m.starting || (m.load != nil && m.streamEnded)
}

// idle reports whether the loop may end: no connection, nothing under way, and a machine that needs no watching
// (terminal, or Loaded while the receiver stops: the destination stays paused for a later receiver).
func (m *vmDriver) idle() bool {
	if m.conn != nil || m.launching != nil || m.starting || m.load != nil {
		return false
	}
	return m.d == nil || m.d.Phase().Terminal() || (m.stopping && m.d.Phase() == commit.Loaded)
}

// resting reports whether the receiver's shutdown may leave the VM as it is: terminal, or Loaded with nothing
// under way (a restarted receiver restores it and waits on; it never reaps it).
func (m *vmDriver) resting() bool {
	if m.d == nil || m.d.Phase().Terminal() {
		return true
	}
	return m.d.Phase() == commit.Loaded && !m.pending() && m.load == nil
}

// letGo ends what the loop holds when it goes idle: timers, the console watch, the destination (left as it is).
func (m *vmDriver) letGo() {
	m.stopTimer()
	m.timerKey = timerKey{}
	if m.consoleStop != nil {
		m.consoleStop()
		m.consoleStop, m.console = nil, nil
	}
	m.releaseDest()
}

func (m *vmDriver) releaseDest() {
	if m.dest != nil {
		m.dest.release()
		m.dest = nil
	}
}

// step feeds one event to the machine and carries out its actions.
func (m *vmDriver) step(ev commit.Event) {
	before := m.d.Phase()
	acts := m.d.Step(ev)
	for failed, ok := m.carryOut(acts); ok; failed, ok = m.carryOut(acts) {
		acts = m.d.Step(failed) // the step taken again without the journal: the failed one never happened
	}
	after := m.d.Phase()
	m.log.Debug("commit step", "event", ev.String(), "from", before.String(), "to", after.String(), "actions", len(acts))
	if after != before {
		m.entered(after)
	}
}

// entered does what the driver owes a phase it enters: the stream ends with Prepare and Perform, the destination
// is let go in a terminal phase, and Stop is delivered again to a machine that stops.
func (m *vmDriver) entered(p commit.Phase) {
	if p != commit.Prepare && p != commit.Perform {
		m.closeStream()
	}
	if p.Terminal() {
		m.releaseDest()
		return
	}
	if m.stopping {
		gen := m.gen
		m.raise(func() {
			if gen == m.gen && m.d.Phase() == p {
				m.step(commit.Event{Kind: commit.Stop})
			}
		})
	}
}

// carryOut carries out a step's actions in order. A journal entry is durable before the next action starts; one
// that cannot be written ends the step there (what follows it must not happen unjournaled), and carryOut returns
// JournalFailed, to be stepped at once.
func (m *vmDriver) carryOut(acts []commit.Action) (commit.Event, bool) {
	for _, a := range acts {
		switch a.Kind {
		case commit.Journal:
			if err := m.journal(a.Entry); err != nil {
				m.log.Error("journal write failed: the rest of the step is not carried out", "entry", a.Entry.String(), "err", err)
				return commit.Event{Kind: commit.JournalFailed, Reason: "the receiver's data directory: " + err.Error()}, true
			}
		case commit.Send:
			m.send(a)
		case commit.LaunchDest:
			m.launch()
		case commit.StartDest:
			m.startDest()
		case commit.KillDest:
			m.killDest()
		case commit.AwaitResolution:
			m.log.Info("loaded and the sender is gone: the destination stays paused until the sender or `vmscatter recover` " +
				"says START or ABORT")
		case commit.Report:
			lvl := slog.LevelWarn
			if a.Status == commit.StatusMigrated {
				lvl = slog.LevelInfo
			}
			m.log.Log(context.Background(), lvl, "migration ended", "status", string(a.Status), "reason", a.Reason)
		case commit.Answer:
			m.answer(a.Entry)
		case commit.ProtocolError:
			m.log.Warn("protocol error: ignored", "reason", a.Reason, "phase", m.d.Phase().String())
		default:
			m.log.Error("a source action reached the receiver's driver", "action", a.String())
		}
	}
	return commit.Event{}, false
}

func (m *vmDriver) journal(e commit.Entry) error {
	rec := record{Phase: e.Phase.String(), Epoch: e.Epoch, Run: m.run, Updated: time.Now().UTC()}
	if m.open != nil {
		rec.Session = m.open.Session
	} else {
		rec.Session = m.rec.Session
	}
	if err := putRecord(m.dir, rec); err != nil {
		return err
	}
	m.rec = rec
	return nil
}

// send writes the action's frame, with its epoch, on the current connection; with none it is dropped (the sender
// retries and every answer is given again).
func (m *vmDriver) send(a commit.Action) {
	c := m.conn
	if c == nil {
		m.log.Debug("no connection: frame dropped", "frame", a.Frame.String())
		return
	}
	var t wire.FrameType
	var v any
	switch a.Frame {
	case commit.FrameReady:
		t, v = wire.FrameReady, wire.ReadyMsg{Epoch: a.Epoch, PID: m.pid}
	case commit.FrameLoaded:
		t, v = wire.FrameLoaded, wire.RunningMsg{Epoch: a.Epoch, Status: string(qmp.RunStatePaused), PID: m.pid}
	case commit.FrameRunning:
		st := string(m.started)
		if st == "" { // restored past StartDest: ask
			st = m.destState()
		}
		t, v = wire.FrameRunning, wire.RunningMsg{Epoch: a.Epoch, Status: st, PID: m.pid}
	case commit.FrameDone:
		done := wire.DoneMsg{Epoch: a.Epoch}
		if m.console != nil {
			if first := m.console.FirstLine(3 * time.Second); !first.IsZero() {
				done.FirstOutputUnixMS = first.UnixMilli()
			}
			m.consoleStop()
			m.console, m.consoleStop = nil, nil
		}
		t, v = wire.FrameDone, done
	case commit.FrameAborted:
		t, v = wire.FrameAborted, wire.ErrorMsg{Epoch: a.Epoch, Error: a.Reason}
	case commit.FrameError:
		t, v = wire.FrameError, wire.ErrorMsg{Epoch: a.Epoch, Error: a.Reason}
	default:
		m.log.Error("the machine asked to send a frame the receiver does not send", "frame", a.Frame.String())
		return
	}
	if err := c.send(t, v); err != nil {
		m.log.Warn("sending to the sender failed: closing the connection", "frame", t.String(), "err", err)
		c.sc.Close() // its reader delivers PeerLost
	}
}

// answer replies to QUERY with STATE: the receiver's last journal entry for the VM (what recover decides on) and
// the destination QEMU's run state.
func (m *vmDriver) answer(e commit.Entry) {
	c := m.conn
	if m.answerTo != nil {
		c = m.answerTo
	}
	if c == nil {
		return
	}
	st := wire.StateMsg{Epoch: m.rec.Epoch, Phase: m.rec.Phase, Dest: m.destState()}
	m.log.Info("QUERY answered", "journal", st.Phase, "epoch", st.Epoch, "dest", st.Dest, "machine", e.String())
	if err := c.send(wire.FrameState, st); err != nil {
		c.sc.Close()
	}
}

func (m *vmDriver) destState() string {
	if m.dest != nil {
		return m.dest.runState()
	}
	if m.launching != nil {
		return "starting"
	}
	return runStateIn(m.dir)
}

// settle arms the phase's timer: the phase's bound, counted while no outcome is pending.
func (m *vmDriver) settle() {
	if m.d == nil {
		return
	}
	key := timerKey{gen: m.gen, phase: m.d.Phase(), pending: m.pending()}
	if key == m.timerKey {
		return
	}
	m.timerKey = key
	m.stopTimer()
	if key.phase.Terminal() || key.pending {
		return
	}
	m.armTimer(m.r.bounds.of(key.phase))
}

func (m *vmDriver) armTimer(d time.Duration) {
	m.timerTok++
	tok := m.timerTok
	m.timer = time.AfterFunc(d, func() { m.post(func() { m.timeout(tok) }) })
}

func (m *vmDriver) stopTimer() {
	if m.timer != nil {
		m.timer.Stop()
		m.timer = nil
	}
	m.timerTok++
}

func (m *vmDriver) timeout(tok uint64) {
	if tok != m.timerTok || m.d == nil {
		return
	}
	p := m.d.Phase()
	bound := m.r.bounds.of(p)
	if p == commit.Perform && !m.streamEnded && m.streamConn != nil {
		// Perform's bound counts from the sender's last frame: the stream may wait for the prime.
		if idle := m.streamConn.idle(); idle < bound {
			m.armTimer(bound - idle)
			return
		}
	}
	m.timerKey = timerKey{} // armed again if the phase stays
	m.step(commit.Event{Kind: commit.Timeout, Reason: fmt.Sprintf("%v for %v", p, bound)})
}

// stop delivers Stop: the receiver is shutting down.
func (m *vmDriver) stop() {
	m.stopping = true
	if m.d != nil && !m.d.Phase().Terminal() {
		m.step(commit.Event{Kind: commit.Stop})
	}
}
