package source

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmscatter/vmscatter/qemu"
	"github.com/vmscatter/vmscatter/scatter/converge"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/secure"
	"github.com/vmscatter/vmscatter/scatter/virt"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// libvirt-managed VMs (send --domains, docs/libvirt.md). libvirt keeps each domain's lifecycle: its definition,
// disks, locks, Prepare, Perform, Finish and Confirm; vmscatter is the data path under it, as KubeVirt's
// virt-handler is, and its commit machine steps back to observing and reporting. One VM's stages:
//
//   - Inventory (inventoryDomain): the domain's XML and state through virsh, its QEMU pid from libvirt's pidfile,
//     its command line from /proc; the scan reads its RAM as for any VM (the RAM's host address through libvirt's
//     monitor pass-through, which marks the domain tainted).
//   - LIBVIRT_OPEN on a VM connection: the receiver checks the disks and makes the socket's directory; READY.
//   - Its turn: the sender listens on SocketDir/RUN/DOM.sock BEFORE `virsh migrate` starts (libvirt's Perform
//     connects to it at once, and a migration that finds nothing there fails), then runs
//     `virsh migrate --live --p2p --persistent --undefinesource ... --migrateuri unix://SOCK` (virt.MigrateArgs).
//   - The connection libvirt's source daemon makes is the VM's migration stream: the pump decodes, dedups and sends
//     it as today; the receiver's RETURN_PATH frames go back into it, an empty one half-closing it.
//   - virsh's exit is libvirt's verdict: completed (the domain is defined and running on the target, undefined
//     here) or failed (libvirt rolled back: the source runs on). The report names it (libvirt_job).
//   - A failure of vmscatter's path (the receiver lost, the stream broken) closes the source's socket: the source
//     QEMU's migration fails and libvirt rolls back. The operator's stop aborts libvirt's job (domjobabort).

// LibvirtConfig makes a send move libvirt-managed domains (Config.VMs name the domains).
type LibvirtConfig struct {
	Connect string // the source libvirtd's URI (send --connect); "" means virsh's default
	RunDir  string // the source host's libvirt run directory, for the pidfiles; "" means /run/libvirt
	// TargetURIs maps a receiver's address (host:port, as in Targets) to its host's libvirt URI as the source
	// libvirtd reaches it (send --target-connect ADDR=URI); an address not here gets qemu://HOST/system, libvirt's
	// default remote transport (TLS).
	TargetURIs map[string]string
	Virsh      string // the virsh binary; "" means virsh on PATH
	// Unsafe passes --unsafe: libvirt then skips its own check that each disk is on a shared or cluster file
	// system. vmscatter's receiver still checks that every image is the same file at the same path on the target.
	// For labs whose shared storage is a local directory; never needed on NFS, Ceph or a cluster file system.
	Unsafe bool
}

// TargetURI is the libvirt URI of the host of receiver addr.
func (c *LibvirtConfig) TargetURI(addr string) string {
	if u, ok := c.TargetURIs[addr]; ok {
		return u
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return "qemu://" + host + "/system"
}

// libvirtSource is the sender's libvirt side: the source libvirtd and the run's socket directory.
type libvirtSource struct {
	cfg    LibvirtConfig
	client *virt.Client
	run    string // the run's directory name under virt.SocketDir
}

func newLibvirtSource(cfg *LibvirtConfig, session wire.SessionID, policy converge.Policy) (*libvirtSource, error) {
	switch policy.Name() {
	case converge.PolicyPrecopy, converge.PolicyAutoconverge, converge.PolicyTimebound:
	default:
		return nil, fmt.Errorf("--policy %s is not available for libvirt domains: use precopy, autoconverge or timebound", policy.Name())
	}
	return &libvirtSource{cfg: *cfg, client: &virt.Client{URI: cfg.Connect, Virsh: cfg.Virsh, RunDir: cfg.RunDir},
		run: session.String()[:16]}, nil
}

// inventoryDomain is inventory for a libvirt domain.
func (s *sender) inventoryDomain(ctx context.Context, vm *sourceVM) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	fail := func(err error) {
		vm.report.Status, vm.report.Error = report.StatusRolledBack, err.Error()
		s.progress.set(vm.spec.Name, "error", err.Error())
	}
	s.progress.set(vm.spec.Name, "inventory", "")
	lv := s.virt.client
	dom, err := lv.DumpXML(ctx, vm.spec.Name)
	if err != nil {
		fail(err)
		return
	}
	st, err := lv.State(ctx, vm.spec.Name)
	if err != nil {
		fail(err)
		return
	}
	switch st {
	case virt.StateRunning:
		vm.wasRunning = true
	case virt.StatePaused:
	default:
		fail(fmt.Errorf("domain %s is %q; only running or paused domains can be migrated", vm.spec.Name, st))
		return
	}
	for _, d := range dom.Disks {
		if d.Device == "disk" && d.Type != "file" && d.Type != "block" && d.Type != "network" {
			fail(fmt.Errorf("domain %s: disk %s of type %s: vmscatter checks file, block and network disks only", vm.spec.Name, d.Target, d.Type))
			return
		}
	}
	if vm.pid, err = lv.PID(vm.spec.Name); err != nil {
		fail(err)
		return
	}
	if vm.argv, err = qemu.ReadCommandLine(vm.pid); err != nil {
		fail(err)
		return
	}
	vm.report.SourcePID = vm.pid
	ids, err := qemu.IdentifyDisks(vm.argv)
	if err != nil {
		fail(fmt.Errorf("disks: %w", err))
		return
	}
	for _, id := range ids {
		vm.disks = append(vm.disks, wire.DiskMsg(id))
	}
	vm.ramBytes = dom.MemoryKB << 10
	vm.report.RAMBytes = vm.ramBytes
	bin, err := qemu.Probe(ctx, vm.argv[0])
	if err != nil {
		fail(fmt.Errorf("the domain's QEMU: %w", err))
		return
	}
	vm.qemuVersion, vm.machine = bin.Version, dom.Machine
	s.progress.set(vm.spec.Name, "ready", fmt.Sprintf("pid %d, %s RAM, QEMU %s, %s (libvirt)", vm.pid, fmtBytes(vm.ramBytes), vm.qemuVersion, vm.machine))
}

// openDomainRAM opens a domain's guest RAM for the scan: its host address through libvirt's monitor pass-through
// (libvirt offers nothing else that gives it; the domain is marked tainted, which changes nothing else).
func (s *sender) openDomainRAM(ctx context.Context, vm *sourceVM) (*qemu.GuestRAM, error) {
	hmp := func(ctx context.Context, cmd string) (string, error) {
		return s.virt.client.HMP(ctx, vm.spec.Name, cmd)
	}
	return qemu.OpenGuestRAMWith(ctx, hmp, vm.pid)
}

// startLibvirt runs the VM's libvirt-managed migration on a goroutine of its own; done is closed when its outcome
// is in its report.
func (m *vmMigration) startLibvirt(ctx context.Context, done chan<- struct{}) {
	m.opened = time.Now()
	m.s.progress.set(m.vm.spec.Name, "connecting", m.vm.target.addr)
	go func() {
		defer close(done)
		m.runLibvirt(ctx)
	}()
}

// libvirtWait bounds the waits after libvirt's verdict: the pump's end and the receiver's LIBVIRT_DONE.
const libvirtWait = 30 * time.Second

func (m *vmMigration) runLibvirt(ctx context.Context) {
	s, vm, r := m.s, m.vm, m.vm.report
	lv := s.virt
	name := vm.spec.Name
	untouched := func(err error) {
		r.Status, r.Error = report.StatusRolledBack, err.Error()
		s.progress.set(name, "rolled_back", err.Error())
	}
	sock := virt.SocketPath(lv.run, name)
	destURI := lv.cfg.TargetURI(vm.target.addr)
	opts := virt.MigrateOptions{DestURI: destURI, Socket: sock, Unsafe: lv.cfg.Unsafe,
		AutoConverge: s.cfg.Policy.Kind == converge.PolicyAutoconverge}
	if s.cfg.MaxBandwidth > 0 { // send --max-bandwidth, bytes/s; libvirt takes MiB/s
		opts.BandwidthMiB = max(1, s.cfg.MaxBandwidth>>20)
	}
	if _, err := virt.MigrateArgs(name, opts); err != nil {
		untouched(err)
		return
	}
	sc, err := s.dial(ctx, vm.target.addr, secure.RoleVM)
	if err != nil {
		untouched(err)
		return
	}
	m.mu.Lock()
	m.sc = sc
	m.mu.Unlock()
	defer sc.Close()
	open := wire.LibvirtOpenMsg{Session: s.session, VM: name, Slot: s.vmIndex(vm), Socket: sock, Argv: vm.argv, Disks: vm.disks}
	if err := sc.SendJSON(wire.FrameLibvirtOpen, open); err != nil {
		untouched(fmt.Errorf("receiver %s: %w", vm.target.addr, err))
		return
	}
	if err := sc.Expect(ctx, wire.FrameReady, nil); err != nil {
		untouched(fmt.Errorf("receiver %s refused %s: %w", vm.target.addr, name, err))
		return
	}
	r.DestinationStartMS = time.Since(m.opened).Milliseconds()
	select {
	case <-m.gate:
	case <-ctx.Done():
		untouched(fmt.Errorf("the run ended before %s's turn: %w", name, context.Cause(ctx)))
		return
	}

	if s.cfg.Policy.Kind == converge.PolicyTimebound && s.cfg.Policy.Deadline > 0 {
		// libvirt's means: past the deadline (which counts from the run's start) it pauses the source, which
		// starts the stop-and-copy.
		opts.Timeout = max(time.Second, time.Until(s.runStart.Add(s.cfg.Policy.Deadline)))
	}
	// The socket listens before libvirt's Perform connects to it.
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		untouched(err)
		return
	}
	_ = os.Remove(sock) // a socket file a crashed sender left; session ids are random, so never a live one
	ln, err := net.Listen("unix", sock)
	if err != nil {
		untouched(fmt.Errorf("listening on %s: %w", sock, err))
		return
	}
	defer func() {
		ln.Close()
		os.Remove(sock)
		os.Remove(filepath.Dir(sock)) // the run's directory, once its last socket is gone
	}()
	m.started = time.Now()
	s.progress.set(name, "migrating", "libvirt → "+destURI)

	jobCtx, jobCancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.Timeout)
	defer jobCancel()
	// The operator's stop and the run's timeout abort libvirt's job: before the switch-over it rolls back.
	stopAbort := context.AfterFunc(ctx, func() { m.abortJob() })
	defer stopAbort()
	timeoutAbort := context.AfterFunc(jobCtx, func() {
		if errors.Is(jobCtx.Err(), context.DeadlineExceeded) {
			m.abortJob()
		}
	})
	defer timeoutAbort()
	migrated := make(chan error, 1)
	go func() {
		// virsh waits for libvirt's verdict; a minute past the timeout it is given up on (the job is aborted).
		vctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.Timeout+time.Minute)
		defer cancel()
		migrated <- lv.client.Migrate(vctx, name, opts)
	}()

	// The stream: libvirt's source daemon connects, and hands the connection to QEMU. A verdict before that is a
	// migration that failed before Perform reached the socket.
	type accepted struct {
		c   net.Conn
		err error
	}
	acceptCh := make(chan accepted, 1)
	actx, acancel := context.WithCancel(ctx)
	defer acancel()
	go func() {
		c, err := acceptCtx(actx, ln.(*net.UnixListener))
		acceptCh <- accepted{c, err}
	}()
	var (
		migErr     error
		gotVerdict bool
		a          accepted
	)
	select {
	case a = <-acceptCh:
	case migErr = <-migrated:
		gotVerdict = true
		acancel()
		if a = <-acceptCh; a.err == nil {
			a.c.Close()
			a.err = errors.New("libvirt ended the migration as it connected")
		}
	}
	src, aerr := a.c, a.err
	pumped := make(chan error, 1)
	frames := make(chan wire.LibvirtDoneMsg, 1)
	if aerr == nil {
		m.srcWrite.Lock()
		m.src = src
		m.srcWrite.Unlock()
		go m.readLibvirtFrames(sc, frames)
		go func() {
			err := m.pump(jobCtx)
			if err != nil {
				// vmscatter's path broke: the source QEMU's migration fails with it, and libvirt rolls back.
				m.srcWrite.Lock()
				src.Close()
				m.srcWrite.Unlock()
			}
			pumped <- err
		}()
		if s.cfg.Policy.Kind != converge.PolicyTimebound && s.cfg.Policy.Downtime > 0 {
			// The downtime limit acts through libvirt, on the job under way.
			if err := lv.client.SetMaxDowntime(jobCtx, name, s.cfg.Policy.Downtime); err != nil {
				m.log.Warn("setting libvirt's downtime limit", "err", err)
			}
		}
	} else {
		pumped <- fmt.Errorf("libvirt did not connect to %s: %w", sock, aerr)
	}
	// libvirt's verdict.
	if !gotVerdict {
		select {
		case migErr = <-migrated:
		case <-time.After(s.cfg.Timeout + 2*time.Minute):
			migErr = errors.New("virsh migrate did not end")
		}
	}
	var pumpErr error
	select {
	case pumpErr = <-pumped:
	case <-time.After(libvirtWait):
		pumpErr = errors.New("the stream did not end after libvirt's verdict")
	}
	m.srcWrite.Lock()
	if m.src != nil {
		m.src.Close()
	}
	m.srcWrite.Unlock()
	var done wire.LibvirtDoneMsg
	if aerr == nil {
		select {
		case done = <-frames:
		case <-time.After(libvirtWait):
			done.Error = "no LIBVIRT_DONE from the receiver"
		}
	}
	r.Pages = m.pages
	r.MigrationMS = time.Since(m.started).Milliseconds()
	r.WireBytes = sc.BytesOut()
	m.libvirtOutcome(migErr, pumpErr, done, destURI)
}

// abortJob aborts the domain's libvirt job (domjobabort), best effort.
func (m *vmMigration) abortJob() {
	ctx, cancel := context.WithTimeout(context.Background(), qemuCommandWait)
	defer cancel()
	if err := m.s.virt.client.AbortJob(ctx, m.vm.spec.Name); err != nil {
		m.log.Warn("domjobabort", "err", err)
	}
}

// readLibvirtFrames relays the receiver's RETURN_PATH frames into the source's socket (an empty one half-closes
// it) and hands over LIBVIRT_DONE.
func (m *vmMigration) readLibvirtFrames(sc *secure.Conn, done chan<- wire.LibvirtDoneMsg) {
	for {
		t, b, err := sc.Recv()
		if err != nil {
			done <- wire.LibvirtDoneMsg{Error: fmt.Sprintf("receiver %s: %v", m.vm.target.addr, err)}
			m.srcWrite.Lock()
			if m.src != nil {
				m.src.Close() // the receiver is gone: the source QEMU's migration fails, libvirt rolls back
			}
			m.srcWrite.Unlock()
			return
		}
		switch t {
		case wire.FrameReturnPath:
			if len(b) == 0 {
				m.srcWrite.Lock()
				if uc, ok := m.src.(*net.UnixConn); ok {
					_ = uc.CloseWrite()
				}
				m.srcWrite.Unlock()
				continue
			}
			if err := m.returnPath(b); err != nil {
				m.log.Debug("return path to the source", "err", err)
			}
		case wire.FrameLibvirtDone:
			var msg wire.LibvirtDoneMsg
			if err := wire.Unmarshal(t, b, &msg); err != nil {
				msg.Error = err.Error()
			}
			done <- msg
			return
		case wire.FrameError:
			done <- wire.LibvirtDoneMsg{Error: wire.ParseError(b)}
			return
		default:
			m.log.Warn("unexpected frame from the receiver", "frame", t.String())
		}
	}
}

// libvirtOutcome writes libvirt's verdict, checked against both daemons, into the VM's report.
func (m *vmMigration) libvirtOutcome(migErr, pumpErr error, done wire.LibvirtDoneMsg, destURI string) {
	s, vm, r := m.s, m.vm, m.vm.report
	name := vm.spec.Name
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dest := &virt.Client{URI: destURI, Virsh: s.virt.cfg.Virsh}
	if migErr == nil {
		r.LibvirtJob = "completed"
		st, err := dest.State(ctx, name)
		persistent, perr := dest.Persistent(ctx, name)
		here, herr := s.virt.client.Exists(ctx, name)
		switch {
		case err != nil || perr != nil:
			r.Status, r.Error = report.StatusFailed, fmt.Sprintf("libvirt completed the migration, but the target does not answer for %s: %v", name, errors.Join(err, perr))
		case (st != virt.StateRunning && vm.wasRunning) || !persistent:
			r.Status, r.Error = report.StatusFailed, fmt.Sprintf("libvirt completed the migration, but %s is %q (persistent: %v) on the target", name, st, persistent)
		case herr == nil && here:
			r.Status, r.Error = report.StatusFailed, fmt.Sprintf("libvirt completed the migration, but %s is still defined on the source", name)
		default:
			r.Status = report.StatusMigrated
		}
		if ji, err := dest.JobInfo(ctx, name, true); err == nil && ji.DowntimeMS >= 0 {
			r.DowntimeMS = ji.DowntimeMS
		}
		if r.Status == report.StatusMigrated {
			s.progress.set(name, "migrated", fmt.Sprintf("%s on the wire, libvirt's downtime %d ms", fmtBytes(r.WireBytes), r.DowntimeMS))
		} else {
			s.progress.set(name, string(r.Status), r.Error)
		}
		return
	}
	r.LibvirtJob = "failed"
	why := "libvirt: " + migErr.Error()
	if pumpErr != nil {
		why += "; vmscatter's stream: " + pumpErr.Error()
	}
	if done.Error != "" {
		why += "; receiver: " + done.Error
	}
	st, err := s.virt.client.State(ctx, name)
	switch {
	case err == nil && (st == virt.StateRunning || (st == virt.StatePaused && !vm.wasRunning)):
		r.Status, r.Error = report.StatusRolledBack, why+" (libvirt rolled back: the domain runs on at the source)"
	case err == nil:
		r.Status, r.Error = report.StatusFailed, why+fmt.Sprintf(" (the domain is %q at the source: see virsh domstate)", st)
	default:
		r.Status, r.Error = report.StatusUnresolved, why+fmt.Sprintf(" (the source libvirtd does not answer for the domain: %v; check both hosts with virsh list)", err)
	}
	s.progress.set(name, string(r.Status), r.Error)
}
