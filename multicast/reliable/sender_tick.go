package reliable

import (
	"time"

	"github.com/vmscatter/vmscatter/multicast/wire"
)

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
