package multicast

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/vmscatter/vmscatter/multicast/reliable"
	"github.com/vmscatter/vmscatter/multicast/seal"
	"github.com/vmscatter/vmscatter/multicast/wire"
)

// ReceiverStats is a snapshot of a receiver's counters.
type ReceiverStats struct {
	Engine    reliable.ReceiverStats
	Seal      seal.Snapshot
	Transport TransportStats
}

// Receiver takes a session's packets from one Transport and hands every object sent to it to a
// callback, once.
//
// Pipeline (every stage bounded):
//
//	reader goroutine: Transport.Recv → seal.Opener (auth, replay) → in (chan, 64 buffers in a pool)
//	Run's goroutine:  owns the engine, the sealer and the clock; calls deliver for each complete object,
//	                  sends NAKs and COMPLETEs. A slow deliver backs up into the socket buffer, whose
//	                  overflow the sender sees as loss.
type Receiver struct {
	cfg    Config
	id     ReceiverID
	tr     Transport
	eng    *reliable.Receiver
	sealer *seal.Sealer
	opener *seal.Opener
	mu     sync.Mutex
	stats  reliable.ReceiverStats
}

// NewReceiver makes receiver id of a session on tr and takes ownership of tr (Run closes it).
func NewReceiver(cfg Config, id ReceiverID, tr Transport) (*Receiver, error) {
	if int(id) >= wire.MaxReceivers {
		return nil, fmt.Errorf("multicast: receiver id %d over %d", id, wire.MaxReceivers-1)
	}
	sealer, err := seal.NewSealer(cfg.Key, cfg.SessionID, id, uint64(time.Now().UnixNano()))
	if err != nil {
		return nil, err
	}
	opener, err := seal.NewOpener(cfg.Key, cfg.SessionID, id, nil)
	if err != nil {
		return nil, err
	}
	return &Receiver{cfg: cfg, id: id, tr: tr, eng: reliable.NewReceiver(cfg.engine(tr), id, rand.Uint64()),
		sealer: sealer, opener: opener}, nil
}

// Stats is a snapshot of the counters. Safe to call from any goroutine.
func (r *Receiver) Stats() ReceiverStats {
	r.mu.Lock()
	st := r.stats
	r.mu.Unlock()
	return ReceiverStats{Engine: st, Seal: r.opener.C.Snapshot(), Transport: r.tr.Stats()}
}

// Run receives until ctx ends (then it returns nil), the transport fails, or deliver returns an error.
// deliver is called from Run's goroutine, once per object, and owns the object's bytes.
func (r *Receiver) Run(ctx context.Context, deliver func(Object) error) error {
	ctx, stop := context.WithCancel(ctx)
	in := make(chan inPacket, inQueue)
	free := make(chan []byte, inQueue+2)
	for range cap(free) {
		free <- make([]byte, bufSize)
	}
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		readLoop(ctx, r.tr, r.opener, free, in)
	}()
	defer func() {
		stop()
		r.tr.Close()
		<-readerDone
	}()
	out := make([]byte, 0, bufSize)
	send := func(o reliable.Outgoing) error {
		pkt, err := r.sealer.Seal(out, o.Msg)
		if err != nil {
			return err
		}
		return r.tr.Send(o.To, nil, pkt)
	}
	if err := send(reliable.Outgoing{To: reliable.ToGroup, Msg: &wire.Join{}}); err != nil {
		return err
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	handle := func(p inPacket) error {
		defer func() { free <- p.buf }()
		if pr, ok := p.msg.(*wire.Probe); ok {
			if p.from == wire.SenderNode {
				return send(reliable.Outgoing{To: reliable.ToSender, Msg: &wire.ProbeReply{Nonce: pr.Nonce, Nanos: pr.Nanos}})
			}
			return nil
		}
		r.eng.OnPacket(r.cfg.now(), p.from, p.msg)
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-readerDone:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("multicast: receiver %d: transport closed", r.id)
		case p := <-in:
			if err := handle(p); err != nil {
				return err
			}
		drain:
			for range inQueue {
				select {
				case p := <-in:
					if err := handle(p); err != nil {
						return err
					}
				default:
					break drain
				}
			}
		case <-timer.C:
		}
		now := r.cfg.now()
		rd := r.eng.Tick(now)
		for _, o := range rd.Delivered {
			if err := deliver(o); err != nil {
				return fmt.Errorf("%w: object %d: %w", errDeliver, o.ID, err)
			}
		}
		for _, o := range rd.Packets {
			if err := send(o); err != nil {
				return err
			}
		}
		r.mu.Lock()
		r.stats = r.eng.Stats()
		r.mu.Unlock()
		timer.Stop()
		if !rd.Next.IsZero() {
			timer.Reset(max(rd.Next.Sub(now), 0))
		}
	}
}
