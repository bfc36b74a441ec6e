package dest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/qemu"
	"github.com/vmscatter/vmscatter/scatter/host"
	"github.com/vmscatter/vmscatter/scatter/secure"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// Config configures the receiver daemon.
type Config struct {
	DataDir    string          // destination VMs live in DataDir/<vm>/
	Key        []byte          // the shared key (see LoadKey)
	HostKey    *secure.HostKey // this receiver's own key pair (receive --host-key); nil: the shared key alone
	Peers      *secure.Peers   // with HostKey: the senders' public keys it accepts (receive --allow-peers)
	StoreLimit int64           // memory for a session's content store (its index); 0 means DefaultStoreLimit
	StoreDisk  int64           // bytes of the data dir a session's store may take; 0 means half its free space
	Capacity   uint64          // memory offered to migrated VMs, for placement; 0 means what is available
	Iface      string          // interface for multicast; "" means the one the control connection arrives on
	MaxVMs     int             // VMs accepted per run, for placement; 0 means no limit
	Log        *slog.Logger    // nil logs nowhere

	// AllowPaths are the directories, besides DataDir, that guest files may come from: the shared storage of disks,
	// kernels and initrds, memory-backend files (`receive --allow-path`). A destination's command line and the seed
	// use nothing outside them (qemu.ApplyPolicy, openBootFile).
	AllowPaths []string
	// RunAs is the user destination QEMUs drop to (`receive --runas`); "" leaves them as the receiver's user.
	RunAs string

	// MaxHandshakes bounds the connections still in their handshake, in all; MaxHandshakesPerHost, those from one
	// source address. 0 means DefaultMaxHandshakes and DefaultMaxHandshakesPerHost.
	MaxHandshakes, MaxHandshakesPerHost int

	// QEMU is the binary every destination runs (receive --qemu); "" means the source's binary name (argv[0]'s base
	// name) looked up on this host's PATH.
	QEMU string

	// NoPrefault turns off the allocation of each launched destination's RAM while the prime runs (prefault.go;
	// `receive --prefault=false`): the zero Config prefaults, as receive does by default.
	NoPrefault bool

	LoadTimeout time.Duration // from the end of the source stream to the destination being loaded; 0 means 2 min
	RefWait     time.Duration // how long a reference may wait for content still in flight; 0 means 30 s
	Bounds      Bounds        // how long a VM's migration may stay in each phase (bounds.go); zero: the defaults

	// Seams for tests, which inject faults through them; nil means the ordinary behaviour.
	// WrapConn wraps every accepted connection before the handshake: a wrapper can cut it, as a dying receiver or
	// a broken link would.
	WrapConn func(net.Conn) net.Conn
	// OpenSeedFile opens a boot file for the seed (default: openBootFile under DataDir and AllowPaths).
	OpenSeedFile func(path string) (*os.File, error)
}

// DefaultStoreLimit bounds the memory of a session's content store when no limit is configured: about 6.7 million
// contents (26 GiB of pages on the data dir) at dedup.StoreIndexBytesPerContent.
const DefaultStoreLimit = 1 << 30

// Receiver accepts sessions from senders and runs destination QEMUs. It is safe for concurrent use: each connection
// has its own goroutine, and each VM a driver loop of its own (vm.go); the session and VM tables are guarded by mu.
type Receiver struct {
	cfg        Config
	log        *slog.Logger
	bounds     Bounds
	roots      []allowedRoot // DataDir and AllowPaths, resolved
	gate       *handshakeGate
	refusals   *refusalLog // refused connections
	acceptErrs *refusalLog // accept failures (descriptors or memory short), logged apart so a flood hides none

	mu       sync.Mutex
	cond     *sync.Cond // on mu: a VM loop ended, or a VM came to rest
	sessions map[wire.SessionID]*session
	vms      map[string]*vmDriver // every VM this receiver knows: its commit machine, the latest epoch's
	loops    int                  // VM loops running
	stopping bool                 // Serve's context ended: the VMs are being brought to rest
	closed   bool                 // Serve returned: nothing more is posted to a VM
	wg       sync.WaitGroup
	probes   probeCache // what the QEMU binaries said of themselves
	sockets  socketDirs // libvirt migrations' socket directories, shared by a run's VMs
}

// session is one sender's run on this receiver: its content store, shared by the VMs it migrates here.
type session struct {
	id         wire.SessionID
	store      *dedup.ContentStore
	closeStore func() // closes the store's file, after store.Close
	users      int    // control connection + VM connections still open
}

// NewReceiver checks the configuration and returns a receiver.
func NewReceiver(cfg Config) (*Receiver, error) {
	if err := cfg.credentials().Check(); err != nil {
		return nil, err
	}
	if cfg.DataDir == "" {
		return nil, errors.New("no data directory (--data-dir)")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	cleanStores(cfg.DataDir)
	if cfg.StoreLimit == 0 {
		cfg.StoreLimit = DefaultStoreLimit
	}
	if cfg.LoadTimeout == 0 {
		cfg.LoadTimeout = 2 * time.Minute
	}
	if cfg.RefWait == 0 {
		cfg.RefWait = 30 * time.Second
	}
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	cfg.DataDir = dataDir
	roots, err := resolveRoots(append([]string{cfg.DataDir}, cfg.AllowPaths...))
	if err != nil {
		return nil, err
	}
	if cfg.RunAs != "" {
		if _, err := user.Lookup(cfg.RunAs); err != nil {
			return nil, fmt.Errorf("--runas: %w", err)
		}
		// A destination that dropped to the user reaches its own directory (qemu.PrepareVMDir) through this one:
		// others may traverse it, not list it.
		if err := os.Chmod(cfg.DataDir, 0o751); err != nil {
			return nil, fmt.Errorf("data directory: %w", err)
		}
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = DefaultMaxHandshakes
	}
	if cfg.MaxHandshakesPerHost <= 0 {
		cfg.MaxHandshakesPerHost = DefaultMaxHandshakesPerHost
	}
	r := &Receiver{cfg: cfg, log: log, bounds: cfg.Bounds.withDefaults(cfg.LoadTimeout), roots: roots,
		gate: newHandshakeGate(cfg.MaxHandshakes, cfg.MaxHandshakesPerHost), refusals: newRefusalLog(log),
		acceptErrs: newRefusalLog(log), sessions: map[wire.SessionID]*session{}, vms: map[string]*vmDriver{}}
	r.cond = sync.NewCond(&r.mu)
	if r.cfg.OpenSeedFile == nil {
		r.cfg.OpenSeedFile = func(p string) (*os.File, error) { return openBootFile(p, r.roots) }
	}
	if err := r.checkQEMU(); err != nil {
		return nil, err
	}
	return r, nil
}

// Serve first restores every VM the data directory's journal records (restore.go), then accepts connections until
// ctx ends. Then it closes the listener, tells every VM's machine to stop (Stop) and waits until each is at rest
// (restore.go: a destination that had not loaded is torn down, one that START reached runs on, a loaded one stays
// paused for the sender's word), closes the remaining connections and returns. A connection still in its handshake
// counts against the handshake limits (Config.MaxHandshakes, MaxHandshakesPerHost); over them it is answered "busy"
// and closed at once. Accept errors that say the system is short of descriptors or memory for now (EMFILE, ENFILE,
// ...) make it wait and accept again; they never end it.
func (r *Receiver) Serve(ctx context.Context, ln net.Listener) error {
	r.restore()
	r.log.Info("receiver listening", "addr", ln.Addr().String(), "data_dir", r.cfg.DataDir)
	go r.warmProbes(ctx)
	go func() { <-ctx.Done(); ln.Close() }()
	var conns sync.Map
	failures := 0 // temporary accept errors in a row
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if !temporaryAcceptError(err) {
				return err
			}
			failures++
			wait := acceptBackoff(failures)
			r.acceptErrs.warn("accept failed; waiting before the next", "err", err, "wait", wait)
			select {
			case <-time.After(wait):
			case <-ctx.Done():
			}
			continue
		}
		failures = 0
		host := hostOf(c.RemoteAddr())
		if !r.gate.enter(host) {
			secure.Refuse(c, secure.StatusBusy)
			c.Close()
			r.refusals.warn("refused connection: too many handshakes in progress", "peer", c.RemoteAddr().String())
			continue
		}
		conns.Store(c, true)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer conns.Delete(c)
			r.handle(ctx, c, func() { r.gate.leave(host) })
		}()
	}
	r.stopVMs()
	conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
	r.wg.Wait()
	r.waitVMs()
	r.log.Info("receiver stopped")
	return nil
}

// handle runs one connection: the handshake (after which it calls handshakeDone), then its role.
func (r *Receiver) handle(ctx context.Context, c net.Conn, handshakeDone func()) {
	if r.cfg.WrapConn != nil {
		c = r.cfg.WrapConn(c)
	}
	defer c.Close()
	peer := c.RemoteAddr().String()
	sc, role, err := secure.ServerHandshake(c, r.cfg.credentials())
	handshakeDone()
	if err != nil {
		if errors.Is(err, secure.ErrAuth) {
			r.refusals.warn("refused connection: the peer does not know the key or is not allowed", "peer", peer, "err", err)
		} else {
			r.refusals.warn("refused connection", "peer", peer, "err", err)
		}
		return
	}
	if name := sc.Peer(); name != "" {
		peer += " (" + name + ")"
	}
	// A connection's goroutine ends when the peer hangs up, or when ctx ends (a control connection) or Serve has
	// brought the VMs to rest (a VM connection).
	switch role {
	case secure.RoleControl:
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
		err = r.serveControl(ctx, sc, peer)
	case secure.RoleVM:
		err = r.serveVM(ctx, sc, peer)
	}
	if err != nil && ctx.Err() == nil {
		r.log.Warn("connection ended with an error", "peer", peer, "err", err)
	}
}

func (r *Receiver) serveControl(ctx context.Context, sc *secure.Conn, peer string) error {
	var hello wire.HelloMsg
	if err := sc.Expect(ctx, wire.FrameHello, &hello); err != nil {
		return err
	}
	s := r.attach(hello.Session, true)
	defer r.detach(s)
	r.log.Info("session opened", "session", s.id, "sender", hello.Sender, "peer", peer)
	groups := newGroupSet(r.log, s.store)
	defer groups.close()
	var seed *seedReader
	var refused []uint32 // CONTENT the store had no room for, reported missing at PRIME_DONE
	defer func() {
		if seed != nil {
			seed.close()
		}
	}()
	hostname, _ := os.Hostname()
	_, avail := host.MemInfo()
	storeLimit := r.cfg.StoreLimit
	if s.store.Capacity() == 0 {
		storeLimit = 0 // no store (openStore): an old sender reads the limit
	}
	if err := sc.SendJSON(wire.FrameInfo, wire.InfoMsg{Host: hostname, MemAvailable: avail, CPUs: runtime.NumCPU(),
		StoreLimit: storeLimit, StoreContents: s.store.Capacity(), Capacity: r.cfg.Capacity, MaxVMs: r.cfg.MaxVMs, QEMU: r.qemuInfos(ctx, hello.QEMU)}); err != nil {
		return err
	}
	for {
		t, b, err := sc.Recv()
		if err != nil {
			return err
		}
		switch t {
		case wire.FrameContent:
			before := len(refused)
			if err := putContentRecords(s.store, b, &refused); err != nil {
				r.log.Warn("prime content refused", "session", s.id, "err", err)
				return sc.SendJSON(wire.FrameError, wire.ErrorMsg{Error: err.Error()})
			}
			if len(refused) > before && before == 0 {
				r.log.Warn("content store full: contents refused, their pages will travel literal", "session", s.id,
					"capacity", s.store.Capacity())
			}
		case wire.FramePrimeDone:
			var m wire.PrimeDoneMsg
			if err := wire.Unmarshal(t, b, &m); err != nil {
				return err
			}
			missing, drops := groups.verify.settle()
			if len(refused) > 0 {
				r.log.Warn("contents refused for want of room in the store", "session", s.id, "refused", len(refused))
				missing = append(missing, refused...)
				slices.Sort(missing)
				missing = slices.Compact(missing)
				refused = refused[:0]
			}
			if drops > 0 {
				r.log.Warn("multicast contents dropped: not matching their digests, or none came", "session", s.id,
					"dropped", drops, "missing", len(missing))
			}
			st := s.store.Stats()
			if err := sc.SendJSON(wire.FramePrimeAck, wire.PrimeAckMsg{Held: st.Contents, Bytes: st.Used, Missing: missing}); err != nil {
				return err
			}
		case wire.FrameSeedFiles:
			var m wire.SeedFilesMsg
			if err := wire.Unmarshal(t, b, &m); err != nil {
				return err
			}
			if seed != nil {
				seed.close()
			}
			if seed, err = openSeed(s.store, m, r.cfg.OpenSeedFile); err != nil {
				return sc.SendJSON(wire.FrameError, wire.ErrorMsg{Error: err.Error()})
			}
		case wire.FrameSeed:
			if seed == nil {
				return fmt.Errorf("%w: SEED before SEED_FILES", wire.ErrFrame)
			}
			if err := seed.records(b); err != nil {
				r.log.Warn("seed refused", "session", s.id, "err", err)
				return sc.SendJSON(wire.FrameError, wire.ErrorMsg{Error: err.Error()})
			}
		case wire.FrameSeedDone:
			if seed == nil {
				return fmt.Errorf("%w: SEED_DONE before SEED_FILES", wire.ErrFrame)
			}
			ack := wire.SeedAckMsg{Held: seed.held, Missing: seed.missing, Errors: seed.errs}
			r.log.Info("seed done", "session", s.id, "held", ack.Held, "missing", len(ack.Missing))
			seed.close()
			seed = nil
			if err := sc.SendJSON(wire.FrameSeedAck, ack); err != nil {
				return err
			}
		case wire.FrameJoin:
			var m wire.JoinMsg
			if err := wire.Unmarshal(t, b, &m); err != nil {
				return err
			}
			err := groups.join(ctx, m, sc.LocalAddr(), r.cfg.Iface)
			reply := wire.JoinedMsg{}
			if err != nil {
				r.log.Warn("multicast join failed; the sender serves this target by unicast", "group", m.Group, "err", err)
				reply.Error = err.Error()
			} else {
				r.log.Info("joined multicast group", "group", m.Group, "session", s.id)
			}
			if err := sc.SendJSON(wire.FrameJoined, reply); err != nil {
				return err
			}
		case wire.FrameDigests:
			if err := groups.verify.addDigests(b); err != nil {
				return fmt.Errorf("%w: %s: %v", wire.ErrFrame, t, err)
			}
		case wire.FrameLeave:
			var m wire.LeaveMsg
			if err := wire.Unmarshal(t, b, &m); err != nil {
				return err
			}
			groups.leave(m.Group)
		case wire.FrameBye:
			return nil
		default:
			return fmt.Errorf("%w: %s on a control connection", wire.ErrFrame, t)
		}
	}
}

func (cfg *Config) credentials() secure.Credentials {
	return secure.Credentials{Key: cfg.Key, Host: cfg.HostKey, Peers: cfg.Peers}
}

// qemuPolicy is the policy a destination QEMU of this receiver runs under: host files only in its directory dir, guest
// files only under the data directory and the allowed paths, the sandbox, and RunAs. The VM driver applies it with
// qemu.ApplyPolicy to the rewritten command line before it launches the destination.
func (r *Receiver) qemuPolicy(dir string) qemu.Policy {
	roots := make([]string, len(r.roots))
	for i, rt := range r.roots {
		roots[i] = rt.path
	}
	return qemu.Policy{VMDir: dir, Roots: roots, RunAs: r.cfg.RunAs}
}

// attach finds or creates a session and counts one more user of it.
func (r *Receiver) attach(id wire.SessionID, create bool) *session {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sessions[id]
	if s == nil {
		if !create {
			return nil
		}
		s = &session{id: id}
		s.store, s.closeStore = r.openStore(id)
		r.sessions[id] = s
	}
	s.users++
	return s
}

// detach drops one user; the last one frees the session's content store.
func (r *Receiver) detach(s *session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s.users--
	if s.users == 0 {
		delete(r.sessions, s.id)
		s.store.Close()
		s.closeStore()
		r.log.Info("session closed", "session", s.id)
	}
}
