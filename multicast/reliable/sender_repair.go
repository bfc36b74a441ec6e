package reliable

import (
	"time"

	"github.com/vmscatter/vmscatter/multicast/wire"
)

// The sender's repairs: which blocks members still ask for, the parity shards that answer them, and what each costs.

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
