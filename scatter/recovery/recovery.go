// Package recovery is `vmscatter recover`: it finds every migration a sender left unsettled in its journal (a
// crash, a kill, a lost receiver, a VM the commit protocol left Unresolved), asks both ends where the VM stands,
// and drives it to exactly one running copy by commit.Decide's rule (docs/commit.md, "Recovery"): the
// destination's, if its guest may have run or START was decided; otherwise the source's, resumed only after the
// receiver has confirmed its destination gone and resolved the epoch to the source. It reaches a receiver as the
// sender does, with ATTACH and the protocol's own frames (QUERY, ABORT, START, COMMIT), so the receiver's machine
// applies its rules to recover too. Every step is idempotent: running recover again, or when nothing is
// interrupted, changes nothing.
package recovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/commit"
	"github.com/vmscatter/vmscatter/scatter/host"
	"github.com/vmscatter/vmscatter/scatter/journal"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/secure"
	"github.com/vmscatter/vmscatter/scatter/source"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// Config configures a recovery.
type Config struct {
	StateDir string // the sender's --state-dir
	Key      []byte
	HostKey  *secure.HostKey // with host keys, as the sender used them
	Peers    *secure.Peers
	Dial     time.Duration // bound on reaching a receiver; 0 means 10 s
	Steps    int           // bound on the steps for one VM; 0 means 8
	Progress io.Writer
	Log      *slog.Logger
}

// Run recovers every unsettled VM of every run under the state dir and reports each one: migrated (the
// destination's copy is the VM), rolled_back (the source's), or unresolved with what an operator must decide.
func Run(ctx context.Context, cfg Config) (*report.Report, error) {
	if cfg.StateDir == "" {
		cfg.StateDir = source.DefaultStateDir
	}
	if cfg.Dial <= 0 {
		cfg.Dial = 10 * time.Second
	}
	if cfg.Steps <= 0 {
		cfg.Steps = 8
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	runs, err := source.Runs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	rep := &report.Report{Version: report.ReportVersion, Started: time.Now().UTC(), Policy: "recover"}
	for _, run := range runs {
		j, err := journal.Open(run.Dir)
		if err != nil {
			return nil, err
		}
		for _, rec := range run.Unsettled() {
			r := &recovery{cfg: cfg, run: run, j: j, rec: rec, log: cfg.Log.With("vm", rec.VM, "run", run.Record.Session)}
			v := r.recover(ctx)
			rep.VMs = append(rep.VMs, v)
			if cfg.Progress != nil {
				fmt.Fprintf(cfg.Progress, "%-12s %-11s %s\n", v.Name, v.Status, v.Error)
			}
		}
	}
	rep.Sum()
	return rep, nil
}

// recovery is one VM's.
type recovery struct {
	cfg Config
	run source.Run
	j   *journal.Dir
	rec source.VMRecord
	log *slog.Logger
}

func (r *recovery) recover(ctx context.Context) report.VMReport {
	v := report.VMReport{Name: r.rec.VM, Target: r.rec.Target, Policy: "recover", GuestDowntimeMS: -1}
	src, err := r.rec.Entry()
	if err != nil {
		v.Status, v.Error = report.StatusUnresolved, err.Error()
		return v
	}
	for step := 0; step < r.cfg.Steps; step++ {
		sit := r.observe(ctx, src)
		plan := commit.Decide(sit)
		r.log.Info("recover", "situation", fmt.Sprintf("%+v", sit), "plan", plan.String())
		switch plan.Verdict {
		case commit.Resolved:
			if plan.Owner == commit.DestSide {
				v.Status = report.StatusMigrated
			} else {
				v.Status = report.StatusRolledBack
			}
			v.Error = plan.Why
			// The record says so too: settled, and no destination left to tidy.
			if r.rec.Linger || r.rec.Status != v.Status {
				r.rec.Linger, r.rec.Status, r.rec.Reason = false, v.Status, "settled by vmscatter recover: "+plan.Why
				if err := r.j.Put("vm-"+r.rec.VM, r.rec); err != nil {
					v.Status, v.Error = report.StatusUnresolved, err.Error()
				}
			}
			return v
		case commit.Wait, commit.Manual:
			v.Status, v.Error = report.StatusUnresolved, plan.Why+": "+describe(sit)
			return v
		}
		if err := r.fix(ctx, plan.Fix, &src); err != nil {
			v.Status, v.Error = report.StatusUnresolved, fmt.Sprintf("%s failed: %v (%s)", plan.Fix, err, describe(sit))
			return v
		}
	}
	v.Status, v.Error = report.StatusUnresolved, fmt.Sprintf("not settled in %d steps", r.cfg.Steps)
	return v
}

func describe(s commit.Situation) string {
	d := "the receiver could not be asked"
	if s.DestKnown {
		d = fmt.Sprintf("the receiver's journal says %v", s.Dest)
	}
	return fmt.Sprintf("sender's journal %v, source QEMU %v, %s, destination %v", s.Source, s.SourceNow, d, s.DestNow)
}

// observe asks both ends where the VM stands.
func (r *recovery) observe(ctx context.Context, src commit.Entry) commit.Situation {
	sit := commit.Situation{Source: src, WasRunning: r.rec.WasRunning, SourceNow: r.sourceState(ctx)}
	st, err := r.query(ctx)
	if err != nil {
		r.log.Warn("the receiver could not be asked", "target", r.rec.Target, "err", err)
		return sit
	}
	sit.DestKnown = true
	if p, ok := commit.ParsePhase(st.Phase); ok {
		sit.Dest = commit.Entry{Phase: p, Epoch: st.Epoch}
	}
	switch st.Dest {
	case "running":
		sit.DestNow = commit.DestRunning
	case "gone", "":
		sit.DestNow = commit.DestGone
	default:
		sit.DestNow = commit.DestPaused
	}
	return sit
}

// sourceState is what the source QEMU is now. A QMP socket nobody answers on is a QEMU that is gone, unless its
// process still runs (then it cannot be told: it counts as migrating, which no step resumes or quits blindly).
func (r *recovery) sourceState(ctx context.Context) commit.SourceState {
	q, err := r.dialSource(ctx)
	if err != nil {
		if r.rec.PID > 0 && host.IsQEMU(r.rec.PID) {
			r.log.Warn("the source QEMU runs but its QMP socket does not answer", "pid", r.rec.PID, "err", err)
			return commit.SourceMigrating
		}
		return commit.SourceGone
	}
	defer q.Close()
	st, err := q.Status(ctx)
	if err != nil {
		return commit.SourceMigrating
	}
	if mi, err := q.QueryMigrate(ctx); err == nil && mi.Status.Active() {
		return commit.SourceMigrating
	}
	switch {
	case st.Running():
		return commit.SourceRunning
	case st == qmp.RunStateFinishMigrate || st == qmp.RunStateInMigrate:
		return commit.SourceMigrating
	}
	return commit.SourcePaused
}

func (r *recovery) dialSource(ctx context.Context) (*qmp.Client, error) {
	if _, err := os.Stat(r.rec.QMP); err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return qmp.Dial(dctx, r.rec.QMP)
}

// fix carries out one step, journaling on the sender's side before it acts where the step says so.
func (r *recovery) fix(ctx context.Context, f commit.Fix, src *commit.Entry) error {
	switch f {
	case commit.FixCancelSource:
		return r.onSource(ctx, func(ctx context.Context, q *qmp.Client) error {
			if err := q.MigrateCancel(ctx); err != nil {
				r.log.Warn("cancelling the source migration", "err", err)
			}
			if _, err := q.WaitMigration(ctx, func(s qmp.MigrationStatus) bool { return !s.Active() }); err != nil &&
				!errors.Is(err, qmp.ErrMigrationEventsOff) {
				return err
			}
			return waitSettled(ctx, q)
		})
	case commit.FixTearDownDest:
		return r.tell(ctx, wire.FrameAbort, wire.ErrorMsg{Epoch: src.Epoch, Error: "vmscatter recover: the source keeps the VM"},
			wire.FrameAborted)
	case commit.FixResumeSource:
		if err := r.journal(src, commit.RolledBack); err != nil {
			return err
		}
		return r.onSource(ctx, func(ctx context.Context, q *qmp.Client) error {
			if s := r.rec.Saved; s != nil {
				if err := q.SetCapabilities(ctx, s.Capabilities); err != nil {
					r.log.Warn("restoring capabilities", "err", err)
				}
				if err := q.SetParameters(ctx, s.Parameters); err != nil {
					r.log.Warn("restoring parameters", "err", err)
				}
			}
			if st, err := q.Status(ctx); err != nil || st.Running() || !r.rec.WasRunning {
				return err
			}
			return q.Cont(ctx)
		})
	case commit.FixStartDest:
		return r.tell(ctx, wire.FrameStart, wire.EpochMsg{Epoch: src.Epoch}, wire.FrameRunning)
	case commit.FixQuitSource:
		if err := r.journal(src, commit.Confirm); err != nil {
			return err
		}
		return r.onSource(ctx, func(ctx context.Context, q *qmp.Client) error {
			_ = q.Quit(ctx)
			select {
			case <-q.Done():
				return nil
			case <-time.After(10 * time.Second):
			}
			if pid := r.rec.PID; pid > 0 && host.IsQEMU(pid) {
				return syscall.Kill(pid, syscall.SIGKILL)
			}
			return nil
		})
	case commit.FixMarkCommitted:
		if err := r.journal(src, commit.Committed); err != nil {
			return err
		}
		return r.tell(ctx, wire.FrameCommit, wire.EpochMsg{Epoch: src.Epoch}, wire.FrameDone)
	}
	return fmt.Errorf("recover cannot carry out %v", f)
}

// journal moves the sender's record of the VM to phase p.
func (r *recovery) journal(src *commit.Entry, p commit.Phase) error {
	src.Phase = p
	r.rec.Phase, r.rec.Updated = p.String(), time.Now().UTC()
	r.rec.Reason = "set by vmscatter recover"
	return r.j.Put("vm-"+r.rec.VM, r.rec)
}

func (r *recovery) onSource(ctx context.Context, f func(context.Context, *qmp.Client) error) error {
	q, err := r.dialSource(ctx)
	if err != nil {
		return fmt.Errorf("the source QEMU's QMP socket %s: %w", r.rec.QMP, err)
	}
	defer q.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return f(ctx, q)
}

// waitSettled waits until the source VM has left finish-migrate.
func waitSettled(ctx context.Context, q *qmp.Client) error {
	for {
		st, err := q.Status(ctx)
		if err != nil || st != qmp.RunStateFinishMigrate {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// attach opens a VM connection to the receiver for this migration.
func (r *recovery) attach(ctx context.Context) (*secure.Conn, error) {
	d := net.Dialer{Timeout: r.cfg.Dial}
	c, err := d.DialContext(ctx, "tcp", r.rec.Target)
	if err != nil {
		return nil, fmt.Errorf("receiver %s unreachable: %w", r.rec.Target, err)
	}
	sc, err := secure.ClientHandshake(c, secure.Credentials{Key: r.cfg.Key, Host: r.cfg.HostKey, Peers: r.cfg.Peers}, secure.RoleVM)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("receiver %s: %w", r.rec.Target, err)
	}
	var sess wire.SessionID
	if err := sess.UnmarshalText([]byte(r.run.Record.Session)); err != nil {
		sc.Close()
		return nil, err
	}
	if err := sc.SendJSON(wire.FrameAttach, wire.AttachMsg{Session: sess, VM: r.rec.VM, Epoch: r.rec.Epoch}); err != nil {
		sc.Close()
		return nil, err
	}
	return sc, nil
}

// query asks the receiver for its journal of the VM and its destination's state.
func (r *recovery) query(ctx context.Context) (wire.StateMsg, error) {
	var st wire.StateMsg
	sc, err := r.attach(ctx)
	if err != nil {
		return st, err
	}
	defer sc.Close()
	if err := sc.SendJSON(wire.FrameQuery, wire.EpochMsg{Epoch: r.rec.Epoch}); err != nil {
		return st, err
	}
	err = sc.ExpectWithin(ctx, wire.FrameState, &st, 30*time.Second)
	return st, err
}

// tell sends one frame of the protocol to the receiver and waits for the answer want (ABORTED, RUNNING, DONE).
func (r *recovery) tell(ctx context.Context, t wire.FrameType, msg any, want wire.FrameType) error {
	sc, err := r.attach(ctx)
	if err != nil {
		return err
	}
	defer sc.Close()
	if err := sc.SendJSON(t, msg); err != nil {
		return err
	}
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		ft, b, err := recvWithin(ctx, sc, time.Until(deadline))
		if err != nil {
			return err
		}
		switch ft {
		case want:
			return nil
		case wire.FrameError:
			return &wire.PeerError{Msg: wire.ParseError(b)}
		case wire.FrameAborted:
			if want == wire.FrameRunning {
				return errors.New("the receiver handed the VM back (ABORTED): its destination never ran")
			}
		}
	}
	return fmt.Errorf("no %s from the receiver", want)
}

func recvWithin(ctx context.Context, sc *secure.Conn, d time.Duration) (wire.FrameType, []byte, error) {
	c := sc.NetConn()
	_ = c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Now()) })
	defer stop()
	return sc.Recv()
}

// Status describes every run under the state dir: each VM's last phase, status and reason.
func Status(stateDir string, w io.Writer) error {
	if stateDir == "" {
		stateDir = source.DefaultStateDir
	}
	runs, err := source.Runs(stateDir)
	if err != nil {
		return err
	}
	if len(runs) == 0 {
		fmt.Fprintf(w, "no runs journaled under %s\n", stateDir)
		return nil
	}
	for _, run := range runs {
		unsettled := len(run.Unsettled())
		state := "settled"
		if unsettled > 0 {
			state = fmt.Sprintf("%d VM(s) unsettled: run `vmscatter recover`", unsettled)
		}
		fmt.Fprintf(w, "run %s  started %s  %s  (%s)\n", run.Record.Session, run.Record.Started.Local().Format(time.DateTime),
			state, filepath.Base(run.Dir))
		for _, v := range run.VMs {
			fmt.Fprintf(w, "  %-12s %-11s epoch %d  target %s  %s %s\n", v.VM, v.Phase, v.Epoch, v.Target, v.Status, v.Reason)
		}
	}
	return nil
}
