package source

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vmscatter/vmscatter/qemu"
	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/commit"
	"github.com/vmscatter/vmscatter/scatter/converge"
	"github.com/vmscatter/vmscatter/scatter/host"
	"github.com/vmscatter/vmscatter/scatter/report"
)

// The actions on the source QEMU, and the watchers that report what it does: each reports its outcome to the
// machine as an event (docs/commit.md, "The driver's side of the contract").

// pumpStuck is how long endMigration waits for a pump to end by itself before it takes its connection as broken.
const pumpStuck = 5 * time.Second

// sourceMigration is the source QEMU's migration into our socket, with the goroutines it set going.
type sourceMigration struct {
	ln       *net.UnixListener
	sock     string
	cancel   context.CancelFunc // ends the pump, the watch and the watchers
	watched  chan struct{}      // closed when the policy's watch has ended
	pumped   chan struct{}      // closed when the pump has ended
	console  *host.ConsoleWatch
	saved    *Settings
	unpinned func() // gives the vCPUs their CPUs back, if the policy pinned them
	vcpus    int    // the VM's vCPU threads as QEMU listed them before `migrate` (0: unknown)
	// downtime is the limit applyPolicy gave QEMU: from the link's share when the prime had measured it, else the
	// policy's own; the downtime guard corrects it on its first reading.
	downtime time.Duration
	tuned    chan struct{} // closed when the watch has set QEMU's parameters for the stream to flow
}

// startMigration saves the source's settings, sets the policy's and starts QEMU's migration into our socket;
// then the pump, the watch and the watcher of the migration's end. Outcome: SrcActive (QEMU connected) or SrcFailed.
func (m *vmMigration) startMigration(ctx context.Context) {
	s, vm := m.s, m.vm
	m.started = time.Now()
	s.progress.set(vm.spec.Name, "migrating", "")
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), qemuCommandWait)
	defer cancel()
	fail := func(err error) { m.deliver(commit.Event{Kind: commit.SrcFailed, Reason: err.Error()}) }

	saved, err := saveSettings(opCtx, vm.qmp)
	if err != nil {
		fail(fmt.Errorf("reading the source's migration settings: %w", err))
		return
	}
	// Journaled with Perform's entry, before anything on the source changes: a rollback, here or in recover,
	// puts them back.
	if err := m.journal(commit.Entry{Phase: commit.Perform, Epoch: m.s.epoch}, "", "", saved); err != nil {
		fail(fmt.Errorf("journal: %w", err))
		return
	}
	mctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	mig := &sourceMigration{sock: filepath.Join(s.tmpDir, vm.spec.Name+".sock"), cancel: stop, saved: saved,
		watched: make(chan struct{}), pumped: make(chan struct{}), tuned: make(chan struct{})}
	m.mig = mig
	ln, err := net.Listen("unix", mig.sock)
	if err != nil {
		close(mig.watched)
		close(mig.pumped)
		fail(err)
		return
	}
	mig.ln = ln.(*net.UnixListener)
	// The throttle is a capability, set before `migrate`; whether timebound wants it depends on the vCPU count.
	if tids, err := vm.qmp.VCPUThreads(opCtx); err == nil {
		mig.vcpus = len(tids)
	}
	mig.downtime = max(time.Millisecond, converge.StartingDowntime(s.cfg.Policy.Downtime, s.primedLinkShare()))
	if err := applyPolicy(opCtx, vm.qmp, s.cfg.Policy, s.cfg.Policy.CapabilitiesFor(mig.vcpus), s.cfg.MaxBandwidth,
		mig.downtime); err != nil {
		close(mig.watched)
		close(mig.pumped)
		fail(fmt.Errorf("setting migration parameters: %w", err))
		return
	}
	if s.cfg.GuestDowntime {
		if path := qemu.SerialLogPath(vm.argv); path != "" {
			mig.console = host.WatchConsole(mctx, path)
		}
	}
	// The end of the migration is watched from before it starts, so that no MIGRATION event is missed.
	go m.watchEnd(mctx)
	if err := vm.qmp.Migrate(opCtx, "unix:"+mig.sock); err != nil {
		stop()
		close(mig.watched)
		close(mig.pumped)
		fail(fmt.Errorf("starting the source migration: %w", err))
		return
	}
	go func() {
		defer close(mig.pumped)
		src, err := acceptCtx(mctx, mig.ln)
		if err != nil {
			m.deliver(commit.Event{Kind: commit.StreamFailed, Reason: fmt.Sprintf("source QEMU did not connect: %v", err)})
			return
		}
		if s.cfg.WrapStream != nil {
			src = s.cfg.WrapStream(vm.spec.Name, src)
		}
		m.srcWrite.Lock()
		m.src = src
		m.srcWrite.Unlock()
		m.deliver(commit.Event{Kind: commit.SrcActive})
		go func() { <-mctx.Done(); src.Close() }()
		if err := m.pump(mctx); err != nil && mctx.Err() == nil {
			m.deliver(commit.Event{Kind: commit.StreamFailed, Reason: err.Error()})
		}
	}()
	go func() {
		defer close(mig.watched)
		m.watch(mctx, m.log)
	}()
}

// watchEnd waits for the source migration's end status (SrcCompleted, SrcFailed, SrcCancelled), then for the
// source VM to leave finish-migrate (SrcPaused or SrcRunning). A QEMU that goes away is SrcExited.
func (m *vmMigration) watchEnd(ctx context.Context) {
	q := m.vm.qmp
	status, err := q.WaitMigration(ctx, qmp.MigrationStatus.Finished)
	if err != nil {
		if ctx.Err() == nil {
			m.sourceGone(err)
		}
		return
	}
	switch status {
	case qmp.MigrationCompleted:
		if mi, err := q.QueryMigrate(ctx); err == nil {
			m.vm.report.DowntimeMS = mi.Downtime.Milliseconds()
			m.vm.report.DirtyRate = mi.RAM.DirtyPagesRate
			m.vm.report.Iterations = mi.RAM.DirtySyncCount
		}
		m.deliver(commit.Event{Kind: commit.SrcCompleted})
	case qmp.MigrationCancelled:
		m.deliver(commit.Event{Kind: commit.SrcCancelled})
	default:
		mi, _ := q.QueryMigrate(ctx)
		m.deliver(commit.Event{Kind: commit.SrcFailed, Reason: mi.ErrorDesc})
	}
	m.watchSettle(ctx)
}

// watchSettle waits until the source VM has left finish-migrate: QEMU refuses `cont` until then ("Migration is
// not finalized yet"), and resumes a VM it stopped itself by its own accord after a failed migration.
func (m *vmMigration) watchSettle(ctx context.Context) {
	q := m.vm.qmp
	deadline := time.Now().Add(qemuCommandWait)
	for {
		st, err := q.Status(ctx)
		if err != nil {
			if ctx.Err() == nil {
				m.sourceGone(err)
			}
			return
		}
		if st != qmp.RunStateFinishMigrate || time.Now().After(deadline) {
			if st.Running() {
				m.deliver(commit.Event{Kind: commit.SrcRunning})
			} else {
				m.deliver(commit.Event{Kind: commit.SrcPaused, Reason: string(st)})
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// sourceGone reports the source QEMU's end when its QMP connection closed, else leaves the error to the phase's
// timer.
func (m *vmMigration) sourceGone(err error) {
	if errors.Is(err, qmp.ErrClosed) {
		m.deliver(commit.Event{Kind: commit.SrcExited, Reason: err.Error()})
		return
	}
	m.log.Warn("source QEMU", "err", err)
}

// cancelMigration stops the pump and cancels the source migration; watchEnd reports its end status.
func (m *vmMigration) cancelMigration() {
	ctx, cancel := context.WithTimeout(context.Background(), qemuCommandWait)
	defer cancel()
	m.srcWrite.Lock()
	if m.src != nil {
		m.src.Close()
	}
	m.srcWrite.Unlock()
	if err := m.vm.qmp.MigrateCancel(ctx); err != nil {
		m.log.Warn("cancelling the source migration", "err", err) // the end status still comes
	}
}

// restoreSource puts back the settings the migration changed and the vCPUs' affinity. Best effort.
func (m *vmMigration) restoreSource() {
	mig := m.mig
	if mig == nil {
		return
	}
	m.endMigration()
	ctx, cancel := context.WithTimeout(context.Background(), qemuCommandWait)
	defer cancel()
	if err := restoreSettings(ctx, m.vm.qmp, mig.saved); err != nil {
		m.log.Warn("restoring the source's migration settings", "err", err)
	}
}

// endMigration stops the migration's goroutines and waits for the pump and the watch (with its pinning undone)
// to end, so that no decision of theirs lands afterwards.
func (m *vmMigration) endMigration() {
	mig := m.mig
	if mig == nil {
		return
	}
	mig.cancel()
	select {
	case <-mig.pumped:
	case <-time.After(pumpStuck):
		// The pump is blocked sending to a receiver that reads nothing (a silent partition): the connection is
		// broken. Closing it frees the pump, and its reader reports the loss to the machine, which reconnects.
		m.log.Warn("the stream to the receiver is stuck; dropping the connection")
		if sc := m.conn(); sc != nil {
			sc.Close()
		}
		<-mig.pumped
	}
	<-mig.watched
	if mig.ln != nil {
		mig.ln.Close()
		os.Remove(mig.sock)
	}
}

// resumeSource `cont`s the source VM: SrcRunning, or SrcRefused.
func (m *vmMigration) resumeSource() {
	ctx, cancel := context.WithTimeout(context.Background(), qemuCommandWait)
	defer cancel()
	q := m.vm.qmp
	if err := q.Cont(ctx); err != nil {
		m.deliver(commit.Event{Kind: commit.SrcRefused, Reason: fmt.Sprintf("resuming the source VM: %v", err)})
		return
	}
	if st, err := q.Status(ctx); err != nil || !st.Running() {
		m.deliver(commit.Event{Kind: commit.SrcRefused, Reason: fmt.Sprintf("the source VM is %q after cont: %v", st, err)})
		return
	}
	m.deliver(commit.Event{Kind: commit.SrcRunning})
}

// quitSource ends the source QEMU: `quit`, then SIGKILL if it is still there. SrcExited, or SrcRefused.
func (m *vmMigration) quitSource() {
	m.endMigration()
	ctx, cancel := context.WithTimeout(context.Background(), qemuCommandWait)
	defer cancel()
	q := m.vm.qmp
	if err := q.Quit(ctx); err != nil {
		m.log.Warn("source quit", "err", err)
	}
	select {
	case <-q.Done():
		m.deliver(commit.Event{Kind: commit.SrcExited})
		return
	case <-time.After(10 * time.Second):
	}
	m.log.Warn("source QEMU still runs 10 s after quit: killing it", "pid", m.vm.pid)
	if pid := m.vm.pid; pid > 0 && host.IsQEMU(pid) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	select {
	case <-q.Done():
		m.deliver(commit.Event{Kind: commit.SrcExited})
	case <-time.After(10 * time.Second):
		m.deliver(commit.Event{Kind: commit.SrcRefused, Reason: "the source QEMU did not exit after quit and SIGKILL"})
	}
}

// saveSettings reads the source's migration capabilities and parameters as they are.
func saveSettings(ctx context.Context, q *qmp.Client) (*Settings, error) {
	caps, err := q.Capabilities(ctx)
	if err != nil {
		return nil, err
	}
	params, err := q.Parameters(ctx)
	if err != nil {
		return nil, err
	}
	return &Settings{Capabilities: caps, Parameters: params}, nil
}

// restoreSettings writes saved settings back. QEMU refuses capabilities during a migration: call it after.
func restoreSettings(ctx context.Context, q *qmp.Client, saved *Settings) error {
	if saved == nil {
		return nil
	}
	if err := q.SetCapabilities(ctx, saved.Capabilities); err != nil {
		return err
	}
	return q.SetParameters(ctx, saved.Parameters)
}

// reportOutcome writes the machine's verdict into the VM's report.
func (m *vmMigration) reportOutcome(a commit.Action) {
	r, name := m.vm.report, m.vm.spec.Name
	if r.Status == report.StatusUnresolved && r.Error != "" { // a journal failure said it first
		return
	}
	switch a.Status {
	case commit.StatusMigrated:
		r.Status = report.StatusMigrated // the progress line comes from finish, with the figures
		return
	case commit.StatusRolledBack:
		r.Status = report.StatusRolledBack
	case commit.StatusUnresolved:
		r.Status = report.StatusUnresolved
	default:
		r.Status = report.StatusFailed
	}
	r.Error = a.Reason
	m.s.progress.set(name, string(r.Status), a.Reason)
}

// journal writes the VM's record with the machine's entry (and the source's saved settings, once known).
func (m *vmMigration) journal(e commit.Entry, status, reason string, saved ...*Settings) error {
	if m.s.journal == nil {
		return nil
	}
	rec := m.record
	rec.VM, rec.Epoch, rec.Phase, rec.Updated = m.vm.spec.Name, e.Epoch, e.Phase.String(), time.Now().UTC()
	rec.Target, rec.QMP, rec.PID, rec.WasRunning = m.vm.target.addr, m.vm.spec.QMP, m.vm.pid, m.vm.wasRunning
	rec.Status, rec.Reason = status, reason
	if len(saved) > 0 {
		rec.Saved = saved[0]
	}
	if err := m.s.journal.Put(vmRecordName(m.vm.spec.Name), rec); err != nil {
		return err
	}
	m.record = rec
	return nil
}

// finish settles what the machine left: the migration's goroutines end, the connection closes, the report gets
// the VM's figures, and the journal its outcome.
func (m *vmMigration) finish() {
	m.endMigration()
	r := m.vm.report
	m.mu.Lock()
	sc := m.sc
	m.sc, m.connGen = nil, m.connGen+1 // its reader no longer counts it: it is counted here, once
	m.mu.Unlock()
	if sc != nil {
		r.WireBytes = sc.BytesOut()
		sc.Close()
	}
	r.Pages = m.pages
	if !m.started.IsZero() {
		r.MigrationMS = time.Since(m.started).Milliseconds()
	}
	m.mu.Lock()
	runningAt := m.runningAt
	r.WireBytes += m.lostBytes
	m.mu.Unlock()
	if at := m.stoppedAt(); !at.IsZero() && r.Status == report.StatusMigrated && !runningAt.IsZero() {
		// QEMU did not make this stop and does not count it: the downtime runs from our stop to RUNNING.
		r.DowntimeMS = runningAt.Sub(at).Milliseconds()
	}
	if r.Status == report.StatusMigrated {
		m.s.progress.set(m.vm.spec.Name, "migrated", fmt.Sprintf("%s on the wire, downtime %d ms", fmtBytes(r.WireBytes), r.DowntimeMS))
	}
	e := commit.Entry{Phase: m.machine.Phase(), Epoch: m.s.epoch}
	if last, ok := commit.ParsePhase(m.record.Phase); ok && e.Phase == commit.Unresolved {
		// Unresolved is never journaled over the last phase: recover decides from it (a VM left after START
		// was decided must never be resumed at the source), and the status says it is unresolved.
		e.Phase = last
	}
	m.record.Linger = m.machine.DestMayLinger()
	if err := m.journal(e, string(r.Status), r.Error); err != nil {
		m.log.Error("journal write failed", "err", err)
	}
}

// noteFirstOutput turns the destination's first console line after START into the guest-observed downtime.
func (m *vmMigration) noteFirstOutput(unixMS int64) {
	if unixMS <= 0 || m.mig == nil || m.mig.console == nil {
		return
	}
	if last := m.mig.console.LastLine(); !last.IsZero() {
		m.vm.report.GuestDowntimeMS = unixMS - last.UnixMilli()
	}
}
