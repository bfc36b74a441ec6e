package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/scatter/commit"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/secure"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// One VM's migration is driven by its commit.Source (docs/commit.md): this file is the driver. One goroutine (run)
// steps the machine and carries out its actions in order; everything that happens reaches it as an event on one
// channel: the receiver's frames (the connection's reader), the source QEMU's migration (the migration's
// watchers, qemu.go), the outcome of each action, the phase's timer, and the operator's stop. The stages the
// actions set going:
//
//   - Connected: OPEN (journaled Prepare first); the receiver starts the destination paused and says READY.
//   - READY: the source's settings are saved (journaled with Perform), the policy's set, and QEMU migrates into a
//     unix socket of ours; the pump decodes the stream and sends it as frames, the watch steers the policy and
//     the downtime guard, the reader relays the destination's return path.
//   - LOADED, and the source completed and left finish-migrate: START (journaled Finish: the point of no return).
//   - RUNNING: the source QEMU quits (journaled Confirm), then COMMIT, DONE, and the VM is Committed.
//   - Any failure before START: ABORT, cancel the source migration, wait for ABORTED and for the source to leave
//     finish-migrate, restore its settings, resume it (journaled RolledBack). After START the source is never
//     resumed unless the destination hands the VM back; a VM that cannot be settled ends Unresolved, for
//     `vmscatter recover`.

// Bounds on the phases the machine waits in, beyond the migration's own (Config.Timeout). When one runs out the
// machine hears Timeout.
const (
	finishTimeout   = 2 * time.Minute  // START sent, RUNNING awaited
	confirmTimeout  = time.Minute      // the source quitting, DONE awaited
	rollbackTimeout = time.Minute      // the rollback's waits (ABORTED, the source's migration ending)
	qemuCommandWait = 30 * time.Second // one QMP command, or the source leaving finish-migrate
	reconnectPause  = 2 * time.Second  // between two dials of a reconnection
)

// vmMigration is one VM's migration: the machine, the connection and the migration's moving parts. The run
// goroutine owns the machine and the fields below mu; the pump, the watch and the reader use the rest.
type vmMigration struct {
	s   *sender
	vm  *sourceVM
	log *slog.Logger

	machine *commit.Source
	events  chan commit.Event
	gate    chan struct{} // closed when the VM may start migrating (its turn came); its stream waits for s.primed

	sc       *secure.Conn
	connGen  int      // the connection's generation: a lost connection's reader reports for its own only
	src      net.Conn // the source QEMU's migration stream, once it connected
	pages    report.PageCounts
	counters streamCounters // the pump's, for the downtime guard
	// lastMethod is the compression the pump's literal pages ended with (read after the pump has returned).
	lastMethod dedup.Method
	mig        *sourceMigration

	record    VMRecord // its journal record, as last written
	lostBytes int64    // wire bytes of connections lost and replaced
	runningAt time.Time
	lastDial  time.Time // of the last reconnection

	opened, started time.Time
	mu              sync.Mutex
	stopAt          time.Time // when vmscatter stopped the VM itself to force the switch-over
	srcWrite        sync.Mutex
}

func (s *sender) newMigration(vm *sourceVM) *vmMigration {
	return &vmMigration{s: s, vm: vm, log: s.log.With("vm", vm.spec.Name), events: make(chan commit.Event, 64),
		gate: make(chan struct{}), machine: commit.NewSource(s.epoch, vm.wasRunning)}
}

// deliver hands an event to the run goroutine. It never blocks for long: the channel is deep, and the run
// goroutine reads it until the machine is terminal and every goroutine that delivers has ended.
func (m *vmMigration) deliver(ev commit.Event) { m.events <- ev }

// start begins the VM's migration on a goroutine of its own: dial, OPEN, and on until the machine is terminal.
// The first migrations start right after placement, so that their destinations start while the prime runs; they
// wait at the gate before touching the source QEMU. done is closed when the VM's outcome is in its report.
func (m *vmMigration) start(ctx context.Context, done chan<- struct{}) {
	m.opened = time.Now()
	m.s.progress.set(m.vm.spec.Name, "connecting", m.vm.target.addr+", starting the destination")
	go func() {
		defer close(done)
		m.run(ctx)
	}()
	go func() {
		sc, err := m.s.dial(ctx, m.vm.target.addr, secure.RoleVM)
		if err != nil {
			m.deliver(commit.Event{Kind: commit.PeerLost, Reason: err.Error()})
			return
		}
		m.deliver(commit.Event{Kind: commit.Connected, Reason: "", Epoch: m.attachConn(sc)})
	}()
}

// attachConn makes sc the VM's connection and starts its reader; it returns the connection's generation.
func (m *vmMigration) attachConn(sc *secure.Conn) uint64 {
	m.mu.Lock()
	m.connGen++
	gen := m.connGen
	old := m.sc
	m.sc = sc
	if old != nil {
		m.lostBytes += old.BytesOut()
	}
	m.mu.Unlock()
	if old != nil {
		old.Close()
	}
	go m.readFrames(sc, gen)
	return uint64(gen)
}

func (m *vmMigration) conn() *secure.Conn {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sc
}

// run steps the machine until it is terminal, carrying out its actions in order.
func (m *vmMigration) run(ctx context.Context) {
	timer := time.NewTimer(m.s.cfg.Timeout)
	defer timer.Stop()
	stopped := ctx.Done()
	primed := m.s.primed // the migration's own time starts when its stream may flow
	phase := m.machine.Phase()
	for !m.machine.Phase().Terminal() {
		var ev commit.Event
		select {
		case ev = <-m.events:
			if ev.Kind == commit.Connected {
				ev.Epoch = 0 // the generation rode in Epoch; the machine's events carry none
			}
		case <-timer.C:
			ev = commit.Event{Kind: commit.Timeout}
		case <-stopped:
			stopped = nil // one Stop: the machine stops at its next safe point
			ev = commit.Event{Kind: commit.Stop, Reason: context.Cause(ctx).Error()}
		case <-primed:
			primed = nil
			timer.Reset(m.phaseBound(m.machine.Phase()))
			continue
		}
		acts := m.machine.Step(ev)
		if ev.Kind == commit.Recv || ev.Kind == commit.PeerLost {
			m.log.Debug("commit", "event", ev.String(), "phase", m.machine.Phase().String())
		}
		for failed, ok := m.carryOut(ctx, acts); ok; failed, ok = m.carryOut(ctx, acts) {
			acts = m.machine.Step(failed) // the step taken again without the journal: the failed one never happened
		}
		if p := m.machine.Phase(); p != phase {
			phase = p
			timer.Reset(m.phaseBound(p))
		}
	}
	m.finish()
}

// phaseBound is how long the machine may stay in phase p before it hears Timeout.
func (m *vmMigration) phaseBound(p commit.Phase) time.Duration {
	switch p {
	case commit.Finish:
		return finishTimeout
	case commit.Confirm:
		return confirmTimeout
	case commit.RollingBack:
		return rollbackTimeout
	}
	return m.s.cfg.Timeout
}

// carryOut carries out a step's actions in order. A journal entry is durable before the next action starts; one
// that cannot be written ends the step there (what follows it must not happen unjournaled), and carryOut returns
// JournalFailed, to be stepped at once.
func (m *vmMigration) carryOut(ctx context.Context, acts []commit.Action) (commit.Event, bool) {
	for _, a := range acts {
		if a.Kind != commit.Journal {
			m.do(ctx, a)
			continue
		}
		if err := m.journal(a.Entry, "", ""); err != nil {
			m.log.Error("journal write failed: the rest of the step is not carried out", "entry", a.Entry.String(), "err", err)
			return commit.Event{Kind: commit.JournalFailed, Reason: "the state directory: " + err.Error()}, true
		}
	}
	return commit.Event{}, false
}

// do carries out one action other than Journal: they start here and report their outcome as events.
func (m *vmMigration) do(ctx context.Context, a commit.Action) {
	switch a.Kind {
	case commit.Send:
		m.send(a)
	case commit.StartSourceMigration:
		select {
		case <-m.gate:
		case <-ctx.Done():
		}
		m.startMigration(ctx)
	case commit.CancelSourceMigration:
		m.cancelMigration()
	case commit.RestoreSource:
		m.restoreSource()
	case commit.ResumeSource:
		go m.resumeSource()
	case commit.QuitSource:
		go m.quitSource()
	case commit.Reconnect:
		go m.reconnect(ctx)
	case commit.Report:
		m.reportOutcome(a)
	case commit.Answer:
	case commit.ProtocolError:
		m.log.Warn("commit protocol", "problem", a.Reason, "phase", m.machine.Phase().String())
	default:
		m.log.Error("commit: the sender cannot carry out this action", "action", a.String())
	}
}

// send writes one of the machine's frames, with its epoch, on the current connection; without one it is dropped
// (the machine asks for a reconnection when it needs one).
func (m *vmMigration) send(a commit.Action) {
	sc := m.conn()
	if sc == nil {
		return
	}
	var err error
	switch a.Frame {
	case commit.FrameOpen:
		s, vm := m.s, m.vm
		err = sc.SendJSON(wire.FrameOpen, wire.OpenMsg{Session: s.session, VM: vm.spec.Name, Epoch: a.Epoch, Argv: vm.argv,
			Capabilities: destinationCaps(s.cfg.Policy.Capabilities()), Run: vm.wasRunning, Slot: s.vmIndex(vm),
			WatchConsole: s.cfg.GuestDowntime, Disks: vm.disks})
	case commit.FrameStart:
		err = sc.SendJSON(wire.FrameStart, wire.EpochMsg{Epoch: a.Epoch})
	case commit.FrameCommit:
		err = sc.SendJSON(wire.FrameCommit, wire.EpochMsg{Epoch: a.Epoch})
	case commit.FrameAbort:
		err = sc.SendJSON(wire.FrameAbort, wire.ErrorMsg{Epoch: a.Epoch, Error: a.Reason})
	default:
		m.log.Error("commit: the sender has no frame for this", "frame", a.Frame.String())
		return
	}
	if err != nil {
		m.log.Debug("send failed", "frame", a.Frame.String(), "err", err) // the reader reports the loss
	}
}

// readFrames reads connection gen's frames: the return path goes to the source QEMU, the protocol's frames to the
// machine; the connection's end is PeerLost (for the current connection only).
func (m *vmMigration) readFrames(sc *secure.Conn, gen int) {
	frames := map[wire.FrameType]commit.Frame{wire.FrameReady: commit.FrameReady, wire.FrameLoaded: commit.FrameLoaded,
		wire.FrameRunning: commit.FrameRunning, wire.FrameDone: commit.FrameDone, wire.FrameAborted: commit.FrameAborted,
		wire.FrameError: commit.FrameError}
	for {
		t, b, err := sc.Recv()
		if err != nil {
			m.mu.Lock()
			current := gen == m.connGen
			if current { // a connection finish took, or one replaced, is counted where that happened
				m.sc = nil
				m.lostBytes += sc.BytesOut()
			}
			m.mu.Unlock()
			sc.Close()
			if current {
				if err == nil || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
					err = fmt.Errorf("the receiver closed the connection (did it stop?): %w", err)
				}
				m.deliver(commit.Event{Kind: commit.PeerLost, Reason: fmt.Sprintf("receiver %s: %v", m.vm.target.addr, err)})
			}
			return
		}
		if t == wire.FrameReturnPath {
			if err := m.returnPath(b); err != nil {
				m.log.Debug("return path to the source", "err", err) // the source's side ends the migration
			}
			continue
		}
		f, ok := frames[t]
		if !ok {
			m.log.Warn("unexpected frame from the receiver", "frame", t.String())
			continue
		}
		var msg struct {
			Epoch             uint64 `json:"epoch"`
			Error             string `json:"error"`
			PID               int    `json:"pid"`
			FirstOutputUnixMS int64  `json:"first_output_unix_ms"`
		}
		if err := wire.Unmarshal(t, b, &msg); err != nil {
			m.log.Warn("bad frame from the receiver", "frame", t.String(), "err", err)
			continue
		}
		switch t {
		case wire.FrameReady:
			m.vm.report.DestinationStartMS = time.Since(m.opened).Milliseconds()
			m.vm.report.TargetPID = msg.PID
		case wire.FrameRunning:
			m.mu.Lock()
			m.runningAt = time.Now()
			m.mu.Unlock()
		case wire.FrameDone:
			m.noteFirstOutput(msg.FirstOutputUnixMS)
		}
		m.deliver(commit.Received(f, msg.Epoch, msg.Error))
	}
}

// source is the source QEMU's stream, once it connected.
func (m *vmMigration) source() net.Conn {
	m.srcWrite.Lock()
	defer m.srcWrite.Unlock()
	return m.src
}

// returnPath writes the destination's return-path bytes to the source QEMU.
func (m *vmMigration) returnPath(b []byte) error {
	m.srcWrite.Lock()
	defer m.srcWrite.Unlock()
	if m.src == nil {
		return errors.New("no source stream")
	}
	_, err := m.src.Write(b)
	return err
}

// reconnect dials the receiver again for this migration (ATTACH), until it answers or the phase's time runs
// out: the machine hears Reconnected, or its Timeout.
func (m *vmMigration) reconnect(ctx context.Context) {
	deadline := time.Now().Add(m.phaseBound(m.machine.Phase()))
	// A receiver that takes the connection and drops it again must not make this a busy loop.
	m.mu.Lock()
	wait := time.Until(m.lastDial.Add(reconnectPause))
	m.lastDial = time.Now().Add(max(wait, 0))
	m.mu.Unlock()
	time.Sleep(wait)
	for time.Now().Before(deadline) {
		sc, err := m.s.dial(context.WithoutCancel(ctx), m.vm.target.addr, secure.RoleVM)
		if err == nil {
			err = sc.SendJSON(wire.FrameAttach, wire.AttachMsg{Session: m.s.session, VM: m.vm.spec.Name, Epoch: m.s.epoch})
			if err == nil {
				m.attachConn(sc)
				m.deliver(commit.Event{Kind: commit.Reconnected})
				return
			}
			sc.Close()
		}
		m.log.Info("reconnecting to the receiver", "err", err)
		time.Sleep(reconnectPause)
	}
}

func (m *vmMigration) setStopped(at time.Time) {
	m.mu.Lock()
	m.stopAt = at
	m.mu.Unlock()
}

func (m *vmMigration) stoppedAt() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stopAt
}

// destinationCaps are the capabilities the destination must share with the source.
func destinationCaps(caps map[string]bool) map[string]bool {
	out := map[string]bool{}
	if caps["return-path"] {
		out["return-path"] = true
	}
	return out
}

// openEarly starts the first migrations (as many as run at once) during the prime (sender.openDestinations): their
// destinations start while the prime runs, and so do their source migrations, once the destination is ready and
// the prime is in its last stage (primeTail); the pump and the watch wait for the prime's end (s.primed), so QEMU's
// stream waits in its socket until every reference it can make is known. What this overlaps with the prime: the destination's start,
// the QMP round trips before `migrate`, and QEMU's migration set-up (its first dirty-bitmap sync, 0.3 core-seconds
// for a 128 MiB guest under TCG). What it costs: the pages the guest writes between that sync and its pass
// reading them go twice, unless their bytes did not change since (the pump leaves those out: literalsSent).
func (s *sender) openEarly(ctx context.Context) {
	n := 0
	for _, vm := range s.vms {
		if n == s.cfg.Parallel {
			return
		}
		if vm.report.Status != "" || vm.target == nil {
			continue
		}
		s.startMigration(ctx, vm)
		go func() {
			select {
			case <-s.primeTail:
			case <-ctx.Done():
			}
			close(vm.mig.gate)
		}()
		n++
	}
}

// startMigration starts vm's migration; vm.done is closed when it has ended.
func (s *sender) startMigration(ctx context.Context, vm *sourceVM) {
	vm.mig = s.newMigration(vm)
	vm.done = make(chan struct{})
	if s.virt != nil { // a libvirt domain: libvirt.go
		vm.mig.startLibvirt(ctx, vm.done)
		return
	}
	vm.mig.start(ctx, vm.done)
}

func acceptCtx(ctx context.Context, ln *net.UnixListener) (net.Conn, error) {
	for {
		_ = ln.SetDeadline(time.Now().Add(100 * time.Millisecond))
		c, err := ln.Accept()
		if err == nil {
			return c, nil
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
}
