package dest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vmscatter/vmscatter/qemu"
	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/host"
	"github.com/vmscatter/vmscatter/scatter/secure"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// serveVM runs one VM's migration on the receiver. The stages, each sequential on this connection's goroutine:
//
//  1. OPEN: claim the VM name, rewrite the source's command line, start the destination QEMU paused (-S) with
//     -incoming defer, set the migration capabilities the source uses, migrate-incoming on a unix socket, READY.
//  2. Stream: each frame from the sender is re-encoded into a byte-valid QEMU stream on that socket (references
//     resolved from the session's content store). A second goroutine relays the destination's return path back.
//  3. STREAM_END: wait until the destination has loaded the stream, then LOADED.
//  4. START: `cont` the destination, confirm it runs, RUNNING. From here the destination is the VM: it is never torn
//     down by this connection's loss, only by an explicit ABORT.
//  5. COMMIT (the source quit) or ABORT (tear down), then DONE.
func (r *Receiver) serveVM(ctx context.Context, sc *secure.Conn, peer string) (err error) {
	var open wire.OpenMsg
	if err := sc.Expect(ctx, wire.FrameOpen, &open); err != nil {
		return err
	}
	fail := func(err error) error {
		_ = sc.SendJSON(wire.FrameError, wire.ErrorMsg{Error: err.Error()})
		return err
	}
	s := r.attach(open.Session, false)
	if s == nil {
		return fail(fmt.Errorf("unknown session %s: open the control connection first", open.Session))
	}
	defer r.detach(s)
	if err := r.claimVM(open.VM); err != nil {
		return fail(err)
	}
	defer r.releaseVM(open.VM)
	defer s.store.ReleaseVM(open.Slot) // this VM's references end with its migration
	log := r.log.With("vm", open.VM, "session", s.id)

	dir := filepath.Join(r.cfg.DataDir, open.VM)
	argv, err := r.destinationCommandLine(open.Argv, dir)
	if err != nil {
		return fail(err)
	}
	argv = withPausedStart(argv)
	launchCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	dest, err := qemu.LaunchDestination(launchCtx, argv, qemu.PathsIn(dir))
	cancel()
	if err != nil {
		return fail(err)
	}
	owned := true // the destination is ours to tear down until it runs as the VM
	writeState(dir, stateIncoming)
	defer func() {
		if owned {
			dest.Kill()
			writeState(dir, stateTornDown)
			_ = sc.SendJSON(wire.FrameAborted, wire.ErrorMsg{Epoch: open.Epoch})
			log.Info("destination torn down", "reason", err)
		} else {
			dest.QMP.Close()
		}
	}()
	log.Info("destination started", "pid", dest.Cmd.Process.Pid, "dir", dir)

	// The capabilities the stream needs the destination to share, and events, which this receiver waits on.
	caps := maps.Clone(open.Capabilities)
	if caps == nil {
		caps = map[string]bool{}
	}
	caps[qmp.CapEvents] = true
	if err := dest.QMP.SetCapabilities(ctx, caps); err != nil {
		return fail(err)
	}
	incoming := filepath.Join(dir, "incoming.sock")
	os.Remove(incoming)
	if err := dest.QMP.MigrateIncoming(ctx, "unix:"+incoming); err != nil {
		return fail(err)
	}
	qc, err := dialUnixRetry(ctx, incoming, dest.Exited())
	if err != nil {
		return fail(err)
	}
	defer qc.Close()
	if err := sc.SendJSON(wire.FrameReady, wire.ReadyMsg{Epoch: open.Epoch, PID: dest.Cmd.Process.Pid}); err != nil {
		return err
	}

	// Stage 2: the stream. The return path and the destination's exit are watched concurrently.
	rpDone := make(chan error, 1)
	go func() { rpDone <- relayReturnPath(qc, sc) }()
	start := time.Now()
	rb := newRebuilder(qc, s.store, r.cfg.RefWait)
	streamErr := make(chan error, 1)
	go func() { streamErr <- rb.run(ctx, sc) }()
	select {
	case err = <-streamErr:
	case <-dest.Exited():
		err = dest.ExitError()
	}
	if err != nil {
		qc.Close()
		return fail(fmt.Errorf("stream: %w", err))
	}
	// The source's stream ended: so does the destination's, whatever it still expects.
	if uc, ok := qc.(*net.UnixConn); ok {
		_ = uc.CloseWrite()
	}
	log.Info("stream received", "pages", rb.pages, "referenced", rb.refs)

	// Stage 3: wait for the destination to finish loading.
	if err := waitIncomingDone(ctx, dest, r.cfg.LoadTimeout); err != nil {
		return fail(err)
	}
	if err := sc.SendJSON(wire.FrameLoaded, wire.RunningMsg{Epoch: open.Epoch, Status: "paused", PID: dest.Cmd.Process.Pid}); err != nil {
		return err
	}

	// Stage 4: START or ABORT.
	t, b, err := sc.Recv()
	if err != nil {
		return fmt.Errorf("sender went away before starting the destination: %w", err)
	}
	if t != wire.FrameStart {
		return abortReason(t, b)
	}
	var console *host.ConsoleWatch
	if open.WatchConsole {
		if path := qemu.SerialLogPath(argv); path != "" {
			wctx, stopWatch := context.WithTimeout(ctx, time.Minute)
			defer stopWatch()
			console = host.WatchConsole(wctx, path)
		}
	}
	want := qmp.RunStatePaused // a VM that was paused at the source stays paused here
	if open.Run {
		want = qmp.RunStateRunning
		if err := dest.QMP.Cont(ctx); err != nil {
			return fail(fmt.Errorf("starting the destination: %w", err))
		}
	}
	owned = false
	writeState(dir, stateOwned)
	status, err := dest.QMP.Status(ctx)
	if err != nil || status != want {
		return fail(fmt.Errorf("destination is %q after the switch-over, want %q: %v", status, want, err))
	}
	log.Info("destination runs", "pid", dest.Cmd.Process.Pid, "load_ms", time.Since(start).Milliseconds())
	if err := sc.SendJSON(wire.FrameRunning, wire.RunningMsg{Epoch: open.Epoch, Status: string(status), PID: dest.Cmd.Process.Pid}); err != nil {
		return nil // the VM runs here; the sender will learn from the target or its report
	}
	// Stage 5: the sender quits the source, then says COMMIT (or ABORT if quitting failed, which leaves both
	// paused-or-running decisions to it).
	t, b, err = sc.Recv()
	if err == nil && t == wire.FrameAbort {
		owned = true
		return abortReason(t, b)
	}
	var done wire.DoneMsg
	if console != nil {
		if first := console.FirstLine(3 * time.Second); !first.IsZero() {
			done.FirstOutputUnixMS = first.UnixMilli()
		}
	}
	done.Epoch = open.Epoch
	_ = sc.SendJSON(wire.FrameDone, done)
	return nil
}

// withPausedStart adds -S so that the destination never starts by itself: it starts on the sender's word only.
func withPausedStart(argv []string) []string {
	for _, a := range argv {
		if a == "-S" {
			return argv
		}
	}
	out := append([]string{}, argv[:len(argv)-2]...)
	return append(out, "-S", "-incoming", "defer")
}

func abortReason(t wire.FrameType, b []byte) error {
	if t == wire.FrameAbort || t == wire.FrameError || t == wire.FrameStreamCancel {
		var e wire.ErrorMsg
		_ = wire.Unmarshal(t, b, &e)
		return fmt.Errorf("sender aborted: %s", e.Error)
	}
	return fmt.Errorf("%w: unexpected %s", wire.ErrFrame, t)
}

func dialUnixRetry(ctx context.Context, path string, exited <-chan struct{}) (net.Conn, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			return c, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("destination's incoming socket: %w", err)
		}
		select {
		case <-exited:
			return nil, errors.New("destination QEMU exited before accepting the stream")
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// relayReturnPath copies the destination's return-path bytes to the sender as they come.
func relayReturnPath(qc net.Conn, sc *secure.Conn) error {
	buf := make([]byte, 64<<10)
	for {
		n, err := qc.Read(buf)
		if n > 0 {
			if serr := sc.Send(wire.FrameReturnPath, buf[:n], true); serr != nil {
				return serr
			}
		}
		if err != nil {
			return err
		}
	}
}

// waitIncomingDone waits for the destination's incoming migration to complete.
func waitIncomingDone(ctx context.Context, dest *qemu.Destination, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// The wait ends on the destination's MIGRATION event, or when the QEMU exits: one that refuses the stream
	// exits, and its QMP socket closes a moment before the process is reaped.
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		select {
		case <-dest.Exited():
			stop()
		case <-wctx.Done():
		}
	}()
	status, err := dest.QMP.WaitMigration(wctx, qmp.MigrationStatus.Finished)
	if err != nil {
		select {
		case <-dest.Exited():
			return fmt.Errorf("while loading the stream: %w", dest.ExitError())
		case <-time.After(2 * time.Second):
		}
		if ctx.Err() != nil {
			return fmt.Errorf("destination did not finish loading within %v (status %q)", timeout, status)
		}
		return fmt.Errorf("destination's migration state: %w", err)
	}
	if status != qmp.MigrationCompleted {
		msg, _ := os.ReadFile(filepath.Join(dest.Paths.Dir, "qemu.stderr"))
		return fmt.Errorf("destination refused the stream (%s): %s", status, strings.TrimSpace(string(msg)))
	}
	return nil
}

// A destination's state file (DATA-DIR/<vm>/state) lets a restarted receiver tell a VM that runs here from a
// destination an earlier receiver left unfinished.
const (
	stateIncoming = "incoming" // started, loading or loaded, not yet told to start: the source still owns the VM
	stateOwned    = "owned"    // started on the sender's word: this is the VM now
	stateTornDown = "torn-down"
)

func writeState(dir, state string) {
	_ = os.WriteFile(filepath.Join(dir, "state"), []byte(state+"\n"), 0o644)
}

// reapUnfinished kills the destinations that an earlier receiver left in the incoming state (it died mid-
// migration; their sources were rolled back), so that their VMs can be migrated here again.
func (r *Receiver) reapUnfinished() {
	states, _ := filepath.Glob(filepath.Join(r.cfg.DataDir, "*", "state"))
	for _, f := range states {
		b, err := os.ReadFile(f)
		if err != nil || strings.TrimSpace(string(b)) != stateIncoming {
			continue
		}
		dir := filepath.Dir(f)
		if pid := host.RunningPID(filepath.Join(dir, "qemu.pid")); pid > 0 && host.IsQEMU(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			r.log.Warn("killed an unfinished destination left by an earlier receiver", "vm", filepath.Base(dir), "pid", pid)
		}
		writeState(dir, stateTornDown)
	}
}
