package source

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/qemu"
	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/converge"
	"github.com/vmscatter/vmscatter/scatter/host"
	"github.com/vmscatter/vmscatter/scatter/journal"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/secure"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// VMSpec names one source VM and its QMP socket.
type VMSpec struct {
	Name string
	QMP  string
}

// Config configures one scatter run: `vmscatter send`.
type Config struct {
	VMs       []VMSpec
	Targets   []string          // receiver addresses, host:port
	Placement map[string]string // VM name -> target address; VMs not named here are placed by the planner
	Algorithm string            // placement: greedy, ours (default) or exact
	Key       []byte
	HostKey   *secure.HostKey // this host's own key pair (send --host-key); nil: the shared key alone
	Peers     *secure.Peers   // with HostKey: the receivers' public keys it accepts (send --allow-peers)

	Parallel     int           // migrations at once; 0 means min(4, VMs)
	Timeout      time.Duration // bound on each VM's migration; 0 means 10 min
	DialTimeout  time.Duration // bound on connecting to a receiver; 0 means 10 s
	MaxBandwidth int64         // bytes/s QEMU may write into vmscatter; 0 means unlimited
	Policy       converge.Policy

	// Compress is the page compression: auto (default: the literal pages of each stream adapt, dedup.CodecChooser,
	// and the prime uses zstd), zstd, s2 or none; the prime compresses pages in bundles.
	Compress string
	NoDedup  bool // skip the scan and prime: every page travels literal
	// GuestDowntime measures the guest-observed downtime: the gap between the guest's last console line at the
	// source and its first at the destination (serial ports that write to a file only; host clocks must agree).
	GuestDowntime bool

	Transport string // how prime contents travel: auto (default), multicast or unicast
	RateBps   int64  // multicast rate cap, bits/s; 0 means 1 Gbit/s
	Iface     string // data-plane interface for multicast; "" means the one the control connections use

	// StateDir is where the run is journaled (one directory per run), for `vmscatter recover` and `status`; ""
	// means DefaultStateDir.
	StateDir string

	// Checkpoint, if set, is handed the report as it stands after placement and whenever a VM settles, so that a
	// sender that dies leaves a report with each VM's last known state (the journal has its phase).
	Checkpoint func(*report.Report)

	Progress io.Writer    // progress lines; nil means none
	Log      *slog.Logger // nil logs nowhere

	// Libvirt, when set, makes VMs name libvirt domains (send --domains): libvirt carries out each migration, through
	// vmscatter's sockets (libvirt.go).
	Libvirt *LibvirtConfig

	// Seams for tests, which inject faults through them; nil means the ordinary behaviour.
	// Fingerprint is the fast page hash of the scan and of the held index (default dedup.XXHash); a weak one forces
	// collisions, which the exact digest must catch.
	Fingerprint dedup.FingerprintFunc
	// WrapStream wraps the source QEMU's migration stream as vmscatter reads it: a wrapper can cut it short or
	// stall it, as a failing source or link would.
	WrapStream func(vm string, c net.Conn) net.Conn
}

// credentials are what the sender proves and accepts in every handshake (dial).
func (cfg *Config) credentials() secure.Credentials {
	return secure.Credentials{Key: cfg.Key, Host: cfg.HostKey, Peers: cfg.Peers}
}

// Transports for the prime.
const (
	TransportAuto      = "auto"
	TransportMulticast = "multicast"
	TransportUnicast   = "unicast"
)

// sourceVM is what the inventory learned of one VM.
type sourceVM struct {
	spec       VMSpec
	qmp        *qmp.Client
	pid        int
	argv       []string // the destination's command line: the source's, its machine type made concrete
	wasRunning bool
	ramBytes   int64
	vcpus      int // its vCPU threads (query-cpus-fast); at least 1
	target     *targetConn
	report     *report.VMReport
	final      *report.FinalImage // what its destination loaded, for the report's bound
	disks      []wire.DiskMsg     // the identities of its disk images, for the receiver's shared-storage check
	mig        *vmMigration       // its migration, once started
	done       chan struct{}      // closed when its migration has ended and its report is final

	// The source's QEMU version and concrete machine type: a target must run both (targetRuns).
	qemuVersion qmp.Version
	machine     string
}

// targetConn is the control connection to one receiver.
type targetConn struct {
	addr   string
	sc     *secure.Conn
	info   wire.InfoMsg
	err    error            // set if the receiver could not be reached
	held   *dedup.HeldIndex // contents the receiver confirmed holding; nil before the prime
	pinned []uint64         // bitset of contents it holds for no VM in particular (until the session ends)
	// The seed: contents the receiver reads from its own copies of the boot files (a bitset by content id: those
	// it was asked to read until it answers, then those it read), what the held index records of each, and the
	// seed sent and not yet answered.
	seeded      []uint64
	seedHeld    []heldEntry
	seedPending *seedTarget
	// overlap is what the prime's overlap sends this target (nil: nothing): a stream waits for it rather than send
	// one of its contents literal.
	overlap *overlapWait
}

// streamSocketBuffer is the send buffer of a VM stream's socket (the kernel doubles it).
const streamSocketBuffer = 256 << 10

// ErrNothingMigrated is returned, with the report, when the run could not start at all: every VM was refused (the
// inventory, placement) or rolled back before its migration began, so nothing moved. `vmscatter send` exits 1.
var ErrNothingMigrated = errors.New("no VM could be migrated")

// Send runs one scatter: inventory, sessions, scan, placement, prime, the migrations, and the report. The report
// is returned even when some VMs failed; the error is non-nil only when the run could not start at all.
func Send(ctx context.Context, cfg Config) (*report.Report, error) {
	s, err := newSender(cfg)
	if err != nil {
		return nil, err
	}
	return s.run(ctx)
}

func newSender(cfg Config) (*sender, error) {
	if len(cfg.VMs) == 0 {
		return nil, errors.New("no VMs given (--vms NAME=QMP_SOCKET,...)")
	}
	if len(cfg.Targets) == 0 {
		return nil, errors.New("no targets given (--targets HOST:PORT,...)")
	}
	seen := map[string]bool{}
	for _, vm := range cfg.VMs {
		if err := wire.CheckVMName(vm.Name); err != nil {
			return nil, err
		}
		if seen[vm.Name] {
			return nil, fmt.Errorf("VM %s is named twice", vm.Name)
		}
		seen[vm.Name] = true
	}
	if err := cfg.credentials().Check(); err != nil {
		return nil, err
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = min(4, len(cfg.VMs))
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Minute
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.Compress == "" {
		cfg.Compress = compressAuto
	}
	switch cfg.Transport {
	case "":
		cfg.Transport = TransportAuto
	case TransportAuto, TransportMulticast, TransportUnicast:
	default:
		return nil, fmt.Errorf("unknown transport %q: use auto, multicast or unicast", cfg.Transport)
	}
	if cfg.RateBps == 0 {
		cfg.RateBps = 1e9
	}
	if err := cfg.Policy.Validate(); err != nil {
		return nil, err
	}
	codec, adaptive, err := parseCompress(cfg.Compress)
	if err != nil {
		return nil, err
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &sender{cfg: cfg, log: log, codec: codec, adaptive: adaptive, progress: newProgress(cfg.Progress), primed: make(chan struct{}),
		primeTail: make(chan struct{})}
	if _, err := rand.Read(s.session[:]); err != nil {
		return nil, err
	}
	var salt [32]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return nil, err
	}
	s.digester = dedup.NewDigester(salt)
	if cfg.Libvirt != nil {
		if s.virt, err = newLibvirtSource(cfg.Libvirt, s.session, cfg.Policy); err != nil {
			return nil, err
		}
	}
	return s, nil
}

type sender struct {
	cfg Config
	// runStart is when run began: timebound's deadline counts from it, for every VM (set before any migration).
	runStart time.Time
	// epoch is this run's migrations' epoch (docs/commit.md): greater than any a VM's earlier runs journaled.
	epoch          uint64
	journal        *journal.Dir // this run's directory under --state-dir
	stopMigrations func()
	checkpointMu   sync.Mutex
	log            *slog.Logger
	codec          pageCodec // the prime's, and the literals' when not adaptive
	adaptive       bool      // each stream's literals adapt their compression (--compress auto)
	session        wire.SessionID
	progress       *progress
	vms            []*sourceVM
	targets        []*targetConn
	tmpDir         string
	rams           []*qemu.GuestRAM // open for the scan and the prime
	sharing        *dedup.SharingMap
	batches        []primeBatch // the prime's schedule, from placement
	costs          []uint32     // by content id: the wire bytes its prime cost (compressed), for the report's bound
	// digester takes the keyed digests that make references exact, over the bytes each target stores (seed and
	// prime); its salt is fresh for every run.
	digester *dedup.Digester
	// linkRate is the rate the prime achieved on the source link, from the data-plane interface's counters, bytes/s
	// (0: unknown). Datagrams a shaper drops never count, nor do bytes that waited on the CPU. The downtime guard's
	// bound on what one migration can send.
	linkRate float64
	iface    string         // the data-plane interface, for its counters
	streams  atomic.Int32   // pumps running: the streams that share the link now
	virt     *libvirtSource // libvirt domains (Config.Libvirt); nil for QMP VMs
	// primed is closed when the prime's own part is over (done, failed or skipped): linkRate is final from then on,
	// and the held indexes only grow, by what the prime's overlap confirms (prime_overlap.go). The first migrations
	// start before it (openEarly), and their pumps and watches wait for it.
	primed chan struct{}
	// primeTail is closed when the prime's last stage starts (its multicast groups), or with primed: the first
	// migrations' source QEMUs start their migrations then, so that their set-up overlaps the prime's end.
	primeTail     chan struct{}
	primeTailOnce sync.Once
	// openDestinations starts the first migrations (openEarly), once: during the prime, not before it. Four QEMUs
	// starting on the targets as the prime began took the CPU their receivers needed to take in its first
	// contents, and the prime's TCP part reached the link's rate 0.2-0.4 s later (measured on the bench: the prime
	// took 3.95-3.98 s against 4.15-4.64 s).
	openDestinations func()
}

// startDestinations starts the first migrations' destinations, once (openDestinations; nothing before run sets it).
func (s *sender) startDestinations() {
	if s.openDestinations != nil {
		s.openDestinations()
	}
}

// primeTailStarts says the prime is in its last stage.
func (s *sender) primeTailStarts() { s.primeTailOnce.Do(func() { close(s.primeTail) }) }

// A prime smaller than this measures set-up more than the link: the downtime guard then does without a share.
const (
	minRateSampleBytes = 8 << 20
	minRateSampleTime  = 200 * time.Millisecond
)

// linkShare is one migration's share of the source link as the prime measured it, bytes/s; 0 when unknown.
func (s *sender) linkShare() float64 {
	return s.linkRate / float64(max(1, min(s.cfg.Parallel, len(s.vms))))
}

// linkShareNow is one stream's share of the source link among the streams that flow now (0 when unknown): it grows
// as migrations end.
func (s *sender) linkShareNow() float64 {
	return s.linkRate / float64(max(1, s.streams.Load()))
}

// primedLinkShare is linkShare once the prime is over, and 0 (unknown) before: a migration that starts during the
// prime (openEarly) sets QEMU's parameters without it, and its downtime guard, which waits for the prime, corrects
// them.
func (s *sender) primedLinkShare() float64 {
	select {
	case <-s.primed:
		return s.linkShare()
	default:
		return 0
	}
}

// contentCost is what content id cost to bring to target t, for the report's bound: its compressed size as primed,
// or nothing when t read it from a file of its own.
func (s *sender) contentCost(t *targetConn, id dedup.ContentID) (cost uint32, local bool) {
	if t.isSeeded(id) {
		return 0, true
	}
	if int(id) < len(s.costs) {
		cost = s.costs[id]
	}
	return cost, false
}

// targetIndex is t's index in s.targets.
func (s *sender) targetIndex(t *targetConn) int {
	for i, x := range s.targets {
		if x == t {
			return i
		}
	}
	return -1
}

// prepare runs phases 0 and 1: the inventory of every VM and a session with every receiver, concurrently. Call
// release when done.
func (s *sender) prepare(ctx context.Context, rep *report.Report) error {
	var err error
	s.tmpDir, err = os.MkdirTemp("", "vmscatter-")
	if err != nil {
		return err
	}
	s.vms = make([]*sourceVM, len(s.cfg.VMs))
	for i, spec := range s.cfg.VMs {
		s.vms[i] = &sourceVM{spec: spec, report: &report.VMReport{Name: spec.Name, Policy: s.cfg.Policy.Name(), GuestDowntimeMS: -1}}
	}
	s.targets = make([]*targetConn, len(s.cfg.Targets))
	for i, a := range s.cfg.Targets {
		s.targets[i] = &targetConn{addr: a}
	}
	// The sessions connect while the inventory runs; HELLO, which names the VMs' QEMU binaries, waits for it.
	var inv errgroup.Group
	for _, vm := range s.vms {
		inv.Go(func() error { s.inventory(ctx, vm); return nil })
	}
	inventoried := make(chan struct{})
	go func() { inv.Wait(); close(inventoried) }()
	var g errgroup.Group
	for _, t := range s.targets {
		g.Go(func() error { s.openSession(ctx, t, inventoried); return nil })
	}
	g.Wait()
	<-inventoried
	for _, t := range s.targets {
		if t.err != nil {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("receiver %s: %v", t.addr, t.err))
		}
	}
	return nil
}

// release stops the migrations still under way (each at its next safe point), closes the sessions and QMP
// connections and removes the sender's sockets.
func (s *sender) release() {
	if s.stopMigrations != nil {
		s.stopMigrations()
	}
	for _, vm := range s.vms {
		if vm.done != nil {
			<-vm.done
		}
	}
	s.closeSessions()
	for _, r := range s.rams {
		r.Close()
	}
	for _, vm := range s.vms {
		if vm.qmp != nil {
			vm.qmp.Close()
		}
	}
	if s.tmpDir != "" {
		os.RemoveAll(s.tmpDir)
	}
}

func (s *sender) run(ctx context.Context) (*report.Report, error) {
	start := time.Now()
	s.runStart = start
	rep := &report.Report{Version: report.ReportVersion, Session: s.session.String(), Started: start.UTC(), Transport: "unicast",
		Policy: s.cfg.Policy.Name()}
	phase := phaseClock{last: start}
	held, err := s.openJournal(start)
	if err != nil {
		return nil, err
	}
	if err := s.prepare(ctx, rep); err != nil {
		return nil, err
	}
	defer s.release()
	for _, vm := range s.vms {
		if why, ok := held[vm.spec.Name]; ok && vm.report.Status == "" {
			vm.report.Status, vm.report.Error = report.StatusRolledBack, why
			s.progress.set(vm.spec.Name, "refused", why)
		}
	}
	rep.Totals.Phases.Prepare = phase.lap()

	// The source link's counters: what left the data-plane interface during the run.
	iface := s.cfg.Iface
	for _, t := range s.targets {
		if iface == "" && t.sc != nil {
			iface, _ = host.IfaceFor(t.sc.LocalAddr())
		}
	}
	s.iface = iface
	tx0, txErr := host.TxBytes(iface)
	defer func() {
		rep.Totals.SourceLinkBytes = -1
		if tx1, err := host.TxBytes(iface); err == nil && txErr == nil {
			rep.Totals.SourceLinkBytes = tx1 - tx0
		}
	}()

	// Phase 2: the scan, unless turned off. The seed's index of the boot files is built beside it.
	var sm *dedup.SharingMap
	boot := func() *bootIndex { return &bootIndex{} }
	if !s.cfg.NoDedup {
		indexed := make(chan *bootIndex, 1)
		go func() { indexed <- s.indexBootFiles() }()
		boot = sync.OnceValue(func() *bootIndex { return <-indexed })
		defer func() { boot().close() }()
		sm = s.scan(ctx, rep)
		s.sharing = sm
	}
	rep.Totals.Phases.Scan = phase.lap()
	// Phase 3: placement.
	if err := s.place(sm, rep); err != nil {
		return nil, err
	}
	rep.Totals.Phases.Place = phase.lap()
	s.checkpoint(rep)
	// The migrations' own context: the operator's stop (ctx) reaches each as Stop, which it obeys at its next safe
	// point; release stops those the run abandons.
	mctx, stopMigrations := context.WithCancelCause(context.WithoutCancel(ctx))
	s.stopMigrations = func() { stopMigrations(errors.New("the run ended")) }
	context.AfterFunc(ctx, func() { stopMigrations(context.Cause(ctx)) })
	if sm != nil {
		s.seedBuild(sm, rep, boot())
	}
	// The first migrations' destinations start while the prime runs, once its TCP part has reached the link's rate
	// (primer.flush), or at its first multicast batch, or at its end, whichever comes first.
	s.openDestinations = sync.OnceFunc(func() { s.openEarly(mctx) })
	rep.Totals.Phases.Seed = phase.lap()
	// Phase 5: the prime. A failed prime costs bytes, never correctness: pages then travel literal.
	primeRate := host.IfaceRate{Iface: iface, MinBytes: minRateSampleBytes, MinTime: minRateSampleTime}
	primeRate.Start()
	var ov *overlap
	if sm != nil {
		var err error
		if ov, err = s.prime(ctx, sm, rep); err != nil {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("prime failed, pages travel literal: %v", err))
		}
	}
	s.startDestinations()
	rep.Totals.Phases.Prime = phase.lap()
	s.linkRate = primeRate.Rate()
	close(s.primed)
	s.primeTailStarts()
	// The prime's overlap runs beside the streams; once the migrations are over nothing needs the rest of it.
	octx, stopOverlap := context.WithCancel(ctx)
	defer stopOverlap()
	overlapDone := make(chan struct{})
	if ov != nil {
		go func() { defer close(overlapDone); ov.run(octx) }()
	} else {
		close(overlapDone)
	}

	// Phase 6: the migrations, a bounded number at once.
	var mg errgroup.Group
	mg.SetLimit(s.cfg.Parallel)
	for _, vm := range s.vms {
		// A VM the inventory or placement settled is left out. One that openEarly started is its migration's
		// to report on from then on: its Status is read once it is done.
		if vm.mig == nil && vm.report.Status != "" {
			continue
		}
		mg.Go(func() error {
			if vm.mig == nil {
				s.startMigration(mctx, vm)
				close(vm.mig.gate)
			}
			<-vm.done
			s.checkpoint(rep)
			return nil
		})
	}
	mg.Wait()
	rep.Totals.Phases.Migrate = phase.lap()
	select {
	case <-overlapDone:
		if ov != nil {
			ov.merge(rep, false)
		}
	default:
		stopOverlap()
		<-overlapDone
		ov.merge(rep, true)
	}

	var images []*report.FinalImage
	for _, vm := range s.vms {
		rep.VMs = append(rep.VMs, *vm.report)
		if vm.report.Status == report.StatusMigrated {
			images = append(images, vm.final)
		}
	}
	fb := report.ComputeFinalBound(images, s.costs)
	rep.Totals.FinalDistinctPages, rep.Totals.PrimeUnusedBytes = fb.DistinctPages, fb.PrimeUnused
	rep.Totals.FinalBoundUnicastBytes, rep.Totals.FinalBoundMulticastBytes = fb.Unicast, fb.Multicast
	rep.Totals.FinalBoundBytes = fb.Unicast
	if rep.Transport == TransportMulticast {
		rep.Totals.FinalBoundBytes = fb.Multicast
	}
	rep.Totals.ElapsedMS = time.Since(start).Milliseconds()
	rep.Sum()
	if rep.Totals.Migrated == 0 && rep.Totals.VMs > 0 && allUntouched(rep) {
		return rep, fmt.Errorf("%w: %s", ErrNothingMigrated, rep.VMs[0].Error)
	}
	return rep, nil
}

// phaseClock times consecutive phases.
type phaseClock struct{ last time.Time }

// lap returns the milliseconds since the previous lap (or the start) and starts the next.
func (c *phaseClock) lap() int64 {
	now := time.Now()
	d := now.Sub(c.last)
	c.last = now
	return d.Milliseconds()
}

func allUntouched(rep *report.Report) bool {
	for _, v := range rep.VMs {
		if v.Status != report.StatusRolledBack || v.MigrationMS != 0 {
			return false
		}
	}
	return true
}

// checkpoint hands Config.Checkpoint a copy of the report as it stands: every VM's line, settled or not (a VM
// under way shows no status yet).
func (s *sender) checkpoint(rep *report.Report) {
	if s.cfg.Checkpoint == nil {
		return
	}
	s.checkpointMu.Lock()
	defer s.checkpointMu.Unlock()
	snap := *rep
	snap.VMs = nil
	for _, vm := range s.vms {
		settled := true
		if vm.done != nil {
			select {
			case <-vm.done:
			default:
				settled = false
			}
		}
		if !settled { // its report is its driver's until then: only what placement wrote is read
			snap.VMs = append(snap.VMs, report.VMReport{Name: vm.spec.Name, Target: vm.report.Target, Policy: vm.report.Policy,
				RAMBytes: vm.report.RAMBytes, Error: "under way", GuestDowntimeMS: -1})
			continue
		}
		snap.VMs = append(snap.VMs, *vm.report)
	}
	snap.Sum()
	s.cfg.Checkpoint(&snap)
}
