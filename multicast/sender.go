package multicast

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/vmscatter/vmscatter/multicast/reliable"
	"github.com/vmscatter/vmscatter/multicast/seal"
	"github.com/vmscatter/vmscatter/multicast/wire"
)

// ReceiverID names a receiver in a session: 0 .. wire.MaxReceivers-1, assigned by the control channel.
type ReceiverID = uint16

// Object is one content: its id and its bytes (at most wire.MaxObject).
type Object = reliable.Object

// Config is what both sides of a session share. The control channel exchanges it.
type Config struct {
	Key       [32]byte // per-migration data key
	SessionID uint64   // names the session in every packet header
	RateBps   int64    // the sender's maximum rate in bits per second (default 1 Gbit/s)
	// Tuning adjusts the reliability engine (timers, slow-receiver policy); RateBps above and the
	// transport's datagram size override its RateBps and Datagram.
	Tuning reliable.Config
	Now    func() time.Time // clock; default time.Now
}

func (c Config) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c Config) engine(tr Transport) reliable.Config {
	e := c.Tuning
	if c.RateBps > 0 {
		e.RateBps = c.RateBps
	}
	e.Datagram = tr.Datagram()
	return e.Defaults()
}

// Result says how one Send ended.
type Result struct {
	Completed []ReceiverID // confirmed every object: they hold the data
	Dropped   []ReceiverID // dropped as too slow or silent: serve them another way (unicast)
	Mode      string       // the transport's binding: "multicast", "unicast" or "memory"
}

// SenderStats is a snapshot of a sender's counters.
type SenderStats struct {
	Engine    reliable.SenderStats
	Seal      seal.Snapshot
	Transport TransportStats
	Mode      string
}

// Sender sends batches of objects to sets of receivers over one Transport. Send may be called from
// several goroutines at once; their batches share the rate.
//
// Pipeline (every stage bounded):
//
//	reader goroutine: Transport.Recv → seal.Opener (auth, replay) → in (chan, 64)
//	loop goroutine:   owns the engine, the sealer and the clock; takes in, Send requests and its timer;
//	                  seals each outgoing packet into one reused buffer and calls Transport.Send
//	Send:             hands its batch to the loop and waits for its result or ctx
type Sender struct {
	cfg    Config
	tr     Transport
	eng    *reliable.Sender
	sealer *seal.Sealer
	opener *seal.Opener
	in     chan inPacket
	free   chan []byte
	reqs   chan sendReq
	cancel chan uint64
	ctrl   chan wire.Message
	limits chan int64
	probes chan probeReply

	ctx        context.Context
	stop       context.CancelFunc
	done       chan struct{}
	readerDone chan struct{}
	mu         sync.Mutex
	stats      reliable.SenderStats
	closed     error
}

type inPacket struct {
	from uint16
	msg  wire.Message
	buf  []byte
}

type sendReq struct {
	members wire.Mask
	objs    []Object
	res     chan sendRes
	id      chan uint64
}

type sendRes struct {
	r   reliable.BatchResult
	err error
}

type probeReply struct {
	from  ReceiverID
	nonce uint64
	rtt   time.Duration
}

const (
	inQueue = 64 // packets between the reader and the loop
	bufSize = wire.MaxPacket + 1
)

// LimitRate lowers the sender's maximum rate (bits per second) to what the caller measured the path to carry:
// the rate control starts at the maximum, and a path far slower than it loses most packets until the cuts come
// down to it. Safe for concurrent use; it never blocks.
func (s *Sender) LimitRate(bps int64) {
	select {
	case s.limits <- bps:
	default:
	}
}

// NewSender starts a sender on tr and takes ownership of it (Close closes it).
func NewSender(cfg Config, tr Transport) (*Sender, error) {
	sealer, err := seal.NewSealer(cfg.Key, cfg.SessionID, wire.SenderNode, uint64(time.Now().UnixNano()))
	if err != nil {
		return nil, err
	}
	opener, err := seal.NewOpener(cfg.Key, cfg.SessionID, wire.SenderNode, nil)
	if err != nil {
		return nil, err
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Sender{cfg: cfg, tr: tr, eng: reliable.NewSender(cfg.engine(tr), wire.Seq(rand.Uint32())),
		sealer: sealer, opener: opener, in: make(chan inPacket, inQueue), free: make(chan []byte, inQueue+2),
		reqs: make(chan sendReq), cancel: make(chan uint64, 16), ctrl: make(chan wire.Message, 16), limits: make(chan int64, 4),
		probes: make(chan probeReply, 64), ctx: ctx, stop: stop, done: make(chan struct{}), readerDone: make(chan struct{})}
	for range cap(s.free) {
		s.free <- make([]byte, bufSize)
	}
	go func() {
		defer close(s.readerDone)
		readLoop(ctx, tr, opener, s.free, s.in)
	}()
	go s.loop()
	return s, nil
}

// readLoop is the reader stage of a Sender or Receiver: receive, open, hand over.
func readLoop(ctx context.Context, tr Transport, o *seal.Opener, free chan []byte, in chan<- inPacket) {
	for {
		var buf []byte
		select {
		case buf = <-free:
		case <-ctx.Done():
			return
		}
		for {
			n, err := tr.Recv(buf)
			if err != nil {
				return
			}
			if n > wire.MaxPacket || n > len(buf) {
				o.C.Oversized.Add(1)
				continue
			}
			h, m, err := o.Open(buf[:n])
			if err != nil {
				continue
			}
			select {
			case in <- inPacket{from: h.Node, msg: m, buf: buf}:
			case <-ctx.Done():
				return
			}
			break
		}
	}
}

// Send sends every object to every receiver and blocks until each receiver confirmed or was dropped,
// or ctx ends (the batch is then abandoned). Objects must not change until Send returns.
func (s *Sender) Send(ctx context.Context, receivers []ReceiverID, objects []Object) (Result, error) {
	var m wire.Mask
	for _, id := range receivers {
		if int(id) >= wire.MaxReceivers {
			return Result{}, fmt.Errorf("multicast: receiver id %d over %d", id, wire.MaxReceivers-1)
		}
		m = m.With(id)
	}
	req := sendReq{members: m, objs: objects, res: make(chan sendRes, 1), id: make(chan uint64, 1)}
	select {
	case s.reqs <- req:
	case <-ctx.Done():
		return Result{}, ctx.Err()
	case <-s.done:
		return Result{}, s.err()
	}
	select {
	case r := <-req.res:
		if r.err != nil {
			return Result{}, r.err
		}
		return Result{Completed: r.r.Completed.IDs(), Dropped: r.r.Dropped.IDs(), Mode: s.tr.Mode()}, nil
	case <-ctx.Done():
		select {
		case id := <-req.id:
			select {
			case s.cancel <- id:
			case <-s.done:
			}
		default:
		}
		return Result{}, ctx.Err()
	case <-s.done:
		return Result{}, s.err()
	}
}

// Probe sends PROBEs to the group until every receiver in want answered or timeout passed, and returns
// the receivers heard and the largest round trip seen.
func (s *Sender) Probe(ctx context.Context, want []ReceiverID, timeout time.Duration) ([]ReceiverID, time.Duration, error) {
	nonce := rand.Uint64()
	heard := make(map[ReceiverID]bool)
	var rtt time.Duration
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	every := time.NewTicker(20 * time.Millisecond)
	defer every.Stop()
	all := func() bool {
		for _, id := range want {
			if !heard[id] {
				return false
			}
		}
		return true
	}
	for !all() {
		select {
		case s.ctrl <- &wire.Probe{Nonce: nonce, Nanos: s.cfg.now().UnixNano()}:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-s.done:
			return nil, 0, s.err()
		}
	wait:
		for {
			select {
			case p := <-s.probes:
				if p.nonce == nonce {
					heard[p.from] = true
					rtt = max(rtt, p.rtt)
					if all() {
						break wait
					}
				}
			case <-every.C:
				break wait
			case <-deadline.C:
				return keys(heard), rtt, nil
			case <-ctx.Done():
				return nil, 0, ctx.Err()
			}
		}
	}
	return keys(heard), rtt, nil
}

func keys(m map[ReceiverID]bool) []ReceiverID {
	var m2 wire.Mask
	for id := range m {
		m2 = m2.With(id)
	}
	return m2.IDs()
}

// Stats is a snapshot of the counters. Safe to call from any goroutine.
func (s *Sender) Stats() SenderStats {
	s.mu.Lock()
	st := s.stats
	s.mu.Unlock()
	return SenderStats{Engine: st, Seal: s.opener.C.Snapshot(), Transport: s.tr.Stats(), Mode: s.tr.Mode()}
}

// Mode is the transport's binding.
func (s *Sender) Mode() string { return s.tr.Mode() }

// Close stops the sender and closes its transport. Pending Sends fail.
func (s *Sender) Close() error {
	s.stop()
	err := s.tr.Close()
	<-s.done
	<-s.readerDone
	return err
}

func (s *Sender) err() error {
	if s.closed != nil {
		return s.closed
	}
	return ErrClosed
}

func (s *Sender) loop() {
	defer close(s.done)
	out := make([]byte, 0, bufSize)
	waiting := make(map[uint64]sendReq)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	send := func(o reliable.Outgoing) bool {
		pkt, err := s.sealer.Seal(out, o.Msg)
		if err == nil {
			err = s.tr.Send(o.To, o.Members, pkt)
		}
		if err != nil {
			s.closed = fmt.Errorf("multicast: sender stopped: %w", err)
			return false
		}
		return true
	}
	for {
		select {
		case <-s.ctx.Done():
			return
		case p := <-s.in:
			s.onPacket(p)
		drain:
			for range inQueue {
				select {
				case p := <-s.in:
					s.onPacket(p)
				default:
					break drain
				}
			}
		case r := <-s.reqs:
			id, err := s.eng.Start(s.cfg.now(), r.members, r.objs)
			if err != nil {
				r.res <- sendRes{err: err}
			} else {
				r.id <- id
				waiting[id] = r
			}
		case id := <-s.cancel:
			s.eng.Cancel(id)
			delete(waiting, id)
		case m := <-s.ctrl:
			if !send(reliable.Outgoing{To: reliable.ToGroup, Msg: m}) {
				return
			}
		case bps := <-s.limits:
			s.eng.LimitRate(bps)
		case <-timer.C:
		}
		now := s.cfg.now()
		rd := s.eng.Tick(now)
		for _, o := range rd.Packets {
			if !send(o) {
				return
			}
		}
		for _, d := range rd.Done {
			if r, ok := waiting[d.Batch]; ok {
				r.res <- sendRes{r: d}
				delete(waiting, d.Batch)
			}
		}
		s.mu.Lock()
		s.stats = s.eng.Stats()
		s.mu.Unlock()
		timer.Stop()
		if !rd.Next.IsZero() {
			timer.Reset(max(rd.Next.Sub(now), 0))
		}
	}
}

func (s *Sender) onPacket(p inPacket) {
	defer func() { s.free <- p.buf }()
	if int(p.from) >= wire.MaxReceivers {
		return
	}
	if r, ok := p.msg.(*wire.ProbeReply); ok {
		select {
		case s.probes <- probeReply{from: p.from, nonce: r.Nonce, rtt: s.cfg.now().Sub(time.Unix(0, r.Nanos))}:
		default:
		}
	}
	s.eng.OnPacket(s.cfg.now(), p.from, p.msg)
}

// errDeliver wraps the error of a Receiver's deliver callback.
var errDeliver = errors.New("multicast: deliver failed")
