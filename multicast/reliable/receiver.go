package reliable

import (
	"math/bits"
	"math/rand/v2"
	"time"

	"github.com/vmscatter/vmscatter/multicast/fec"
	"github.com/vmscatter/vmscatter/multicast/wire"
)

// Limits of a receiver's memory.
const (
	maxActiveTransfers = 256  // transfers assembled at once; DATA for more is ignored until some finish
	rememberFinished   = 4096 // finished transfers remembered, so late packets are recognised
	maxNaksPerTick     = 4    // NAK packets per transfer per Tick
	// reorderChunks: a chunk counts as lost once a chunk this much later arrived (or the sender polled).
	reorderChunks = 32
	// maxRetained bounds the shard bytes kept for FEC blocks not yet whole. A symbol that would start a
	// new block over the bound is dropped as if lost (it is asked for again once blocks complete).
	maxRetained = 256 << 20
)

// ReceiverStats counts a receiver's work.
type ReceiverStats struct {
	Chunks     uint64 // new chunks (from DATA or rebuilt)
	Duplicates uint64 // chunks or parity already held, or of finished transfers or whole blocks
	Objects    uint64 // objects delivered
	Bytes      uint64 // object bytes delivered
	NaksSent   uint64
	Suppressed uint64 // symbols not asked for because another member's NAK asked for as many
	Completed  uint64 // transfers confirmed
	Dropped    uint64 // transfers the sender dropped us from
	Ignored    uint64 // DATA or PARITY refused: inconsistent, too many transfers, or over maxRetained
	Parity     uint64 // parity shards kept
	Rebuilt    uint64 // chunks rebuilt from parity
}

// ReceiverReady is what the caller must do after a Tick.
type ReceiverReady struct {
	Packets   []Outgoing
	Delivered []Object   // hand these to the content store; the caller owns their bytes
	Completed []wire.Seq // transfers confirmed to the sender
	Dropped   []wire.Seq // transfers the sender dropped us from (the caller will be served another way)
	Next      time.Time  // call Tick again by then at the latest; zero: only on the next input
}

type partial struct {
	buf  []byte
	have uint32
}

// rxBlock keeps the shards of an FEC block that is not whole yet, so parity can rebuild the rest.
type rxBlock struct {
	data    [][]byte // shard of each chunk held (header and payload), nil if missing
	ndata   int
	parity  [][]byte // parity shard j, nil if missing
	npar    int
	bytes   int
	decoded bool
}

// nakHold: a block's NAK is held until `until` while it needs at most `covered` symbols (ours or
// another member's NAK asked for that many).
type nakHold struct {
	until   time.Time
	covered int
}

type rxTransfer struct {
	total    uint32
	k        uint8 // chunks per FEC block
	got      bitset
	count    uint32
	high     uint32 // chunks below high were sent at least once
	tail     bool   // the sender polled: every chunk was sent
	low      uint32 // every chunk below low is held
	checked  uint32 // blocks below this one were checked for gaps when they became due
	blocks   map[uint32]*rxBlock
	holds    map[uint32]nakHold
	retained int
	nakAt    time.Time
	partial  map[uint64]*partial
}

// limit is the end of the chunks that count as lost when missing.
func (t *rxTransfer) limit() uint32 {
	if t.tail {
		return t.total
	}
	return max(t.high, reorderChunks) - reorderChunks
}

// due reports whether block b is wholly below the limit, so its gaps are losses.
func (t *rxTransfer) due(b uint32) bool {
	n := wire.BlockLen(t.total, t.k, b)
	return n > 0 && b*uint32(t.k)+n <= t.limit()
}

// held counts the data chunks of block b that t holds.
func (t *rxTransfer) held(b uint32) int {
	lo := b * uint32(t.k)
	hi := lo + wire.BlockLen(t.total, t.k, b) // exclusive
	n := 0
	for lo < hi {
		w := t.got.word(lo) >> (lo % 64)
		span := min(64-lo%64, hi-lo)
		if span < 64 {
			w &= 1<<span - 1
		}
		n += bits.OnesCount64(w)
		lo += span
	}
	return n
}

// need is how many more symbols (data or parity shards) block b needs to be whole.
func (t *rxTransfer) need(b uint32) int {
	n := int(wire.BlockLen(t.total, t.k, b)) - t.held(b)
	if blk := t.blocks[b]; blk != nil {
		n -= blk.npar
	}
	return max(n, 0)
}

// Receiver is one receiver's engine. Not safe for concurrent use: one goroutine drives it.
type Receiver struct {
	cfg       Config
	id        uint16
	rng       *rand.Rand
	coder     *fec.Coder
	transfers map[wire.Seq]*rxTransfer
	finished  map[wire.Seq]bool // true: complete, false: dropped
	order     []wire.Seq        // finished, oldest first, at most rememberFinished
	retained  int               // shard bytes kept in every transfer's blocks
	ready     ReceiverReady
	stats     ReceiverStats
}

// NewReceiver makes the engine of receiver id. seed seeds its NAK timers.
func NewReceiver(cfg Config, id uint16, seed uint64) *Receiver {
	return &Receiver{cfg: cfg.Defaults(), id: id, rng: rand.New(rand.NewPCG(seed, uint64(id))), coder: fec.NewCoder(),
		transfers: make(map[wire.Seq]*rxTransfer), finished: make(map[wire.Seq]bool)}
}

// Stats reports counters.
func (r *Receiver) Stats() ReceiverStats { return r.stats }

func (r *Receiver) finish(id wire.Seq, complete bool) {
	if t := r.transfers[id]; t != nil {
		r.retained -= t.retained
	}
	delete(r.transfers, id)
	if _, ok := r.finished[id]; !ok {
		r.order = append(r.order, id)
		if len(r.order) > rememberFinished {
			delete(r.finished, r.order[0])
			r.order = r.order[1:]
		}
	}
	r.finished[id] = complete
	if complete {
		r.stats.Completed++
		r.ready.Completed = append(r.ready.Completed, id)
	} else {
		r.stats.Dropped++
		r.ready.Dropped = append(r.ready.Dropped, id)
	}
}

func (r *Receiver) transfer(id wire.Seq, total uint32, k uint8) *rxTransfer {
	t := r.transfers[id]
	if t == nil {
		if len(r.transfers) >= maxActiveTransfers {
			return nil
		}
		t = &rxTransfer{total: total, k: k, got: newBitset(total), blocks: make(map[uint32]*rxBlock),
			holds: make(map[uint32]nakHold), partial: make(map[uint64]*partial)}
		r.transfers[id] = t
	}
	if t.total != total || t.k != k {
		return nil
	}
	return t
}

func (r *Receiver) complete(id wire.Seq) {
	r.ready.Packets = append(r.ready.Packets, Outgoing{To: ToSender, Msg: &wire.Complete{Transfer: id}})
}

// schedule arms t's NAK timer within NakDelay unless it fires sooner already.
func (r *Receiver) schedule(now time.Time, t *rxTransfer) {
	at := now.Add(time.Duration(r.rng.Int64N(int64(r.cfg.NakDelay))))
	if t.nakAt.IsZero() || at.Before(t.nakAt) {
		t.nakAt = at
	}
}

// OnPacket takes a packet from node from (wire.SenderNode or another receiver).
func (r *Receiver) OnPacket(now time.Time, from uint16, m wire.Message) {
	switch m := m.(type) {
	case *wire.Data:
		if from == wire.SenderNode {
			r.onData(now, m)
		}
	case *wire.Parity:
		if from == wire.SenderNode {
			r.onParity(now, m)
		}
	case *wire.Poll:
		if from == wire.SenderNode {
			r.onPoll(now, m)
		}
	case *wire.Leave:
		if from == wire.SenderNode && m.Dropped.Has(r.id) {
			if _, done := r.finished[m.Transfer]; !done {
				r.finish(m.Transfer, false)
			}
		}
	case *wire.Nak:
		if from != wire.SenderNode && from != r.id {
			r.onOtherNak(now, m)
		}
	}
}

// block returns the kept shards of block b, making them if the memory bound allows; nil if not.
func (r *Receiver) block(t *rxTransfer, b uint32) *rxBlock {
	if blk := t.blocks[b]; blk != nil {
		return blk
	}
	if r.retained >= maxRetained {
		return nil
	}
	blk := &rxBlock{data: make([][]byte, wire.BlockLen(t.total, t.k, b))}
	t.blocks[b] = blk
	return blk
}

func (r *Receiver) keep(t *rxTransfer, blk *rxBlock, n int) {
	blk.bytes += n
	t.retained += n
	r.retained += n
}

func (r *Receiver) drop(t *rxTransfer, b uint32) {
	if blk := t.blocks[b]; blk != nil {
		t.retained -= blk.bytes
		r.retained -= blk.bytes
		delete(t.blocks, b)
	}
	delete(t.holds, b)
}

// transferFor returns the transfer a DATA or PARITY packet belongs to, or nil (counted) when the packet is not
// for this receiver, its transfer is finished, or it cannot be taken.
func (r *Receiver) transferFor(members wire.Mask, id wire.Seq, total uint32, block uint8) *rxTransfer {
	if !members.Has(r.id) {
		return nil
	}
	if _, done := r.finished[id]; done {
		r.stats.Duplicates++
		return nil
	}
	t := r.transfer(id, total, block)
	if t == nil {
		r.stats.Ignored++
	}
	return t
}

func (r *Receiver) onData(now time.Time, d *wire.Data) {
	t := r.transferFor(d.Members, d.Transfer, d.Total, d.Block)
	if t == nil {
		return
	}
	if t.got.has(d.Index) {
		r.stats.Duplicates++
		return
	}
	if p := t.partial[d.Object]; p != nil && uint32(len(p.buf)) != d.ObjectLen {
		r.stats.Ignored++
		return
	}
	s := wire.Shard{Object: d.Object, ObjectLen: d.ObjectLen, Offset: d.Offset, Payload: d.Payload}
	b := d.Index / uint32(t.k)
	if int(wire.BlockLen(t.total, t.k, b)) > t.held(b)+1 {
		// The block is not whole with this chunk: keep its shard for decoding.
		blk := r.block(t, b)
		if blk == nil {
			r.stats.Ignored++
			return
		}
		sh := wire.AppendShard(nil, s)
		blk.data[d.Index-b*uint32(t.k)] = sh
		blk.ndata++
		r.keep(t, blk, len(sh))
	}
	r.place(t, d.Index, s)
	t.high = max(t.high, d.Index+1)
	r.advance(now, d.Transfer, t, b)
}

// Tick advances time: NAK timers fire.
func (r *Receiver) Tick(now time.Time) ReceiverReady {
	var next time.Time
	for id, t := range r.transfers {
		for t.low < t.total && t.got.has(t.low) {
			t.low++
		}
		if !t.nakAt.IsZero() && !now.Before(t.nakAt) {
			t.nakAt = time.Time{}
			r.nak(now, id, t)
		}
		// While due blocks lack symbols, look again after a hold, so lost repairs are asked for again.
		if t.nakAt.IsZero() && t.low < t.total && t.due(t.low/uint32(t.k)) {
			t.nakAt = now.Add(r.cfg.NakHold + time.Duration(r.rng.Int64N(int64(r.cfg.NakDelay))))
		}
		if !t.nakAt.IsZero() && (next.IsZero() || t.nakAt.Before(next)) {
			next = t.nakAt
		}
	}
	rd := r.ready
	rd.Next = next
	r.ready = ReceiverReady{}
	return rd
}
