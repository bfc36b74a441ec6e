package dest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/scatter/host"
	"github.com/vmscatter/vmscatter/scatter/secure"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// Config configures the receiver daemon.
type Config struct {
	DataDir    string       // destination VMs live in DataDir/<vm>/
	Key        []byte       // the shared key (see LoadKey)
	StoreLimit int64        // bytes of primed content held per session; 0 means DefaultStoreLimit
	Capacity   uint64       // memory offered to migrated VMs, for placement; 0 means what is available
	Iface      string       // interface for multicast; "" means the one the control connection arrives on
	MaxVMs     int          // VMs accepted per run, for placement; 0 means no limit
	Log        *slog.Logger // nil logs nowhere

	// QEMU is the binary every destination runs (receive --qemu); "" means the source's binary name (argv[0]'s base
	// name) looked up on this host's PATH.
	QEMU string

	LoadTimeout time.Duration // from the end of the source stream to the destination being loaded; 0 means 2 min
	RefWait     time.Duration // how long a reference may wait for content still in flight; 0 means 30 s
	Bounds      Bounds        // how long a VM's migration may stay in each phase (bounds.go); zero: the defaults

	// Seams for tests, which inject faults through them; nil means the ordinary behaviour.
	// WrapConn wraps every accepted connection before the handshake: a wrapper can cut it, as a dying receiver or
	// a broken link would.
	WrapConn func(net.Conn) net.Conn
	// OpenSeedFile opens a boot file for the seed (default: openSeedFile's checks, then os.Open).
	OpenSeedFile func(path string) (*os.File, error)
}

// DefaultStoreLimit bounds a session's content store when no limit is configured.
const DefaultStoreLimit = 4 << 30

// Receiver accepts sessions from senders and runs destination QEMUs. It is safe for concurrent use: each connection
// has its own goroutine, and each VM a driver loop of its own (vm.go); the session and VM tables are guarded by mu.
type Receiver struct {
	cfg    Config
	log    *slog.Logger
	bounds Bounds

	mu       sync.Mutex
	cond     *sync.Cond // on mu: a VM loop ended, or a VM came to rest
	sessions map[wire.SessionID]*session
	vms      map[string]*vmDriver // every VM this receiver knows: its commit machine, the latest epoch's
	loops    int                  // VM loops running
	stopping bool                 // Serve's context ended: the VMs are being brought to rest
	closed   bool                 // Serve returned: nothing more is posted to a VM
	wg       sync.WaitGroup
	probes   probeCache // what the QEMU binaries said of themselves
}

// session is one sender's run on this receiver: its content store, shared by the VMs it migrates here.
type session struct {
	id    wire.SessionID
	store *dedup.ContentStore
	users int // control connection + VM connections still open
}

// NewReceiver checks the configuration and returns a receiver.
func NewReceiver(cfg Config) (*Receiver, error) {
	if len(cfg.Key) < secure.MinKeyLen {
		return nil, fmt.Errorf("the key must be at least %d bytes (create one with `vmscatter keygen`)", secure.MinKeyLen)
	}
	if cfg.DataDir == "" {
		return nil, errors.New("no data directory (--data-dir)")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	if cfg.StoreLimit == 0 {
		cfg.StoreLimit = DefaultStoreLimit
	}
	if cfg.LoadTimeout == 0 {
		cfg.LoadTimeout = 2 * time.Minute
	}
	if cfg.RefWait == 0 {
		cfg.RefWait = 30 * time.Second
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Receiver{cfg: cfg, log: log, bounds: cfg.Bounds.withDefaults(cfg.LoadTimeout),
		sessions: map[wire.SessionID]*session{}, vms: map[string]*vmDriver{}}
	r.cond = sync.NewCond(&r.mu)
	if err := r.checkQEMU(); err != nil {
		return nil, err
	}
	return r, nil
}

// Serve first restores every VM the data directory's journal records (restore.go), then accepts connections until
// ctx ends. Then it closes the listener, tells every VM's machine to stop (Stop) and waits until each is at rest
// (restore.go: a destination that had not loaded is torn down, one that START reached runs on, a loaded one stays
// paused for the sender's word), closes the remaining connections and returns.
func (r *Receiver) Serve(ctx context.Context, ln net.Listener) error {
	r.restore()
	r.log.Info("receiver listening", "addr", ln.Addr().String(), "data_dir", r.cfg.DataDir)
	go func() { <-ctx.Done(); ln.Close() }()
	var conns sync.Map
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		conns.Store(c, true)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer conns.Delete(c)
			r.handle(ctx, c)
		}()
	}
	r.stopVMs()
	conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
	r.wg.Wait()
	r.waitVMs()
	r.log.Info("receiver stopped")
	return nil
}

func (r *Receiver) handle(ctx context.Context, c net.Conn) {
	if r.cfg.WrapConn != nil {
		c = r.cfg.WrapConn(c)
	}
	defer c.Close()
	peer := c.RemoteAddr().String()
	sc, role, err := secure.ServerHandshake(c, r.cfg.Key)
	if err != nil {
		if errors.Is(err, secure.ErrAuth) {
			r.log.Warn("refused connection: the peer does not know the key", "peer", peer, "err", err)
		} else {
			r.log.Warn("refused connection", "peer", peer, "err", err)
		}
		return
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
	groups := &groupSet{log: r.log}
	defer groups.close()
	var seed *seedReader
	defer func() {
		if seed != nil {
			seed.close()
		}
	}()
	hostname, _ := os.Hostname()
	_, avail := host.MemInfo()
	if err := sc.SendJSON(wire.FrameInfo, wire.InfoMsg{Host: hostname, MemAvailable: avail, CPUs: runtime.NumCPU(),
		StoreLimit: r.cfg.StoreLimit, Capacity: r.cfg.Capacity, MaxVMs: r.cfg.MaxVMs, QEMU: r.qemuInfos(ctx, hello.QEMU)}); err != nil {
		return err
	}
	for {
		t, b, err := sc.Recv()
		if err != nil {
			return err
		}
		switch t {
		case wire.FrameContent:
			if err := putContentRecords(s.store, b); err != nil {
				r.log.Warn("prime content refused", "session", s.id, "err", err)
				return sc.SendJSON(wire.FrameError, wire.ErrorMsg{Error: err.Error()})
			}
		case wire.FramePrimeDone:
			var m wire.PrimeDoneMsg
			if err := wire.Unmarshal(t, b, &m); err != nil {
				return err
			}
			st := s.store.Stats()
			if err := sc.SendJSON(wire.FramePrimeAck, wire.PrimeAckMsg{Held: st.Contents, Bytes: st.Used}); err != nil {
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
			err := groups.join(ctx, m, sc.LocalAddr(), s.store, r.cfg.Iface)
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

// attach finds or creates a session and counts one more user of it.
func (r *Receiver) attach(id wire.SessionID, create bool) *session {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sessions[id]
	if s == nil {
		if !create {
			return nil
		}
		s = &session{id: id, store: dedup.NewContentStore(r.cfg.StoreLimit, nil)}
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
		r.log.Info("session closed", "session", s.id)
	}
}
