package dest

import (
	"context"
	"net"
	"time"

	"github.com/vmscatter/vmscatter/qemu"
	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/commit"
	"github.com/vmscatter/vmscatter/scatter/host"
)

// The QEMU actions of the destination machine (LaunchDest, the load, StartDest, KillDest) and their outcomes: each
// runs on a goroutine of its own where it blocks, and its outcome comes back to the VM's loop as an event.

// loadWatch is the wait for the destination's incoming migration (watchLoad).
type loadWatch struct {
	cancel context.CancelCauseFunc
	timer  *time.Timer // the load's bound, from STREAM_END
}

// launch carries out LaunchDest on a goroutine of its own; its outcome comes back through launched.
func (m *vmDriver) launch() {
	if m.open == nil {
		m.raise(func() { m.step(failed("no OPEN to start a destination from")) })
		return
	}
	// Every disk image the source uses must be the same file at the same path here (shared storage), or two
	// QEMUs would write two copies of the VM's disk.
	unchecked, err := checkSharedStorage(m.open.Argv, m.open.Disks)
	if err != nil {
		m.raise(func() { m.step(failed("shared storage: " + err.Error())) })
		return
	}
	for _, u := range unchecked {
		m.log.Warn("disk image not checked: the operator keeps it reachable from every host", "image", u)
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
	m.launching() // the launch is over: its context goes
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
	if !m.r.cfg.NoPrefault {
		h.beginPrefault(m.r.log.With("vm", m.name))
	}
	m.qc = qc
	if c := m.streamConn; c != nil {
		m.stream = newRebuilder(qc, c.store, m.r.cfg.RefWait)
		if pf := h.pf; pf != nil {
			m.stream.started = pf.boost // the load must not wait for an allocation at idle priority
		}
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

// findDest returns the VM's destination: the one the loop holds, or, if the loop let it go (a stopping receiver
// lets a loaded destination go) and it has not exited, the one the VM's pidfile names.
func (m *vmDriver) findDest() *destination {
	if m.dest == nil && !m.exitSeen {
		if h := adoptDestination(m.dir); h != nil {
			m.pid = h.pid
			m.watch(h)
		}
	}
	return m.dest
}

// startDest carries out StartDest on a goroutine; its outcome comes back through startDone.
func (m *vmDriver) startDest() {
	h := m.findDest()
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
	case m.findDest() != nil:
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
