package reliable

import (
	"errors"
	"fmt"
	"time"

	"github.com/vmscatter/vmscatter/multicast/fec"
	"github.com/vmscatter/vmscatter/multicast/wire"
)

// BatchResult says how one batch ended.
type BatchResult struct {
	Batch     uint64
	Completed wire.Mask // members that confirmed every object of the batch
	Dropped   wire.Mask // members dropped from the session (serve them another way)
}

// SenderStats counts the sender's work.
type SenderStats struct {
	DataPackets   uint64 // first transmissions of chunks
	RepairPackets uint64 // repair symbols: parity shards and retransmitted chunks
	ParityPackets uint64 // of which parity shards
	DataBytes     uint64 // chunk payload bytes, first transmissions
	RepairBytes   uint64 // repair bytes: parity shards (with their shard headers) and chunk payloads
	WireBytes     uint64 // every data packet's size on the wire, with IP and UDP headers
	Naks          uint64
	Polls         uint64
	RateBps       int64  // the current rate
	RateCuts      uint64 // the rate dropped (a probe started)
	RateUndos     uint64 // probes that found the loss did not depend on the rate: the cut was undone
}

// SenderReady is what the caller must do after a Tick.
type SenderReady struct {
	Packets []Outgoing
	Done    []BatchResult
	// Next is when to call Tick again at the latest; zero means only on the next input.
	Next time.Time
}

// ErrObject is returned by Start for an object over wire.MaxObject or a repeated id in one batch.
var ErrObject = errors.New("reliable: bad object")

type chunkRef struct {
	obj uint32
	off uint32
	n   uint32
}

type txBatch struct {
	id        uint64
	members   wire.Mask
	left      int // transfers not done
	dropped   wire.Mask
	cancelled bool
}

// txBlock is the repair state of one FEC block of a transfer.
type txBlock struct {
	queued int                 // repair symbols to send
	sent   int                 // repair symbols sent so far: the next is parity shard `sent` (then chunks, cycling)
	recent []time.Time         // when the last repair symbols went out (within RepairHold)
	parity [][]byte            // parity shards computed so far (a bounded cache; recomputed when evicted)
	asks   map[uint16]blockAsk // each member's last NAK of the block
	index  uint32
}

// blockAsk is a member's last NAK of a block: n symbols asked for when the block's repair count was sent.
type blockAsk struct{ n, sent int }

// inflight is the number of repair symbols of b sent less than hold ago.
func (b *txBlock) inflight(now time.Time, hold time.Duration) int {
	i := 0
	for i < len(b.recent) && now.Sub(b.recent[i]) >= hold {
		i++
	}
	b.recent = b.recent[i:]
	return len(b.recent)
}

type txTransfer struct {
	id      wire.Seq
	batch   *txBatch
	members wire.Mask
	objs    []Object
	chunks  []chunkRef
	k       uint8  // chunks per FEC block
	next    uint32 // first never-sent chunk
	blocks  map[uint32]*txBlock
	repairQ []uint32    // blocks with queued symbols, in the order they were asked for
	sentAt  []time.Time // when each block was wholly sent once
	nrepair int         // queued symbols over every block

	complete, dropped wire.Mask
	sentAll           time.Time // zero until every chunk went out once
	nextPoll          time.Time
	othersDone        time.Time // when every member but the stragglers confirmed
}

func (t *txTransfer) pending() wire.Mask {
	return maskMinus(maskMinus(t.members, t.complete), t.dropped)
}
func (t *txTransfer) done() bool { return len(t.pending()) == 0 }

type rxInfo struct {
	lastHeard time.Time
	loss      uint64 // symbols it asked for in this rate window, in its first NAK of each block
	slowSince time.Time
	dropped   bool
	floor     float64       // its loss that does not depend on the rate (learned)
	lag       time.Duration // from a block wholly sent to its NAK: the least seen in the last window
	winLag    time.Duration // the least seen in this window (0: none)
	trigger   float64       // its loss in the window that started a probe; 0 if it did not
	hot       int           // consecutive windows it lost more than its floor explains
}

// Sender is the sender's engine. Not safe for concurrent use: one goroutine drives it.
type Sender struct {
	cfg       Config
	rate      float64 // bits per second
	tokens    float64 // bytes
	lastFill  time.Time
	nextSeq   wire.Seq
	nextBatch uint64
	batches   map[uint64]*txBatch
	active    []*txTransfer
	rr        int
	rx        map[uint16]*rxInfo

	winStart  time.Time
	nextAdapt time.Time
	winSent   uint64
	probe     probe

	coder       *fec.Coder
	cached      []*txBlock // blocks with parity computed, oldest first
	cachedBytes int

	out   []Outgoing
	done  []BatchResult
	stats SenderStats
}

// maxParityCache bounds the parity shards a sender keeps computed.
const maxParityCache = 64 << 20

// NewSender makes a sender engine. firstTransfer seeds the transfer numbering (pick it at random, so a
// restarted sender does not collide with its earlier transfers in receivers' memory).
func NewSender(cfg Config, firstTransfer wire.Seq) *Sender {
	cfg = cfg.Defaults()
	return &Sender{cfg: cfg, rate: float64(cfg.RateBps), nextSeq: firstTransfer, coder: fec.NewCoder(),
		batches: make(map[uint64]*txBatch), rx: make(map[uint16]*rxInfo)}
}

// LimitRate lowers the maximum rate to bps (bits per second, at least MinRateBps), for a caller that measured the
// path: the rate control then probes below it, never above.
func (s *Sender) LimitRate(bps int64) {
	bps = max(bps, s.cfg.MinRateBps)
	if bps < s.cfg.RateBps {
		s.cfg.RateBps = bps
		s.rate = min(s.rate, float64(bps))
	}
}

// Stats reports counters and the current rate.
func (s *Sender) Stats() SenderStats {
	st := s.stats
	st.RateBps = int64(s.rate)
	return st
}

// Dropped is the set of receivers dropped from the session so far.
func (s *Sender) Dropped() wire.Mask {
	var m wire.Mask
	for id, r := range s.rx {
		if r.dropped {
			m = m.With(id)
		}
	}
	return m
}

// ChunkPayload is the chunk size for a member set.
func (s *Sender) ChunkPayload(members wire.Mask) int {
	return wire.MaxDataPayload(s.cfg.Datagram, len(trimMask(members)))
}

func (s *Sender) info(id uint16, now time.Time) *rxInfo {
	r := s.rx[id]
	if r == nil {
		r = &rxInfo{lastHeard: now}
		s.rx[id] = r
	}
	return r
}

// Start queues a batch: every object goes to every member. It returns the batch id that the batch's
// BatchResult will carry. The objects' payloads are read until the batch is done; do not change them.
func (s *Sender) Start(now time.Time, members wire.Mask, objs []Object) (uint64, error) {
	members = trimMask(append(wire.Mask(nil), members...))
	if len(members) > wire.MaxMaskWords {
		return 0, fmt.Errorf("%w: receiver id over %d", ErrObject, wire.MaxReceivers)
	}
	seen := make(map[uint64]struct{}, len(objs))
	for _, o := range objs {
		if len(o.Payload) > wire.MaxObject {
			return 0, fmt.Errorf("%w: object %d has %d bytes", ErrObject, o.ID, len(o.Payload))
		}
		if _, dup := seen[o.ID]; dup {
			return 0, fmt.Errorf("%w: object %d twice in a batch", ErrObject, o.ID)
		}
		seen[o.ID] = struct{}{}
	}
	s.nextBatch++
	b := &txBatch{id: s.nextBatch, members: members}
	for _, id := range members.IDs() {
		if r := s.info(id, now); r.dropped {
			b.dropped = b.dropped.With(id)
		}
	}
	live := maskMinus(members, b.dropped)
	s.batches[b.id] = b
	if len(live) == 0 || len(objs) == 0 {
		s.finishBatch(b)
		return b.id, nil
	}
	payload := uint32(s.ChunkPayload(live))
	var t *txTransfer
	for i := range objs {
		n := (uint32(len(objs[i].Payload)) + payload - 1) / payload
		if n == 0 {
			n = 1
		}
		if t == nil || uint32(len(t.chunks))+n > wire.MaxTransferChunks {
			t = &txTransfer{id: s.nextSeq, batch: b, members: live, k: uint8(s.cfg.Block), blocks: make(map[uint32]*txBlock)}
			s.nextSeq = s.nextSeq.Next()
			s.active = append(s.active, t)
			b.left++
		}
		oi := uint32(len(t.objs))
		t.objs = append(t.objs, objs[i])
		for c := uint32(0); c < n; c++ {
			off := c * payload
			ln := min(payload, uint32(len(objs[i].Payload))-off)
			t.chunks = append(t.chunks, chunkRef{obj: oi, off: off, n: ln})
		}
	}
	return b.id, nil
}

// Cancel abandons a batch: its transfers stop and their pending members are told to LEAVE. No
// BatchResult is reported for it.
func (s *Sender) Cancel(batch uint64) {
	b := s.batches[batch]
	if b == nil {
		return
	}
	b.cancelled = true
	kept := s.active[:0]
	for _, t := range s.active {
		if t.batch != b {
			kept = append(kept, t)
			continue
		}
		if p := t.pending(); len(p) > 0 {
			s.out = append(s.out, Outgoing{To: ToGroup, Members: p, Msg: &wire.Leave{Transfer: t.id, Dropped: p}})
		}
		s.release(t)
	}
	clear(s.active[len(kept):])
	s.active = kept
	delete(s.batches, batch)
}

func (s *Sender) transfer(id wire.Seq) *txTransfer {
	for _, t := range s.active {
		if t.id == id {
			return t
		}
	}
	return nil
}

// OnPacket takes a packet from receiver from.
func (s *Sender) OnPacket(now time.Time, from uint16, m wire.Message) {
	if int(from) >= wire.MaxReceivers {
		return
	}
	r := s.info(from, now)
	r.lastHeard = now
	switch m := m.(type) {
	case *wire.Complete:
		if t := s.transfer(m.Transfer); t != nil && t.members.Has(from) && !t.dropped.Has(from) {
			t.complete = t.complete.With(from)
		}
	case *wire.Nak:
		s.stats.Naks++
		t := s.transfer(m.Transfer)
		if t == nil || !t.members.Has(from) || t.dropped.Has(from) {
			return
		}
		total := uint32(len(t.chunks))
		perBlock(m.Ranges, t.k, total, func(b uint32, n int) {
			end := b*uint32(t.k) + wire.BlockLen(total, t.k, b)
			if end > t.next {
				return // not wholly sent yet
			}
			blk := t.block(b)
			prev, asked := blk.asks[from]
			if !asked {
				// Its first NAK of the block: the lag from the block sent to its NAK.
				if d := now.Sub(t.sentAt[b]); r.winLag == 0 || d < r.winLag {
					r.winLag = max(d, 1)
				}
			}
			// New loss: what it asks for beyond what it still lacked at its last NAK of the block, less the
			// symbols sent since (so a repeated NAK counts only repairs it lost, or has not had yet).
			r.loss += uint64(max(0, n-max(0, prev.n-(blk.sent-prev.sent))))
			if blk.asks == nil {
				blk.asks = make(map[uint16]blockAsk)
			}
			blk.asks[from] = blockAsk{n: n, sent: blk.sent}
			s.ask(now, t, blk, n)
		})
	}
}
