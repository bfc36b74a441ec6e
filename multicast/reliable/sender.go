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

// ask records that a member needs n more symbols of block b of t. Symbols queued, and those sent less
// than RepairHold ago (the member may not have had them yet), count towards it; so the block gets as
// many symbols as the neediest member asked for, whatever the others lost.
func (s *Sender) ask(now time.Time, t *txTransfer, blk *txBlock, n int) {
	extra := n - blk.queued - blk.inflight(now, s.cfg.RepairHold)
	if extra <= 0 {
		return
	}
	if blk.queued == 0 {
		t.repairQ = append(t.repairQ, blk.index)
	}
	blk.queued += extra
	t.nrepair += extra
}

func (t *txTransfer) block(b uint32) *txBlock {
	blk := t.blocks[b]
	if blk == nil {
		blk = &txBlock{index: b}
		t.blocks[b] = blk
	}
	return blk
}

// release forgets the parity cached for t's blocks.
func (s *Sender) release(t *txTransfer) {
	for _, blk := range t.blocks {
		s.uncache(blk)
	}
	kept := s.cached[:0]
	for _, blk := range s.cached {
		if blk.parity != nil {
			kept = append(kept, blk)
		}
	}
	clear(s.cached[len(kept):])
	s.cached = kept
}

func (s *Sender) uncache(blk *txBlock) {
	for _, p := range blk.parity {
		s.cachedBytes -= len(p)
	}
	blk.parity = nil
}

// parity returns parity shard j of block b of t, computing a few shards ahead into the cache.
func (s *Sender) parity(t *txTransfer, b uint32, blk *txBlock, j int) []byte {
	if j < len(blk.parity) {
		return blk.parity[j]
	}
	first := b * uint32(t.k)
	n := wire.BlockLen(uint32(len(t.chunks)), t.k, b)
	data := make([][]byte, n)
	for i := range data {
		c := t.chunks[first+uint32(i)]
		o := t.objs[c.obj]
		data[i] = wire.AppendShard(nil, wire.Shard{Object: o.ID, ObjectLen: uint32(len(o.Payload)), Offset: c.off, Payload: o.Payload[c.off : c.off+c.n]})
	}
	m := min(wire.MaxBlockShards-int(n), max(8, 2*(j+1)))
	ps, err := s.coder.Encode(data, m)
	if err != nil {
		panic("reliable: parity of a valid block: " + err.Error()) // block sizes are checked in Start
	}
	s.uncache(blk)
	blk.parity = ps
	for _, p := range ps {
		s.cachedBytes += len(p)
	}
	s.cached = append(s.cached, blk)
	for s.cachedBytes > maxParityCache && len(s.cached) > 1 {
		if s.cached[0] != blk {
			s.uncache(s.cached[0])
		}
		s.cached = s.cached[1:]
	}
	return ps[j]
}

// shardSize is the size of block b's shards (its longest chunk with a shard header).
func (t *txTransfer) shardSize(b uint32) int {
	first := b * uint32(t.k)
	size := 0
	for i := range wire.BlockLen(uint32(len(t.chunks)), t.k, b) {
		size = max(size, int(t.chunks[first+i].n))
	}
	return wire.ShardHeaderLen + size
}

func (s *Sender) dataCost(t *txTransfer, c chunkRef) int {
	return wire.IPv4UDPOverhead + wire.HeaderLen + wire.TagLen + wire.DataFixedLen + 1 + 8*len(t.members) + int(c.n)
}

func (s *Sender) parityCost(t *txTransfer, b uint32) int {
	return wire.IPv4UDPOverhead + wire.HeaderLen + wire.TagLen + wire.ParityFixedLen + 1 + 8*len(t.members) + t.shardSize(b)
}

func (s *Sender) emitData(t *txTransfer, idx uint32) {
	c := t.chunks[idx]
	o := t.objs[c.obj]
	d := &wire.Data{Transfer: t.id, Total: uint32(len(t.chunks)), Index: idx, Object: o.ID, ObjectLen: uint32(len(o.Payload)),
		Offset: c.off, Block: t.k, Members: t.members, Payload: o.Payload[c.off : c.off+c.n]}
	s.out = append(s.out, Outgoing{To: ToGroup, Members: t.pending(), Msg: d})
	s.stats.WireBytes += uint64(s.dataCost(t, c))
	s.winSent++
}

// repairSymbol is the next repair symbol of t's first asked-for block: parity shard j (j ≥ 0), or, once
// the block's parity is spent, chunk idx again (j < 0), cycling through every symbol of the block.
func (t *txTransfer) repairSymbol() (b uint32, blk *txBlock, j int, idx uint32) {
	b = t.repairQ[0]
	blk = t.blocks[b]
	n := int(wire.BlockLen(uint32(len(t.chunks)), t.k, b))
	np := wire.MaxBlockShards - n
	sym := blk.sent % (np + n)
	if sym < np {
		return b, blk, sym, 0
	}
	return b, blk, -1, b*uint32(t.k) + uint32(sym-np)
}

const maxPacketsPerTick = 512

// Tick advances time: it sends what the rate allows, polls, adapts the rate, drops slow members and
// reports finished batches.
func (s *Sender) Tick(now time.Time) SenderReady {
	s.fill(now)
	sent := 0
	for sent < maxPacketsPerTick && len(s.active) > 0 {
		t, repair := s.pick()
		if t == nil {
			break
		}
		if repair {
			b, blk, j, idx := t.repairSymbol()
			cost := s.dataCost(t, t.chunks[idx])
			if j >= 0 {
				cost = s.parityCost(t, b)
			}
			if s.tokens < float64(cost) {
				break
			}
			s.tokens -= float64(cost)
			if j >= 0 {
				shard := s.parity(t, b, blk, j)
				s.out = append(s.out, Outgoing{To: ToGroup, Members: t.pending(), Msg: &wire.Parity{Transfer: t.id,
					Total: uint32(len(t.chunks)), Block: t.k, BlockIndex: b, Index: uint8(j), Members: t.members, Shard: shard}})
				s.stats.WireBytes += uint64(cost)
				s.winSent++
				s.stats.ParityPackets++
				s.stats.RepairBytes += uint64(len(shard))
			} else {
				s.emitData(t, idx)
				s.stats.RepairBytes += uint64(t.chunks[idx].n)
			}
			s.stats.RepairPackets++
			sent++
			blk.sent++
			blk.recent = append(blk.recent, now)
			blk.queued--
			t.nrepair--
			if blk.queued == 0 {
				t.repairQ = t.repairQ[1:]
			}
			continue
		}
		idx := t.next
		cost := float64(s.dataCost(t, t.chunks[idx]))
		if s.tokens < cost {
			break
		}
		s.tokens -= cost
		s.emitData(t, idx)
		sent++
		t.next++
		s.stats.DataPackets++
		s.stats.DataBytes += uint64(t.chunks[idx].n)
		if t.next%uint32(t.k) == 0 || t.next == uint32(len(t.chunks)) {
			t.sentAt = append(t.sentAt, now)
		}
		if t.next == uint32(len(t.chunks)) {
			t.sentAll = now
			t.nextPoll = now
		}
	}
	s.timers(now)
	rd := SenderReady{Packets: s.out, Done: s.done}
	s.out, s.done = nil, nil
	rd.Next = s.next(now)
	return rd
}

// pick chooses what to send next: repairs first (oldest transfer first), then new data round-robin.
func (s *Sender) pick() (*txTransfer, bool) {
	for _, t := range s.active {
		if t.nrepair > 0 {
			return t, true
		}
	}
	for i := 0; i < len(s.active); i++ {
		s.rr = (s.rr + 1) % len(s.active)
		if t := s.active[s.rr]; t.next < uint32(len(t.chunks)) {
			return t, false
		}
	}
	return nil, false
}

func (s *Sender) fill(now time.Time) {
	if s.lastFill.IsZero() {
		s.lastFill = now
		s.winStart = now
		s.nextAdapt = now.Add(s.cfg.RateWindow)
	}
	dt := now.Sub(s.lastFill).Seconds()
	s.lastFill = now
	if dt <= 0 {
		return
	}
	// The bucket holds about 4 ms of data (timer wake-ups on a busy host come late), and at least 8 packets.
	capacity := max(s.rate/8/250, float64(8*s.cfg.Datagram))
	s.tokens = min(s.tokens+dt*s.rate/8, capacity)
}

func (s *Sender) timers(now time.Time) {
	if !now.Before(s.nextAdapt) {
		s.nextAdapt = now.Add(s.cfg.RateWindow)
		s.adaptRate(now)
	}
	for _, t := range s.active {
		s.checkMembers(now, t)
		if !t.sentAll.IsZero() && !now.Before(t.nextPoll) && !t.done() {
			s.stats.Polls++
			p := t.pending()
			s.out = append(s.out, Outgoing{To: ToGroup, Members: p,
				Msg: &wire.Poll{Transfer: t.id, Total: uint32(len(t.chunks)), Block: t.k, Members: t.members, Pending: p}})
			t.nextPoll = now.Add(s.cfg.PollEvery)
		}
	}
	kept := s.active[:0]
	for _, t := range s.active {
		if !t.done() {
			kept = append(kept, t)
			continue
		}
		s.release(t)
		b := t.batch
		b.left--
		for _, id := range t.dropped.IDs() {
			b.dropped = b.dropped.With(id)
		}
		if b.left == 0 {
			s.finishBatch(b)
		}
	}
	clear(s.active[len(kept):])
	s.active = kept
}

func (s *Sender) finishBatch(b *txBatch) {
	delete(s.batches, b.id)
	s.done = append(s.done, BatchResult{Batch: b.id, Completed: maskMinus(b.members, b.dropped), Dropped: trimMask(b.dropped)})
}

// checkMembers drops members of t that went silent or straggle.
func (s *Sender) checkMembers(now time.Time, t *txTransfer) {
	if t.sentAll.IsZero() {
		return
	}
	pending := t.pending()
	if len(pending) == 0 {
		return
	}
	live := maskMinus(t.members, t.dropped)
	if t.othersDone.IsZero() && len(t.complete) > 0 && pending.Count() <= max(1, live.Count()/4) {
		t.othersDone = now // the rest are stragglers from now on
	}
	for _, id := range pending.IDs() {
		r := s.info(id, now)
		since := r.lastHeard
		if since.Before(t.sentAll) {
			since = t.sentAll
		}
		switch {
		case now.Sub(since) >= s.cfg.DeadAfter:
			s.drop(now, id)
		case !t.othersDone.IsZero() && now.Sub(t.othersDone) >= s.cfg.StragglerAfter:
			s.drop(now, id)
		}
	}
}

// drop removes receiver id from the session and from every active transfer.
func (s *Sender) drop(now time.Time, id uint16) {
	r := s.info(id, now)
	r.dropped = true
	for _, t := range s.active {
		if t.members.Has(id) && !t.complete.Has(id) && !t.dropped.Has(id) {
			t.dropped = t.dropped.With(id)
			s.out = append(s.out, Outgoing{To: ToGroup, Members: wire.Mask(nil).With(id),
				Msg: &wire.Leave{Transfer: t.id, Dropped: wire.Mask(nil).With(id)}})
		}
	}
}

// next is the latest time the caller should Tick again.
func (s *Sender) next(now time.Time) time.Time {
	var next time.Time
	earlier := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	sending := false
	for _, t := range s.active {
		if t.nrepair > 0 || t.next < uint32(len(t.chunks)) {
			sending = true
		}
		if !t.sentAll.IsZero() {
			earlier(t.nextPoll)
		}
	}
	if sending {
		// Time to earn a full-size packet's tokens, at least 100 µs, so Ticks come in small bursts.
		need := float64(s.cfg.Datagram+wire.IPv4UDPOverhead) - s.tokens
		wait := time.Duration(need / (s.rate / 8) * float64(time.Second))
		earlier(now.Add(max(wait, 100*time.Microsecond)))
	}
	if len(s.active) > 0 {
		earlier(s.nextAdapt)
		earlier(now.Add(s.cfg.PollEvery)) // member checks
	}
	return next
}
