package reliable

import (
	"math/rand/v2"
	"time"

	"github.com/vmscatter/vmscatter/multicast/wire"
)

// Limits of a receiver's memory.
const (
	maxActiveTransfers = 256  // transfers assembled at once; DATA for more is ignored until some finish
	rememberFinished   = 4096 // finished transfers remembered, so late packets are recognised
	maxNaksPerTick     = 4    // NAK packets per transfer per Tick
	// reorderChunks: a chunk counts as lost once a chunk this much later arrived (or the sender polled).
	reorderChunks = 32
)

// ReceiverStats counts a receiver's work.
type ReceiverStats struct {
	Chunks     uint64 // new chunks
	Duplicates uint64 // chunks already held, or of finished transfers
	Objects    uint64 // objects delivered
	Bytes      uint64 // object bytes delivered
	NaksSent   uint64
	Suppressed uint64 // chunks held because another member NAKed them
	Completed  uint64 // transfers confirmed
	Dropped    uint64 // transfers the sender dropped us from
	Ignored    uint64 // DATA refused: inconsistent, or too many transfers at once
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

type rxTransfer struct {
	total   uint32
	got     bitset
	count   uint32
	high    uint32 // chunks below high were sent at least once
	tail    bool   // the sender polled: every chunk was sent
	low     uint32 // every chunk below low is held
	hold    map[uint32]time.Time
	nakAt   time.Time
	partial map[uint64]*partial
}

// Receiver is one receiver's engine. Not safe for concurrent use: one goroutine drives it.
type Receiver struct {
	cfg       Config
	id        uint16
	rng       *rand.Rand
	transfers map[wire.Seq]*rxTransfer
	finished  map[wire.Seq]bool // true: complete, false: dropped
	order     []wire.Seq        // finished, oldest first, at most rememberFinished
	ready     ReceiverReady
	stats     ReceiverStats
}

// NewReceiver makes the engine of receiver id. seed seeds its NAK timers.
func NewReceiver(cfg Config, id uint16, seed uint64) *Receiver {
	return &Receiver{cfg: cfg.Defaults(), id: id, rng: rand.New(rand.NewPCG(seed, uint64(id))),
		transfers: make(map[wire.Seq]*rxTransfer), finished: make(map[wire.Seq]bool)}
}

// Stats reports counters.
func (r *Receiver) Stats() ReceiverStats { return r.stats }

func (r *Receiver) finish(id wire.Seq, complete bool) {
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

func (r *Receiver) transfer(id wire.Seq, total uint32) *rxTransfer {
	t := r.transfers[id]
	if t == nil {
		if len(r.transfers) >= maxActiveTransfers {
			return nil
		}
		t = &rxTransfer{total: total, got: newBitset(total), hold: make(map[uint32]time.Time), partial: make(map[uint64]*partial)}
		r.transfers[id] = t
	}
	if t.total != total {
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

func (r *Receiver) onData(now time.Time, d *wire.Data) {
	if !d.Members.Has(r.id) {
		return
	}
	if _, done := r.finished[d.Transfer]; done {
		r.stats.Duplicates++
		return
	}
	t := r.transfer(d.Transfer, d.Total)
	if t == nil {
		r.stats.Ignored++
		return
	}
	if t.got.has(d.Index) {
		r.stats.Duplicates++
		return
	}
	p := t.partial[d.Object]
	if p == nil {
		p = &partial{buf: make([]byte, d.ObjectLen)}
		t.partial[d.Object] = p
	} else if uint32(len(p.buf)) != d.ObjectLen {
		r.stats.Ignored++
		return
	}
	t.got.set(d.Index)
	t.count++
	delete(t.hold, d.Index)
	r.stats.Chunks++
	copy(p.buf[d.Offset:], d.Payload)
	p.have += uint32(len(d.Payload))
	if p.have >= d.ObjectLen {
		delete(t.partial, d.Object)
		r.ready.Delivered = append(r.ready.Delivered, Object{ID: d.Object, Payload: p.buf})
		r.stats.Objects++
		r.stats.Bytes += uint64(len(p.buf))
	}
	if d.Index > t.high {
		r.schedule(now, t) // a gap: chunks t.high..d.Index-1 are missing
	}
	if d.Index >= t.high {
		t.high = d.Index + 1
	}
	if t.count == t.total {
		r.complete(d.Transfer)
		r.finish(d.Transfer, true)
	}
}

func (r *Receiver) onPoll(now time.Time, p *wire.Poll) {
	if !p.Members.Has(r.id) {
		return
	}
	if complete, done := r.finished[p.Transfer]; done {
		if complete && p.Pending.Has(r.id) {
			r.complete(p.Transfer)
		}
		return
	}
	t := r.transfer(p.Transfer, p.Total)
	if t == nil {
		r.stats.Ignored++
		return
	}
	t.high, t.tail = t.total, true // every chunk went out once
	if !p.Pending.Has(r.id) {
		return
	}
	// Answer now, even if every missing chunk is on hold: the empty NAK tells the sender we are alive.
	if r.nak(now, p.Transfer, t) == 0 {
		r.ready.Packets = append(r.ready.Packets, Outgoing{To: ToSender, Msg: &wire.Nak{Transfer: p.Transfer}})
	}
}

// onOtherNak holds our own NAK for chunks another member asked for.
func (r *Receiver) onOtherNak(now time.Time, n *wire.Nak) {
	t := r.transfers[n.Transfer]
	if t == nil {
		return
	}
	until := now.Add(r.cfg.NakHold)
	for _, rg := range n.Ranges {
		last := min(rg.Last, t.high-1)
		if t.high == 0 {
			continue
		}
		for c := max(rg.First, t.low); c <= last; c++ {
			if c%64 == 0 && t.got.word(c) == ^uint64(0) {
				c += 63
				continue
			}
			if !t.got.has(c) {
				if h, ok := t.hold[c]; !ok || h.Before(until) {
					t.hold[c] = until
					r.stats.Suppressed++
				}
			}
		}
	}
}

// nak sends NAKs for t's missing chunks that are not on hold, and returns how many it sent.
func (r *Receiver) nak(now time.Time, id wire.Seq, t *rxTransfer) int {
	for t.low < t.total && t.got.has(t.low) {
		t.low++
	}
	until := now.Add(r.cfg.NakHold)
	sent := 0
	limit := t.high
	if !t.tail {
		limit = max(t.high, reorderChunks) - reorderChunks
	}
	var ranges []wire.Range
	flush := func() {
		if len(ranges) > 0 {
			r.ready.Packets = append(r.ready.Packets, Outgoing{To: ToGroup, Msg: &wire.Nak{Transfer: id, Ranges: ranges}})
			r.stats.NaksSent++
			sent++
			ranges = nil
		}
	}
	for c := t.low; c < limit && sent < maxNaksPerTick; c++ {
		if c%64 == 0 && t.got.word(c) == ^uint64(0) {
			c += 63
			continue
		}
		if t.got.has(c) {
			continue
		}
		if h, ok := t.hold[c]; ok && now.Before(h) {
			continue
		}
		t.hold[c] = until
		if n := len(ranges); n > 0 && ranges[n-1].Last == c-1 {
			ranges[n-1].Last = c
			continue
		}
		if len(ranges) == wire.MaxNakRanges {
			flush()
			if sent == maxNaksPerTick {
				break
			}
		}
		ranges = append(ranges, wire.Range{First: c, Last: c})
	}
	flush()
	return sent
}

// Tick advances time: NAK timers fire.
func (r *Receiver) Tick(now time.Time) ReceiverReady {
	var next time.Time
	for id, t := range r.transfers {
		if !t.nakAt.IsZero() && !now.Before(t.nakAt) {
			t.nakAt = time.Time{}
			r.nak(now, id, t)
		}
		// While chunks are missing, look again after a hold, so lost repairs are asked for again.
		if t.nakAt.IsZero() && t.count < t.high && (t.tail || t.low+reorderChunks < t.high) {
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
