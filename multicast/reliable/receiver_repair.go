package reliable

import (
	"time"

	"github.com/vmscatter/vmscatter/multicast/wire"
)

// The receiver's repairs: placing shards, rebuilding blocks from parity, and the NAKs that ask for what is missing.

// place records chunk idx of t and assembles its object; it delivers the object when whole.
func (r *Receiver) place(t *rxTransfer, idx uint32, s wire.Shard) bool {
	p := t.partial[s.Object]
	if p == nil {
		p = &partial{buf: make([]byte, s.ObjectLen)}
		t.partial[s.Object] = p
	} else if uint32(len(p.buf)) != s.ObjectLen {
		r.stats.Ignored++
		return false
	}
	t.got.set(idx)
	t.count++
	r.stats.Chunks++
	copy(p.buf[s.Offset:], s.Payload)
	p.have += uint32(len(s.Payload))
	if p.have >= s.ObjectLen {
		delete(t.partial, s.Object)
		r.ready.Delivered = append(r.ready.Delivered, Object{ID: s.Object, Payload: p.buf})
		r.stats.Objects++
		r.stats.Bytes += uint64(len(p.buf))
	}
	return true
}

// advance runs after block b of t gained a symbol: it rebuilds the block when it can, frees it when
// whole, completes the transfer, and looks for gaps in blocks that became due.
func (r *Receiver) advance(now time.Time, id wire.Seq, t *rxTransfer, b uint32) {
	if blk := t.blocks[b]; blk != nil && !blk.decoded && blk.npar > 0 && blk.ndata+blk.npar >= len(blk.data) {
		r.rebuild(t, b, blk)
	}
	if t.held(b) == int(wire.BlockLen(t.total, t.k, b)) {
		r.drop(t, b)
	}
	if t.count == t.total {
		r.complete(id)
		r.finish(id, true)
		return
	}
	for ; t.due(t.checked); t.checked++ {
		if t.need(t.checked) > 0 {
			r.schedule(now, t)
		}
	}
}

// rebuild decodes block b from its data and parity shards and places the chunks it lacked.
func (r *Receiver) rebuild(t *rxTransfer, b uint32, blk *rxBlock) {
	blk.decoded = true
	data := append([][]byte(nil), blk.data...)
	if err := r.coder.Reconstruct(data, blk.parity); err != nil {
		r.stats.Ignored++
		r.dropParity(t, blk)
		return
	}
	first := b * uint32(t.k)
	for i, sh := range data {
		if blk.data[i] != nil {
			continue
		}
		s, err := wire.ParseShard(sh)
		if err != nil || t.got.has(first+uint32(i)) {
			r.stats.Ignored++
			continue
		}
		if r.place(t, first+uint32(i), s) {
			r.stats.Rebuilt++
		}
	}
	if t.held(b) < len(blk.data) {
		r.dropParity(t, blk) // inconsistent shards: ask again
	}
}

// dropParity forgets a block's parity (it did not decode: the block is asked for again).
func (r *Receiver) dropParity(t *rxTransfer, blk *rxBlock) {
	for j, p := range blk.parity {
		blk.bytes -= len(p)
		t.retained -= len(p)
		r.retained -= len(p)
		blk.parity[j] = nil
	}
	blk.npar, blk.decoded = 0, false
}

func (r *Receiver) onParity(now time.Time, p *wire.Parity) {
	t := r.transferFor(p.Members, p.Transfer, p.Total, p.Block)
	if t == nil {
		return
	}
	b := p.BlockIndex
	n := wire.BlockLen(t.total, t.k, b)
	t.high = max(t.high, b*uint32(t.k)+n) // the whole block was sent
	if t.need(b) == 0 {
		r.stats.Duplicates++
		return
	}
	blk := r.block(t, b)
	if blk == nil {
		r.stats.Ignored++
		return
	}
	j := int(p.Index)
	if j < len(blk.parity) && blk.parity[j] != nil {
		r.stats.Duplicates++
		return
	}
	for _, q := range blk.parity {
		if q != nil && len(q) != len(p.Shard) {
			r.stats.Ignored++
			return
		}
	}
	for len(blk.parity) <= j {
		blk.parity = append(blk.parity, nil)
	}
	blk.parity[j] = append([]byte(nil), p.Shard...)
	blk.npar++
	r.keep(t, blk, len(p.Shard))
	r.stats.Parity++
	r.advance(now, p.Transfer, t, b)
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
	t := r.transfer(p.Transfer, p.Total, p.Block)
	if t == nil {
		r.stats.Ignored++
		return
	}
	t.high, t.tail = t.total, true // every chunk went out once
	if !p.Pending.Has(r.id) {
		return
	}
	// Answer now, even if every block is on hold: the empty NAK tells the sender we are alive.
	if r.nak(now, p.Transfer, t) == 0 {
		r.ready.Packets = append(r.ready.Packets, Outgoing{To: ToSender, Msg: &wire.Nak{Transfer: p.Transfer}})
	}
}

// perBlock calls f for each block that ranges (ascending, as NAKs list them) name, with the number of
// chunks they name in it. A range that overlaps or precedes the one before it is skipped, so the work is
// bounded by the transfer's size whatever a NAK holds.
func perBlock(ranges []wire.Range, k uint8, total uint32, f func(b uint32, n int)) {
	cur, n := uint32(0), 0
	for i, rg := range ranges {
		if i > 0 && rg.First <= ranges[i-1].Last {
			continue
		}
		last := min(rg.Last, total-1)
		for c := rg.First; c <= last; {
			b := c / uint32(k)
			end := min(last, (b+1)*uint32(k)-1)
			if n > 0 && b != cur {
				f(cur, n)
				n = 0
			}
			cur = b
			n += int(end-c) + 1
			c = end + 1
		}
	}
	if n > 0 {
		f(cur, n)
	}
}

// onOtherNak holds our own NAK of a block while another member asked for at least as many symbols of
// it as we need: the sender's answer to that NAK serves us too.
func (r *Receiver) onOtherNak(now time.Time, n *wire.Nak) {
	t := r.transfers[n.Transfer]
	if t == nil {
		return
	}
	until := now.Add(r.cfg.NakHold)
	perBlock(n.Ranges, t.k, t.total, func(b uint32, c int) {
		need := t.need(b)
		if need == 0 || need > c {
			return
		}
		h := t.holds[b]
		if h.until.Before(until) || h.covered < c {
			t.holds[b] = nakHold{until: until, covered: max(c, h.covered)}
			r.stats.Suppressed += uint64(need)
		}
	})
}

// nak asks for the symbols t's due blocks lack, unless on hold, and returns how many NAKs it sent. A NAK
// lists, per block, as many missing chunks as the block needs symbols (its lowest missing chunks); a
// block is never split across two NAKs.
func (r *Receiver) nak(now time.Time, id wire.Seq, t *rxTransfer) int {
	for t.low < t.total && t.got.has(t.low) {
		t.low++
	}
	until := now.Add(r.cfg.NakHold)
	sent := 0
	var ranges []wire.Range
	flush := func() {
		if len(ranges) > 0 {
			r.ready.Packets = append(r.ready.Packets, Outgoing{To: ToGroup, Msg: &wire.Nak{Transfer: id, Ranges: ranges}})
			r.stats.NaksSent++
			sent++
			ranges = nil
		}
	}
	// Blocks never asked for go first, then those asked for again (their repairs were lost or are late).
scan:
	for pass := range 2 {
		for b := t.low / uint32(t.k); t.due(b); b++ {
			h, asked := t.holds[b]
			if asked != (pass == 1) {
				continue
			}
			need := t.need(b)
			if need == 0 || asked && now.Before(h.until) && need <= h.covered {
				continue
			}
			mine, listed := t.missing(b, need)
			if len(ranges)+len(mine) > wire.MaxNakRanges {
				flush()
				if sent == maxNaksPerTick {
					break scan
				}
			}
			ranges = append(ranges, mine...)
			t.holds[b] = nakHold{until: until, covered: listed}
		}
	}
	flush()
	return sent
}

// missing lists the lowest need missing chunks of block b as ranges (at most wire.MaxNakRanges of them),
// with how many chunks they hold.
func (t *rxTransfer) missing(b uint32, need int) ([]wire.Range, int) {
	var rs []wire.Range
	listed := 0
	first := b * uint32(t.k)
	for c := first; c < first+wire.BlockLen(t.total, t.k, b) && listed < need; c++ {
		if t.got.has(c) {
			continue
		}
		if n := len(rs); n > 0 && rs[n-1].Last == c-1 {
			rs[n-1].Last = c
		} else if n == wire.MaxNakRanges {
			break
		} else {
			rs = append(rs, wire.Range{First: c, Last: c})
		}
		listed++
	}
	return rs, listed
}
