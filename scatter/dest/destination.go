package dest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmscatter/vmscatter/qemu"
	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/commit"
	"github.com/vmscatter/vmscatter/scatter/host"
)

// The bounds of the destination's own commands (the driver's contract: each QEMU action bounded by a timeout of
// its own, apart from the phase's).
const (
	launchTimeout   = 30 * time.Second // the QEMU process opens its QMP socket
	qmpTimeout      = 10 * time.Second // one QMP command (capabilities, migrate-incoming)
	incomingTimeout = 10 * time.Second // the destination listens on its incoming socket
	startTimeout    = 20 * time.Second // StartDest: `cont` and the status that confirms it
	stateTimeout    = 2 * time.Second  // QUERY's look at the destination's run state
	exitGrace       = 2 * time.Second  // a QEMU whose QMP socket closed is reaped this soon after, if it exits
)

// lateBlockActivate keeps the destination's disks inactive (no image lock taken) until `cont`, so that a
// destination that loaded but never ran has not touched them.
const lateBlockActivate = "late-block-activate"

// destination is the destination QEMU of a VM: launched by this receiver, or adopted from an earlier receiver
// process by its pidfile (restart). The VM's driver loop owns it; its QMP client is safe for concurrent commands,
// so the load and start goroutines share it.
type destination struct {
	paths  qemu.DestinationPaths
	pid    int
	proc   *qemu.Destination // launched by this process; nil when adopted
	exited <-chan struct{}   // closed when the process is gone

	mu  sync.Mutex  // guards q
	q   *qmp.Client // nil until connected (adopted), and after release
	rel chan struct{}
	one sync.Once

	pf *prefault // the allocation of its RAM ahead of the stream (prefault.go); nil when none was started
}

// launchDestination does what LaunchDest asks: it starts the destination QEMU paused (-S, -incoming defer) from
// argv (the source's command line rewritten for dir: Receiver.destinationCommandLine), sets the capabilities the
// stream needs (the source's, events, and late-block-activate), points migrate-incoming at a unix socket and
// connects to it. It returns the destination whenever a process was started, also with an error, so that the
// driver can kill it.
func launchDestination(ctx context.Context, argv []string, capabilities map[string]bool, dir string) (*destination, net.Conn, error) {
	argv = withPausedStart(argv, dir)
	lctx, cancel := context.WithTimeout(ctx, launchTimeout)
	proc, err := qemu.LaunchDestination(lctx, argv, qemu.PathsIn(dir))
	cancel()
	if err != nil {
		return nil, nil, err
	}
	h := &destination{paths: proc.Paths, pid: proc.Cmd.Process.Pid, proc: proc, exited: proc.Exited(), q: proc.QMP,
		rel: make(chan struct{})}
	caps := maps.Clone(capabilities)
	if caps == nil {
		caps = map[string]bool{}
	}
	caps[qmp.CapEvents] = true // the driver waits for the load on MIGRATION events
	caps[lateBlockActivate] = true
	qctx, cancel := context.WithTimeout(ctx, qmpTimeout)
	defer cancel()
	if err := proc.QMP.SetCapabilities(qctx, caps); err != nil {
		return h, nil, err
	}
	incoming := filepath.Join(dir, "incoming.sock")
	os.Remove(incoming)
	if err := proc.QMP.MigrateIncoming(qctx, "unix:"+incoming); err != nil {
		return h, nil, err
	}
	qc, err := dialUnixRetry(ctx, incoming, proc.Exited())
	if err != nil {
		return h, nil, err
	}
	return h, qc, nil
}

// withPausedStart adds -S so that the destination never starts by itself (it starts on the sender's word only),
// and a pidfile in dir if the source had none: a restarted receiver finds its destinations by their pidfiles.
// argv ends with -incoming defer (qemu.RewriteCommandLine).
func withPausedStart(argv []string, dir string) []string {
	out := append([]string{}, argv[:len(argv)-2]...)
	if !slices.Contains(argv, "-S") {
		out = append(out, "-S")
	}
	if !slices.Contains(argv, "-pidfile") {
		out = append(out, "-pidfile", qemu.PathsIn(dir).PIDFile)
	}
	return append(out, argv[len(argv)-2:]...)
}

func dialUnixRetry(ctx context.Context, path string, exited <-chan struct{}) (net.Conn, error) {
	deadline := time.Now().Add(incomingTimeout)
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

// adoptDestination finds the destination QEMU an earlier receiver process left in dir: the pid in its pidfile, if
// that process lives and is a QEMU (a recycled pid is not). nil if there is none.
func adoptDestination(dir string) *destination {
	paths := qemu.PathsIn(dir)
	pid := host.RunningPID(paths.PIDFile)
	if pid <= 0 || !host.IsQEMU(pid) {
		return nil
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil // gone since
	}
	exited := make(chan struct{})
	h := &destination{paths: paths, pid: pid, exited: exited, rel: make(chan struct{})}
	go func() { // not our child: its exit is seen on a pidfd, until the driver lets it go
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(fds, 500)
			if n > 0 || (err != nil && err != unix.EINTR) {
				close(exited)
				return
			}
			select {
			case <-h.rel:
				return
			default:
			}
		}
	}()
	return h
}

// gone reports whether the process has exited.
func (h *destination) gone() bool {
	select {
	case <-h.exited:
		return true
	default:
		return false
	}
}

// exitError says how the process ended.
func (h *destination) exitError() string {
	if h.proc != nil {
		return h.proc.ExitError().Error()
	}
	return fmt.Sprintf("destination QEMU (pid %d) exited", h.pid)
}

// client returns the QMP client, connecting to an adopted destination's socket first.
func (h *destination) client(ctx context.Context) (*qmp.Client, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case <-h.rel:
		return nil, errors.New("the destination was let go")
	default:
	}
	if h.q != nil {
		return h.q, nil
	}
	q, err := qmp.Dial(ctx, h.paths.QMP)
	if err != nil {
		return nil, err
	}
	h.q = q
	return q, nil
}

// beginPrefault starts the allocation of a launched destination's RAM (prefault.go), which ends, at the latest,
// when the destination is killed or let go.
func (h *destination) beginPrefault(log *slog.Logger) {
	h.mu.Lock()
	q := h.q
	h.mu.Unlock()
	if h.proc == nil || q == nil || h.pf != nil {
		return
	}
	h.pf = startPrefault(q, h.pid, log)
}

// kill sends SIGKILL to the process by its pid (an adopted one only if it is still a QEMU) and returns; the exit
// is seen by the driver's exit watch, and a launched process is reaped by its own Wait.
func (h *destination) kill() {
	h.pf.stop()
	h.mu.Lock()
	if h.q != nil {
		h.q.Close()
		h.q = nil
	}
	h.mu.Unlock()
	if h.gone() {
		return
	}
	if h.proc != nil {
		_ = h.proc.Cmd.Process.Kill()
		return
	}
	if host.IsQEMU(h.pid) {
		_ = syscall.Kill(h.pid, syscall.SIGKILL)
	}
}

// release lets the destination go without touching the process: its QMP connection is closed (QEMU serves one
// client, and the operator may want it) and the exit watch of an adopted process ends.
func (h *destination) release() {
	h.pf.stop()
	h.one.Do(func() { close(h.rel) })
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.q != nil {
		h.q.Close()
		h.q = nil
	}
}

// waitLoaded waits for the incoming migration to end: DestLoaded, DestFailed, or no outcome (false) when the
// process exited (DestExited says so) or ctx was cancelled without cause errLoadTimeout.
func (h *destination) waitLoaded(ctx context.Context) (commit.Event, bool) {
	q, err := h.client(ctx)
	var st qmp.MigrationStatus
	if err == nil {
		st, err = q.WaitMigration(ctx, qmp.MigrationStatus.Finished)
	}
	if err != nil {
		if errors.Is(context.Cause(ctx), errLoadTimeout) {
			return failed(fmt.Sprintf("the destination did not finish loading in time (status %q)", st)), true
		}
		if ctx.Err() != nil {
			return commit.Event{}, false
		}
		// A QEMU that refuses the stream exits, and its QMP socket closes a moment before it is reaped.
		select {
		case <-h.exited:
			return commit.Event{}, false
		case <-time.After(exitGrace):
		}
		return failed("the destination's migration state: " + err.Error()), true
	}
	if st != qmp.MigrationCompleted {
		msg, _ := os.ReadFile(filepath.Join(h.paths.Dir, "qemu.stderr"))
		return failed(fmt.Sprintf("the destination refused the stream (%s): %s", st, strings.TrimSpace(string(msg)))), true
	}
	return commit.Event{Kind: commit.DestLoaded}, true
}

// start does what StartDest asks: `cont` if the source ran, then confirm the run state. Its outcome is
// DestStarted (with the state); DestFailed when the guest cannot have run through us (QEMU refused `cont`, or was
// gone or unreachable before it was sent, or, for a paused source, is not as it should be); or none (false)
// when `cont` may have reached QEMU and what followed is unknown: the process died or did not answer (DestExited,
// or the phase's Timeout, says the rest).
func (h *destination) start(run bool) (commit.Event, qmp.RunState, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if h.gone() {
		return failed("the destination QEMU was gone before `cont`"), "", true
	}
	q, err := h.client(ctx)
	if err != nil {
		return failed("cannot reach the destination's QMP, `cont` not sent: " + err.Error()), "", true
	}
	want := qmp.RunStatePaused // a VM that was paused at the source stays paused here
	if run {
		want = qmp.RunStateRunning
		if h.gone() {
			return failed("the destination QEMU was gone before `cont`"), "", true
		}
		if err := q.Cont(ctx); err != nil {
			var refused *qmp.Error
			if errors.As(err, &refused) {
				return failed("the destination refused `cont`: " + err.Error()), "", true
			}
			return commit.Event{Reason: err.Error()}, "", false
		}
	}
	st, err := q.Status(ctx)
	switch {
	case err == nil && (st == want || st == qmp.RunStateRunning):
		return commit.Event{Kind: commit.DestStarted}, st, true
	case run:
		return commit.Event{Reason: fmt.Sprintf("the destination is %q after `cont` (%v)", st, err)}, st, false
	case err != nil:
		return failed("the destination's status: " + err.Error()), "", true
	default:
		return failed(fmt.Sprintf("the destination is %q, want %q", st, want)), st, true
	}
}

// runState is the destination's run state for STATE: QEMU's own ("running", "paused", ...), or "unknown" when
// it exists but does not answer in time. A destination that is allocating its RAM answers nothing until it is done,
// and is "inmigrate" meanwhile (prefault.holding).
func (h *destination) runState() string {
	if h.gone() {
		return "gone"
	}
	if h.pf.holding() {
		return string(qmp.RunStateInMigrate)
	}
	ctx, cancel := context.WithTimeout(context.Background(), stateTimeout)
	defer cancel()
	q, err := h.client(ctx)
	if err != nil {
		return "unknown"
	}
	st, err := q.Status(ctx)
	if err != nil {
		if h.gone() {
			return "gone"
		}
		return "unknown"
	}
	return string(st)
}

// runStateIn is runState for a VM directory the driver holds no destination of (a terminal migration): the
// process named by the pidfile, asked over a QMP connection of its own.
func runStateIn(dir string) string {
	h := adoptDestination(dir)
	if h == nil {
		return "gone"
	}
	defer h.release()
	return h.runState()
}

func failed(reason string) commit.Event { return commit.Event{Kind: commit.DestFailed, Reason: reason} }
