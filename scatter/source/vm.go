package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/vmscatter/vmscatter/qemu"
	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/converge"
	"github.com/vmscatter/vmscatter/scatter/host"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/secure"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// migrate moves one VM. The stages:
//
//  1. Open a VM connection to the target; the receiver starts the destination QEMU paused and says READY.
//  2. Point the source QEMU's migration at a unix socket of ours (policy parameters set first).
//  3. Pump: decode the source stream and send it as frames (pages as zero flags, references or compressed
//     literals). A reader goroutine relays the destination's return path to the source and collects the
//     receiver's answers. Both stop on the first error or at the deadline.
//  4. LOADED: the destination holds the whole VM, paused. The source has completed and sits in postmigrate.
//     START; RUNNING confirms the destination runs. Only then does the source QEMU quit; COMMIT.
//
// Any failure before START rolls back: the source migration is cancelled if still active, the source VM is resumed
// (`cont`) if it was running, and the receiver is told to ABORT (tear the destination down). A failure after START
// cannot be settled from here (the destination may run), so the source stays paused and the VM is reported failed.
func (s *sender) migrate(ctx context.Context, vm *sourceVM) {
	name := vm.spec.Name
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	m := &vmMigration{s: s, vm: vm}
	err := m.run(ctx)
	vm.report.MigrationMS = time.Since(start).Milliseconds()
	if m.sc != nil {
		vm.report.WireBytes = m.sc.BytesOut()
		m.sc.Close()
	}
	vm.report.Pages = m.pages
	if err == nil {
		vm.report.Status = report.StatusMigrated
		s.progress.set(name, "migrated", fmt.Sprintf("%s on the wire, downtime %d ms", fmtBytes(vm.report.WireBytes), vm.report.DowntimeMS))
		return
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("timed out after %v: %w", s.cfg.Timeout, err)
	}
	vm.report.Error = err.Error()
	if m.started {
		vm.report.Status = report.StatusFailed
		vm.report.Error += "; the destination may be running on " + vm.target.addr + ", so the source was left paused: check the target before resuming it"
		s.progress.set(name, "FAILED", vm.report.Error)
		return
	}
	if rerr := m.rollback(); rerr != nil {
		vm.report.Status = report.StatusFailed
		vm.report.Error += "; rollback failed: " + rerr.Error()
		s.progress.set(name, "FAILED", vm.report.Error)
		return
	}
	vm.report.Status = report.StatusRolledBack
	s.progress.set(name, "rolled back", err.Error())
}

// vmMigration is the state of one VM's migration, owned by its migrate call.
type vmMigration struct {
	s        *sender
	vm       *sourceVM
	sc       *secure.Conn
	src      net.Conn // the source QEMU's migration stream
	pages    report.PageCounts
	started  bool           // START was sent: the destination may run
	stopAt   time.Time      // when vmscatter stopped the VM itself to force the switch-over (guarded by mu)
	counters streamCounters // the pump's, for the downtime guard

	mu       sync.Mutex
	srcWrite sync.Mutex // serializes return-path writes to src
}

func (m *vmMigration) run(ctx context.Context) error {
	s, vm := m.s, m.vm
	name := vm.spec.Name
	if vm.open == nil {
		s.progress.set(name, "connecting", vm.target.addr)
		vm.open = s.startOpen(ctx, vm)
	}
	sc, ready, took, err := vm.open.claim(ctx)
	if sc != nil {
		m.sc = sc
	}
	vm.report.DestinationStartMS = took.Milliseconds()
	if err != nil {
		return err
	}
	stopOnCancel := context.AfterFunc(ctx, func() { sc.Close() })
	defer stopOnCancel()
	caps := s.cfg.Policy.Capabilities()
	vm.report.TargetPID = ready.PID

	// Stage 2: the source migrates into our socket.
	sock := filepath.Join(s.tmpDir, name+".sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	defer ln.Close()
	defer os.Remove(sock)
	if err := applyPolicy(ctx, vm.qmp, s.cfg.Policy, caps, s.cfg.MaxBandwidth, converge.StartingDowntime(s.cfg.Policy.Downtime, s.linkShare())); err != nil {
		return fmt.Errorf("setting migration parameters: %w", err)
	}
	if err := vm.qmp.Migrate(ctx, "unix:"+sock); err != nil {
		return fmt.Errorf("starting the source migration: %w", err)
	}
	src, err := acceptCtx(ctx, ln.(*net.UnixListener))
	if err != nil {
		return fmt.Errorf("source QEMU did not connect: %w", err)
	}
	if s.cfg.WrapStream != nil {
		src = s.cfg.WrapStream(name, src)
	}
	m.src = src
	defer src.Close()
	s.progress.set(name, "migrating", "")
	var console *host.ConsoleWatch
	if s.cfg.GuestDowntime {
		if path := qemu.SerialLogPath(vm.argv); path != "" {
			console = host.WatchConsole(ctx, path)
		}
	}

	// Stage 3: pump and reader, concurrently.
	replies := make(chan reply, 4)
	readerErr := make(chan error, 1)
	go func() { readerErr <- m.readReplies(replies) }()
	pumpErr := make(chan error, 1)
	pctx, stopPolicy := context.WithCancel(ctx)
	defer stopPolicy()
	watched := make(chan struct{})
	go func() { defer close(watched); m.watch(pctx, s.log.With("vm", name)) }()
	defer func() { stopPolicy(); <-watched }() // no policy decision lands after the outcome
	go func() { pumpErr <- m.pump(ctx) }()
	pumpDone := false
	defer func() {
		// The pump owns the page counts and the final image: it must be gone before the caller reads them. On the
		// error paths it may still run; cutting its source ends it, unless it is stuck sending to the receiver.
		if pumpDone {
			return
		}
		src.Close()
		select {
		case <-pumpErr:
		case <-time.After(5 * time.Second):
			m.sc.Close()
			<-pumpErr
		}
	}()

	var loaded bool
	for !loaded || !pumpDone {
		select {
		case err := <-pumpErr:
			pumpDone = true
			if err != nil {
				_ = sc.SendJSON(wire.FrameStreamCancel, wire.ErrorMsg{Error: err.Error()})
				return err
			}
		case err := <-readerErr:
			if err == nil || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
				err = fmt.Errorf("the receiver closed the connection mid-migration (did it stop?): %w", err)
			}
			return fmt.Errorf("receiver %s: %w", vm.target.addr, err)
		case r := <-replies:
			if r.t != wire.FrameLoaded {
				return fmt.Errorf("receiver: unexpected %s", r.t)
			}
			loaded = true
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	stopPolicy()
	<-watched

	// Stage 4: the switch-over.
	mi, err := vm.qmp.QueryMigrate(ctx)
	if err != nil {
		return err
	}
	if mi.Status != qmp.MigrationCompleted {
		return fmt.Errorf("source migration is %q after the destination loaded the stream", mi.Status)
	}
	vm.report.DowntimeMS = mi.Downtime.Milliseconds()
	vm.report.DirtyRate = mi.RAM.DirtyPagesRate
	vm.report.Iterations = mi.RAM.DirtySyncCount
	s.progress.set(name, "switching", "")
	m.started = true
	if err := sc.Send(wire.FrameStart, nil, true); err != nil {
		return err
	}
	select {
	case r := <-replies:
		if r.t != wire.FrameRunning {
			return fmt.Errorf("receiver: unexpected %s after START", r.t)
		}
		if at := m.stoppedAt(); !at.IsZero() {
			// QEMU did not make this stop and does not count it: the downtime runs from our stop to RUNNING.
			vm.report.DowntimeMS = time.Since(at).Milliseconds()
		}
	case err := <-readerErr:
		return fmt.Errorf("receiver %s after START: %v", vm.target.addr, err)
	case <-ctx.Done():
		return ctx.Err()
	}
	// The destination runs: the source QEMU may quit now, and only now.
	if err := vm.qmp.Quit(ctx); err != nil {
		s.log.Warn("source quit", "vm", name, "err", err)
	}
	select {
	case <-vm.qmp.Done():
	case <-time.After(10 * time.Second):
		s.log.Warn("source QEMU still has its QMP socket open 10 s after quit", "vm", name)
	}
	_ = sc.Send(wire.FrameCommit, nil, true)
	select {
	case r := <-replies:
		var done wire.DoneMsg
		if r.t == wire.FrameDone && wire.Unmarshal(r.t, r.b, &done) == nil && done.FirstOutputUnixMS > 0 && console != nil {
			if last := console.LastLine(); !last.IsZero() {
				vm.report.GuestDowntimeMS = done.FirstOutputUnixMS - last.UnixMilli()
			}
		}
	case <-readerErr:
	case <-time.After(5 * time.Second):
	}
	return nil
}

// opening is a VM connection being opened: dial, OPEN, and the receiver's READY once the destination QEMU runs
// paused. The first migrations' connections open right after placement, so that their destinations start while
// the prime runs instead of on the critical path. The opening goroutine writes the result, then closes done;
// claim and discard read it after done.
type opening struct {
	done    chan struct{}
	sc      *secure.Conn
	ready   wire.ReadyMsg
	err     error
	took    time.Duration // dial to READY
	claimed bool          // a migration took sc (set by claim, on the migration's goroutine)
}

// openEarly starts opening the connections of the first migrations (as many as run at once).
func (s *sender) openEarly(ctx context.Context) {
	n := 0
	for _, vm := range s.vms {
		if n == s.cfg.Parallel {
			return
		}
		if vm.report.Status != "" || vm.target == nil {
			continue
		}
		s.progress.set(vm.spec.Name, "connecting", vm.target.addr+", starting the destination")
		vm.open = s.startOpen(ctx, vm)
		n++
	}
}

// startOpen opens vm's connection on a goroutine of its own. The wait for READY is bounded by the VM's timeout.
func (s *sender) startOpen(ctx context.Context, vm *sourceVM) *opening {
	o := &opening{done: make(chan struct{})}
	go func() {
		defer close(o.done)
		start := time.Now()
		sc, err := s.dial(ctx, vm.target.addr, secure.RoleVM)
		if err != nil {
			o.err = err
			return
		}
		o.sc = sc
		octx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		defer cancel()
		stop := context.AfterFunc(octx, func() { sc.Close() })
		defer stop()
		caps := s.cfg.Policy.Capabilities()
		if err := sc.SendJSON(wire.FrameOpen, wire.OpenMsg{Session: s.session, VM: vm.spec.Name, Argv: vm.argv, Capabilities: destinationCaps(caps),
			Run: vm.wasRunning, Slot: s.vmIndex(vm), WatchConsole: s.cfg.GuestDowntime}); err != nil {
			o.err = err
			return
		}
		if err := sc.Expect(ctx, wire.FrameReady, &o.ready); err != nil {
			if octx.Err() != nil {
				err = fmt.Errorf("%w (%v)", err, octx.Err())
			}
			o.err = fmt.Errorf("starting the destination on %s: %w", vm.target.addr, err)
			return
		}
		o.took = time.Since(start)
	}()
	return o
}

// claim waits for the connection and hands it to the migration, which closes it. sc may be set with an error.
func (o *opening) claim(ctx context.Context) (*secure.Conn, wire.ReadyMsg, time.Duration, error) {
	select {
	case <-o.done:
	case <-ctx.Done():
		return nil, wire.ReadyMsg{}, 0, ctx.Err()
	}
	o.claimed = o.sc != nil
	return o.sc, o.ready, o.took, o.err
}

// discard closes a connection that no migration claimed (the run ended before it), which tears its destination
// down on the receiver.
func (o *opening) discard() {
	<-o.done
	if !o.claimed && o.sc != nil {
		o.sc.Close()
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

type reply struct {
	t wire.FrameType
	b []byte
}

// readReplies owns sc's read side after READY: the return path goes to the source, answers go to replies.
func (m *vmMigration) readReplies(replies chan<- reply) error {
	for {
		t, b, err := m.sc.Recv()
		if err != nil {
			return err
		}
		switch t {
		case wire.FrameReturnPath:
			m.srcWrite.Lock()
			_, err := m.src.Write(b)
			m.srcWrite.Unlock()
			if err != nil {
				return fmt.Errorf("return path to the source: %w", err)
			}
		case wire.FrameError:
			var e wire.ErrorMsg
			_ = wire.Unmarshal(t, b, &e)
			return &wire.PeerError{Msg: e.Error}
		default:
			replies <- reply{t: t, b: append([]byte(nil), b...)}
		}
	}
}

// rollback puts the source VM back as it was: migration cancelled, VM running if it ran before. The receiver is
// told to tear its destination down.
func (m *vmMigration) rollback() error {
	vm := m.vm
	if m.sc != nil {
		_ = m.sc.SendJSON(wire.FrameAbort, wire.ErrorMsg{Error: "migration rolled back"})
	}
	if m.src != nil {
		m.src.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q := vm.qmp
	mi, err := q.QueryMigrate(ctx)
	if err != nil {
		return err
	}
	if mi.Status.Active() {
		if err := q.MigrateCancel(ctx); err != nil {
			return err
		}
		if st, err := q.WaitMigration(ctx, func(s qmp.MigrationStatus) bool { return !s.Active() }); err != nil {
			return fmt.Errorf("source migration still %q after migrate_cancel: %w", st, err)
		}
	}
	status, err := q.Status(ctx)
	if err != nil {
		return err
	}
	if vm.wasRunning && !status.Running() {
		if err := q.Cont(ctx); err != nil {
			return fmt.Errorf("resuming the source VM (was %q): %w", status, err)
		}
		if status, err = q.Status(ctx); err != nil || !status.Running() {
			return fmt.Errorf("source VM is %q after cont: %v", status, err)
		}
	}
	return nil
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

// destinationCaps are the capabilities the destination must share with the source.
func destinationCaps(caps map[string]bool) map[string]bool {
	out := map[string]bool{}
	if caps["return-path"] {
		out["return-path"] = true
	}
	return out
}
