package dest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	"github.com/vmscatter/vmscatter/qemu"
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
// rest the loop's.
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
	pid      int          // its pid, kept for RUNNING and DONE after it is let go
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

type loadWatch struct {
	cancel context.CancelCauseFunc
	timer  *time.Timer // the load's bound, from STREAM_END
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
	after := m.d.Phase()
	m.log.Debug("commit step", "event", ev.String(), "from", before.String(), "to", after.String(), "actions", len(acts))
	m.carryOut(acts)
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
// that cannot be written ends the step there (what follows it must not happen unjournaled), and the failure is
// delivered as DestFailed.
func (m *vmDriver) carryOut(acts []commit.Action) {
	for _, a := range acts {
		switch a.Kind {
		case commit.Journal:
			if err := m.journal(a.Entry); err != nil {
				m.log.Error("journal write failed: the rest of the step is not carried out", "entry", a.Entry.String(), "err", err)
				gen := m.gen
				m.raise(func() {
					if gen == m.gen {
						m.step(failed("the receiver's journal: " + err.Error()))
					}
				})
				return
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

// launch carries out LaunchDest on a goroutine of its own; its outcome comes back through launched.
func (m *vmDriver) launch() {
	if m.open == nil {
		m.raise(func() { m.step(failed("no OPEN to start a destination from")) })
		return
	}
	argv, err := m.r.destinationCommandLine(m.open.Argv, m.dir)
	if err != nil {
		m.raise(func() { m.step(failed("the destination's command line: " + err.Error())) })
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.launching = cancel
	m.exitSeen = false
	gen, caps, dir := m.gen, m.open.Capabilities, m.dir
	go func() {
		h, qc, err := launchDestination(ctx, argv, caps, dir)
		m.post(func() { m.launched(gen, h, qc, err) })
	}()
}

func (m *vmDriver) launched(gen uint64, h *destination, qc net.Conn, err error) {
	if gen != m.gen { // never: a machine with a launch under way is not terminal, so not replaced
		if h != nil {
			h.kill()
		}
		return
	}
	m.launching = nil
	if h != nil {
		m.pid = h.pid
		m.watch(h)
	}
	if m.killAfterLaunch {
		m.killAfterLaunch = false
		if qc != nil {
			qc.Close()
		}
		m.killDest()
		return
	}
	if err != nil {
		m.step(failed("starting the destination: " + err.Error()))
		return
	}
	m.log.Info("destination started", "pid", h.pid, "dir", m.dir)
	m.qc = qc
	if c := m.streamConn; c != nil {
		m.stream = newRebuilder(qc, c.store, m.r.cfg.RefWait)
		c.setStream(m.stream)
		go relayReturnPath(qc, c)
	}
	m.watchLoad(h)
	m.step(commit.Event{Kind: commit.DestReady})
}

// watch makes h the VM's destination and delivers DestExited when its process ends.
func (m *vmDriver) watch(h *destination) {
	m.dest = h
	go func() {
		select {
		case <-h.exited:
			m.post(func() { m.exited(h) })
		case <-h.rel:
		}
	}()
}

func (m *vmDriver) exited(h *destination) {
	if h != m.dest {
		return
	}
	why := h.exitError()
	m.releaseDest()
	m.exitSeen = true
	m.log.Info("destination QEMU exited", "pid", h.pid, "reason", why)
	m.step(commit.Event{Kind: commit.DestExited, Reason: why})
}

// watchLoad waits for the destination's incoming migration from READY on: a failure mid-stream is seen at once.
// Its own bound (LoadTimeout) runs from STREAM_END.
func (m *vmDriver) watchLoad(h *destination) {
	ctx, cancel := context.WithCancelCause(context.Background())
	lw := &loadWatch{cancel: cancel}
	m.load = lw
	gen := m.gen
	go func() {
		ev, ok := h.waitLoaded(ctx)
		m.post(func() { m.loadDone(gen, lw, ev, ok) })
	}()
}

func (m *vmDriver) loadDone(gen uint64, lw *loadWatch, ev commit.Event, ok bool) {
	lw.cancel(nil)
	if lw.timer != nil {
		lw.timer.Stop()
	}
	if gen != m.gen || lw != m.load {
		return
	}
	m.load = nil
	if !ok {
		return // the process exited: DestExited says so
	}
	if ev.Kind == commit.DestLoaded {
		m.log.Info("destination loaded the stream", "pid", m.pid)
	}
	m.step(ev)
}

// streamEnd starts the load's own bound when STREAM_END arrives on the stream's connection.
func (m *vmDriver) streamEnd() {
	if m.streamEnded || m.load == nil {
		return
	}
	m.streamEnded = true
	lw := m.load
	lw.timer = time.AfterFunc(m.r.bounds.Load, func() { lw.cancel(errLoadTimeout) })
}

func (m *vmDriver) streamFailed(rb *rebuilder, err error) {
	if rb != m.stream {
		return
	}
	m.closeStream()
	m.step(failed("the stream: " + err.Error()))
}

// closeStream ends the stream and the wait for the load, if they are under way.
func (m *vmDriver) closeStream() {
	if m.stream != nil && m.streamConn != nil {
		m.streamConn.setStream(nil)
	}
	m.stream = nil
	if m.qc != nil {
		m.qc.Close()
		m.qc = nil
	}
	if lw := m.load; lw != nil {
		m.load = nil
		lw.cancel(errTornDown)
		if lw.timer != nil {
			lw.timer.Stop()
		}
	}
}

// startDest carries out StartDest on a goroutine; its outcome comes back through startDone.
func (m *vmDriver) startDest() {
	h := m.dest
	if h == nil {
		m.raise(func() { m.step(failed("the destination QEMU is gone")) })
		return
	}
	if m.open != nil && m.open.WatchConsole && m.console == nil {
		if argv, err := qemu.RewriteCommandLine(m.open.Argv, m.dir); err == nil {
			if path := qemu.SerialLogPath(argv); path != "" {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				m.console, m.consoleStop = host.WatchConsole(ctx, path), cancel
			}
		}
	}
	m.starting = true
	gen, run := m.gen, m.run
	go func() {
		ev, st, ok := h.start(run)
		m.post(func() { m.startDone(gen, ev, st, ok) })
	}()
}

func (m *vmDriver) startDone(gen uint64, ev commit.Event, st qmp.RunState, ok bool) {
	if gen != m.gen {
		return
	}
	m.starting = false
	if !ok {
		m.log.Warn("START's outcome is unknown: `cont` may have reached the destination", "reason", ev.Reason)
		return
	}
	if ev.Kind == commit.DestStarted {
		m.started = st
		m.log.Info("destination started as the source was", "state", string(st), "pid", m.pid)
	}
	m.step(ev)
}

// killDest carries out KillDest: its outcome is the DestExited of the process's exit watch, or, with no process,
// at once.
func (m *vmDriver) killDest() {
	switch {
	case m.launching != nil:
		m.launching()
		m.killAfterLaunch = true
	case m.dest != nil:
		m.log.Info("killing the destination", "pid", m.dest.pid)
		m.dest.kill()
	case !m.exitSeen:
		m.exitSeen = true
		gen := m.gen
		m.raise(func() {
			if gen == m.gen {
				m.step(commit.Event{Kind: commit.DestExited, Reason: "no destination process"})
			}
		})
	}
	m.closeStream()
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

// opened handles a connection that starts with OPEN: a new migration, or the same one's OPEN again.
func (m *vmDriver) opened(c *vmConn, open *wire.OpenMsg) {
	if m.r.isStopping() {
		c.refuse(open.Epoch, "the receiver is stopping")
		return
	}
	if m.d == nil || m.d.Epoch() != open.Epoch || m.d.Phase() == commit.Begin {
		if m.d == nil || m.d.Epoch() != open.Epoch {
			if why := m.cannotReplace(open.Epoch); why != "" {
				m.log.Warn("OPEN refused", "epoch", open.Epoch, "peer", c.peer, "reason", why)
				c.refuse(open.Epoch, why)
				return
			}
			m.takeConn(c)
			m.reset(commit.NewDest(open.Epoch))
			c.gen = m.gen
		} else { // an ATTACH made it in Begin
			if why := m.runsHere(); why != "" {
				c.refuse(open.Epoch, why)
				return
			}
			c.gen = m.gen
			m.takeConn(c)
		}
		m.open, m.run, m.streamConn = open, open.Run, c
		m.log = m.r.log.With("vm", m.name, "epoch", open.Epoch)
		m.log.Info("OPEN", "peer", c.peer, "session", open.Session.String())
	} else {
		c.gen = m.gen
		m.takeConn(c) // the same migration's OPEN again: the machine says what it means in its phase
	}
	m.step(commit.Received(commit.FrameOpen, open.Epoch, ""))
}

// attached handles a connection that starts with ATTACH: frames for a known migration follow. An epoch the
// receiver has no machine of gets one in Begin, so that ABORT is answered and START refused.
//
// An ATTACH beside a current connection does not take the VM over at once: a QUERY (`vmscatter recover` looking)
// is answered on it and changes nothing; its first other frame (the sender's START, ABORT or COMMIT after it lost
// its connection) makes it the VM's connection, and the earlier one is lost.
func (m *vmDriver) attached(c *vmConn, epoch uint64) {
	if m.d == nil || m.d.Epoch() != epoch {
		if why := m.cannotReplace(epoch); why != "" {
			m.log.Warn("ATTACH refused", "epoch", epoch, "peer", c.peer, "reason", why)
			c.refuse(epoch, why)
			return
		}
		m.takeConn(c)
		m.reset(commit.NewDest(epoch))
		c.gen = m.gen
		m.log.Info("ATTACH for a migration this receiver has no record of", "peer", c.peer)
		return
	}
	c.gen = m.gen
	if m.conn != nil {
		m.log.Info("ATTACH beside the VM's connection", "peer", c.peer, "phase", m.d.Phase().String())
		return
	}
	m.log.Info("ATTACH", "peer", c.peer, "phase", m.d.Phase().String())
	m.takeConn(c)
}

// takeConn makes c the VM's connection. An earlier one is closed, and its loss delivered first (PeerLost): a sender
// that reconnects has lost it. Then Reconnected, where there is something to reconnect to (not before LOADED: the
// stream's connection is gone for good).
func (m *vmDriver) takeConn(c *vmConn) {
	old := m.conn
	if old == c {
		return
	}
	if old != nil {
		m.conn, old.dropped = nil, true
		old.sc.Close()
		if m.d != nil {
			m.step(commit.Event{Kind: commit.PeerLost, Reason: "another connection for the VM came from " + c.peer})
		}
	}
	m.conn = c
	if m.d != nil && c.gen == m.gen {
		switch m.d.Phase() {
		case commit.Begin, commit.Prepare, commit.Perform:
		default:
			m.step(commit.Event{Kind: commit.Reconnected})
		}
	}
}

// cannotReplace says why the VM's machine cannot give way to one for epoch: a machine is replaced only by a later
// epoch, only once terminal and settled, and never while a QEMU of the VM runs here (its journal record would be
// overwritten, and a restarted receiver would act on the wrong process). "" if it can.
func (m *vmDriver) cannotReplace(epoch uint64) string {
	if m.d != nil {
		cur, p := m.d.Epoch(), m.d.Phase()
		switch {
		case epoch < cur:
			return fmt.Sprintf("epoch %d of VM %s is older than this receiver's epoch %d (%v)", epoch, m.name, cur, p)
		case !p.Terminal():
			return fmt.Sprintf("a migration of VM %s (epoch %d, %v) is in progress here", m.name, cur, p)
		case m.launching != nil || m.starting || m.load != nil:
			return fmt.Sprintf("the migration of VM %s (epoch %d) is still settling here", m.name, cur)
		}
	}
	return m.runsHere()
}

// runsHere says so when a QEMU of the VM runs in its directory.
func (m *vmDriver) runsHere() string {
	if pid := host.RunningPID(qemu.PathsIn(m.dir).PIDFile); pid > 0 && host.IsQEMU(pid) {
		return fmt.Sprintf("VM %s already runs here (pid %d): stop it or choose another target", m.name, pid)
	}
	return ""
}

// reset gives the VM a new machine; what belonged to the earlier migration is let go.
func (m *vmDriver) reset(d *commit.Dest) {
	m.letGo()
	m.closeStream()
	m.gen++
	m.d = d
	m.open, m.streamConn = nil, nil
	m.run, m.stopping = false, m.r.isStopping()
	m.pid, m.exitSeen, m.started, m.streamEnded = 0, false, "", false
	m.launching, m.killAfterLaunch, m.starting = nil, false, false
	m.log = m.r.log.With("vm", m.name, "epoch", d.Epoch())
}

// fromConn delivers a frame of connection c: the VM's own, or one attached beside it (see attached).
func (m *vmDriver) fromConn(c *vmConn, ev commit.Event) {
	if m.d == nil || c.gen != m.gen || c.dropped {
		m.log.Debug("frame of a connection the VM no longer has: ignored", "event", ev.String(), "peer", c.peer)
		return
	}
	if c != m.conn {
		if ev.Kind == commit.Query {
			m.answerTo = c
			m.step(ev)
			m.answerTo = nil
			return
		}
		m.takeConn(c)
	}
	if ev.Kind == commit.Recv && ev.Frame == commit.FrameStreamEnd && c == m.streamConn {
		m.streamEnd()
	}
	m.step(ev)
}

// lost delivers the end of connection c, if it is the VM's current one.
func (m *vmDriver) lost(c *vmConn, err error) {
	if c != m.conn {
		return
	}
	m.conn = nil
	if m.d != nil {
		m.step(commit.Event{Kind: commit.PeerLost, Reason: err.Error()})
	}
}

// stop delivers Stop: the receiver is shutting down.
func (m *vmDriver) stop() {
	m.stopping = true
	if m.d != nil && !m.d.Phase().Terminal() {
		m.step(commit.Event{Kind: commit.Stop})
	}
}

// restored rebuilds the VM's machine from its journal record when the receiver starts (RestoreDest), adopts the
// destination QEMU an earlier receiver left, carries out what the machine asks, and then delivers DestExited if
// that destination is gone.
func (m *vmDriver) restored(rec record) {
	e, ok := rec.entry()
	if !ok {
		m.log.Error("commit record with an unknown phase: left alone", "phase", rec.Phase, "dir", m.dir)
		return
	}
	m.gen++
	m.rec, m.run = rec, rec.Run
	m.log = m.r.log.With("vm", m.name, "epoch", e.Epoch)
	owned := e.Phase != commit.Committed // a committed VM's QEMU is the VM's, not the migration's
	if owned {
		if h := adoptDestination(m.dir); h != nil {
			m.pid = h.pid
			m.watch(h)
		}
	}
	d, acts := commit.RestoreDest(e)
	m.d = d
	m.log.Info("restored from the journal", "journal", e.Phase.String(), "phase", d.Phase().String(), "pid", m.pid)
	m.carryOut(acts)
	if owned && m.dest == nil && !m.exitSeen {
		m.exitSeen = true
		m.step(commit.Event{Kind: commit.DestExited, Reason: "the destination QEMU was gone when the receiver started"})
	}
	if m.d.Phase().Terminal() {
		m.releaseDest()
	}
}
