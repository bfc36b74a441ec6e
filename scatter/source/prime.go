package source

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/multicast"
	"github.com/vmscatter/vmscatter/scatter/host"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// contentFrameTarget is the size at which a CONTENT frame is sent.
const contentFrameTarget = 256 << 10

// maxDigestsFrame bounds a DIGESTS frame: whole records, well under the connection's frame limit.
const maxDigestsFrame = (1 << 20) / wire.DigestRecordLen * wire.DigestRecordLen

// destinationsAfter is how many bytes of the prime's TCP part go out before the first destinations start
// (sender.openDestinations): by then TCP runs at the link's rate, and the targets' receivers keep up with it.
const destinationsAfter = 8 << 20

// multicastChunk bounds the bytes of one multicast Send (and so the memory held for repairs: two chunks, the one
// being sent and the next being queued). A group's first Send takes firstMulticastChunk.
const (
	multicastChunk      = 8 << 20
	firstMulticastChunk = 1 << 20
)

// primer is the state of one prime (phase 5), owned by the sender's goroutine.
type primer struct {
	s                                   *sender
	sm                                  *dedup.SharingMap
	digester                            *dedup.Digester
	held                                []*dedup.HeldIndex // per target
	pinned                              [][]uint64         // per target: contents kept for no VM in particular
	frames                              [][]byte           // per target: the CONTENT frame being filled
	sent                                []int              // per target: contents sent to it
	dropped                             []int              // per target: contents it did not store (PRIME_ACK's missing)
	capped                              bool               // capGroups ran
	groups                              map[string]*primeGroup
	slots                               []int
	heads                               []wire.BundleHead
	pages                               []byte         // the current window's pages, as read at prime time
	holders                             []int          // the current window's contents' holder VMs, back to back
	probe                               host.IfaceRate // the link under TCP: first unicast frames to first multicast batch
	unicastBytes                        int64          // CONTENT bytes queued so far
	unicastStart                        time.Time      // the first CONTENT frame's queueing
	lowerBound, lowerCompressed         int64          // once per target that needs it (unicast)
	lowerBoundOnce, lowerCompressedOnce int64          // once in all (multicast)
	multicastBytes                      int64          // datagram payload bytes the group senders sent
	// effort picks how hard the windows' bundles are compressed, from where each window's time went: preparing it,
	// or waiting (linkWait) for the link to take it (sends blocked on a full socket, a group's chunk under way).
	effort   dedup.EffortControl
	linkWait time.Duration
	// The contents sent: each one's digest, by id, and per target the ids sent to it, by a group or alone. They
	// enter the target's held index at the end (finish), less those its receiver did not store (PRIME_ACK's
	// missing: dropped multicast contents, and contents its store had no room for).
	digests []dedup.Digest
	sentTo  [][]dedup.ContentID
	// late holds, per target, the contents left out for its seed that the seed did not bring (settleSeeds): they
	// are primed to it alone at the end (primeLate).
	late [][]dedup.ContentID
}

// primeGroup is one multicast group: the batches of one target set of two or more targets.
type primeGroup struct {
	addr    string
	targets []int
	sender  *multicast.Sender // nil: the group is served by unicast
	objects []multicast.Object
	queued  int    // payload bytes of objects
	digests []byte // DIGESTS records of objects' contents, sent to every member before the objects
	sends   int    // Sends started
	// inflight is the Send under way (one at a time per group), which the prime's loop does not wait for while it
	// prepares the next chunk: the link stays busy between chunks. Its outcome is taken (settleGroup) before the next
	// Send, and at the end of the group's batch.
	inflight chan groupSent
	rtt      time.Duration // the probe's longest round trip at openGroups
	checked  bool          // recheckGroup ran
}

// groupSent is the outcome of one Send of a group's objects.
type groupSent struct {
	objects []multicast.Object
	res     multicast.Result
	err     error
}

// prime sends every distinct content once to each target that needs it (phase 5), batch by batch in the
// schedule's order: over multicast to a batch's group when it has two or more targets and multicast works, else
// over the targets' control connections. It records what each target confirmed holding. Each content's bytes are
// read once, at prime time, from a page that still has the scanned fingerprint; the keyed digest is taken over
// exactly the bytes sent, so a later reference is exact whatever the guest did in between.
//
// It leaves to its overlap (returned, nil when there is none) the contents that the streams' first pass reaches
// last (overlapContents): the caller runs it once the prime is over, while the streams start, and merges it into
// the report once the migrations are done.
func (s *sender) prime(ctx context.Context, sm *dedup.SharingMap, rep *report.Report) (*overlap, error) {
	n := len(s.targets)
	s.costs = make([]uint32, sm.Distinct())
	p := &primer{s: s, sm: sm, digester: s.digester, held: make([]*dedup.HeldIndex, n),
		pinned: make([][]uint64, n), frames: make([][]byte, n), sent: make([]int, n), dropped: make([]int, n),
		digests: make([]dedup.Digest, sm.Distinct()), sentTo: make([][]dedup.ContentID, n), late: make([][]dedup.ContentID, n)}
	for i := range s.targets {
		p.held[i] = dedup.NewHeldIndex(s.fingerprint(), p.digester)
		p.pinned[i] = make([]uint64, (sm.Distinct()+63)/64)
	}
	s.fitStores(sm, rep)
	head, tail := s.batches, []primeBatch(nil)
	latest := overlapContents(sm, s.batches, overlapBudget, overlapFrom)
	if len(latest) > 0 {
		head, tail = splitBatches(s.batches, pickOf(sm, latest))
	}
	if err := p.openGroups(ctx, rep); err != nil {
		return nil, err
	}
	// The seed goes out now and the prime does not wait for its answers (settleSeeds, at the end): the targets read
	// their files while the first contents travel.
	p.seedSend(rep)
	ended := false
	defer func() {
		if !ended {
			p.closeGroups()
			p.report(rep)
		}
	}()
	p.probe = host.IfaceRate{Iface: s.iface, MinBytes: minProbeBytes, MinTime: minProbeTime}
	if err := p.sendBatches(ctx, head, rep); err != nil {
		return nil, err
	}
	// The overlap is to fill the link for a moment, not to hold the streams up: on a slow link the prime sends all
	// but the latest of its contents now.
	if keep := overlapKeep(latest, p.probe.Rate()); keep < len(latest) {
		var now []primeBatch
		now, tail = splitBatches(tail, pickOf(sm, latest[:keep]))
		if err := p.sendBatches(ctx, now, rep); err != nil {
			return nil, err
		}
	}
	for ti, t := range s.targets {
		if o := newOverlapWait(sm, tail, ti); len(o.ids) > 0 {
			t.overlap = o
		}
	}
	fast, more := p.effort.Windows()
	s.log.Debug("prime: compression effort", "windows_fast", fast, "windows_more", more)
	p.settleSeeds(ctx, rep)
	if err := p.primeLate(ctx); err != nil {
		return nil, err
	}
	if err := p.finish(ctx, rep); err != nil || len(tail) == 0 {
		p.settleOverlaps() // no overlap: nothing to wait for
		return nil, err
	}
	ended = true // the overlap ends the groups and reports
	return &overlap{p: p, batches: tail}, nil
}

// sendBatches sends the batches' contents, in unicastFirst's order. The prime's own part (rep set) checks and caps
// each group as its first batch starts, and starts the destinations and the source migrations at the first; the
// overlap (rep nil) finds all that done.
func (p *primer) sendBatches(ctx context.Context, batches []primeBatch, rep *report.Report) error {
	s := p.s
	done, total := 0, 0
	for _, b := range batches {
		total += len(b.contents)
	}
	lastProgress := time.Now()
	var full, partial []uint32
	var rest []int
	for _, b := range p.unicastFirst(batches) {
		g := p.groups[targetSetKey(b.targets)]
		if g != nil && g.sender != nil && !g.checked && rep != nil {
			g.checked = true
			p.recheckGroup(ctx, g, rep)
		}
		if g != nil && g.sender != nil && !p.capped {
			p.capGroups(int64(8 * p.probe.Rate()))
			p.capped = true
		}
		if g != nil { // the groups' batches, served by their group or not, are the prime's last stage
			s.startDestinations()
			s.primeTailStarts()
		}
		for start := 0; start < len(b.contents); start += prepareWindow {
			window := b.contents[start:min(start+prepareWindow, len(b.contents))]
			// Contents that every target of the batch read from its own files need no prime. One that some of them
			// read (their copy of the file differs from the source's elsewhere) goes to the others alone.
			full, partial = full[:0], partial[:0]
			for _, id := range window {
				switch cid := dedup.ContentID(id); {
				case !p.seededAtAny(cid, b.targets):
					full = append(full, id)
				case !p.seededAtAll(cid, b.targets):
					partial = append(partial, id)
				}
			}
			t0, waited := time.Now(), p.linkWait
			bundles, err := p.prepare(ctx, full, dedup.MaxBundlePages)
			if err != nil {
				return err
			}
			prepared := time.Since(t0)
			for i := range bundles {
				if err := p.one(ctx, &bundles[i], b.targets, g); err != nil {
					return err
				}
			}
			t0 = time.Now()
			if bundles, err = p.prepare(ctx, partial, 1); err != nil {
				return err
			}
			prepared += time.Since(t0)
			for i := range bundles {
				rest = p.notSeeded(rest[:0], bundles[i].contents[0].id, b.targets)
				if err := p.one(ctx, &bundles[i], rest, nil); err != nil {
					return err
				}
			}
			if was := p.effort.Effort(); p.effort.Observe(prepared, p.linkWait-waited) != was {
				s.log.Debug("prime: compression effort changed", "effort", p.effort.Effort(), "prepare_ms", prepared.Milliseconds(),
					"link_wait_ms", (p.linkWait - waited).Milliseconds())
			}
			done += len(window)
			if rep != nil && time.Since(lastProgress) > time.Second {
				s.progress.set("(prime)", "priming", fmt.Sprintf("%d of %d contents", done, total))
				lastProgress = time.Now()
			}
		}
		if g != nil {
			if err := p.flushGroup(ctx, g); err != nil {
				return err
			}
		}
	}
	return nil
}

// report puts the prime's figures into rep: its bytes and the lower bounds over what it sent.
func (p *primer) report(rep *report.Report) {
	rep.Totals.PrimeBytes += p.multicastBytes
	for _, t := range p.s.targets {
		if t.sc != nil {
			rep.Totals.PrimeBytes += t.sc.BytesOut()
		}
	}
	rep.Totals.LowerBoundUnicastBytes, rep.Totals.LowerBoundMulticastBytes = p.lowerBound, p.lowerBoundOnce
	rep.Totals.LowerBoundBytes, rep.Totals.LowerBoundCompressedBytes = p.lowerBound, p.lowerCompressed
	if rep.Transport == TransportMulticast {
		rep.Totals.LowerBoundBytes, rep.Totals.LowerBoundCompressedBytes = p.lowerBoundOnce, p.lowerCompressedOnce
	}
}

// unicastFirst orders the schedule's batches so that the unicast ones go first and those of working multicast
// groups after, each in schedule order. The unicast part is TCP, which finds the link's rate by itself; its rate,
// measured on the interface, caps the groups (capGroups), whose own congestion control starts at the maximum and,
// on a link ten times slower (a 100 Mbit/s uplink under the 1 Gbit/s default), came down so slowly that a prime
// never outlasted it (measured: 39.7 MB of repairs for 14 MB of data; with the cap, a few percent). And a
// multicast batch never shares the link with unicast content still draining from socket buffers.
func (p *primer) unicastFirst(batches []primeBatch) []primeBatch {
	var mc, uc []primeBatch
	for _, b := range batches {
		if g := p.groups[targetSetKey(b.targets)]; g != nil && g.sender != nil {
			mc = append(mc, b)
		} else {
			uc = append(uc, b)
		}
	}
	return append(uc, mc...)
}

// minProbeBytes and minProbeTime: a shorter unicast part measures nothing reliable.
const (
	minProbeBytes = 2 << 20
	minProbeTime  = 100 * time.Millisecond
)

// capGroups caps every group's rate at a little above the measured link rate (the congestion control probes below
// it).
func (p *primer) capGroups(bps int64) {
	if bps <= 0 {
		p.s.log.Warn("multicast rate not capped: the prime's TCP part gave no measure of the link's rate",
			"tcp_bytes", p.unicastBytes, "tcp_ms", time.Since(p.unicastStart).Milliseconds())
		return
	}
	limit := bps + bps/10
	for _, g := range p.groups {
		if g.sender != nil {
			g.sender.LimitRate(limit)
		}
	}
	p.s.log.Info("multicast rate capped at the measured link rate", "link_bps", bps, "cap_bps", limit)
}

// seededAtAny reports whether some target in targets read content id from its own files.
func (p *primer) seededAtAny(id dedup.ContentID, targets []int) bool {
	for _, ti := range targets {
		if p.s.targets[ti].isSeeded(id) {
			return true
		}
	}
	return false
}

// seededAtAll reports whether every target in targets read content id from its own files.
func (p *primer) seededAtAll(id dedup.ContentID, targets []int) bool {
	for _, ti := range targets {
		if !p.s.targets[ti].isSeeded(id) {
			return false
		}
	}
	return true
}

// notSeeded appends to dst the targets that did not read content id from their own files.
func (p *primer) notSeeded(dst []int, id dedup.ContentID, targets []int) []int {
	for _, ti := range targets {
		if !p.s.targets[ti].isSeeded(id) {
			dst = append(dst, ti)
		}
	}
	return dst
}

// one queues a prepared bundle for its targets: over the group when g can send, else to each target alone.
func (p *primer) one(ctx context.Context, b *preparedBundle, targets []int, g *primeGroup) error {
	s := p.s
	share := uint32(len(b.data) / len(b.contents)) // each content's part of the compressed bundle
	for _, c := range b.contents {
		p.lowerBound += int64(len(targets)) * dedup.PageSize
		p.lowerBoundOnce += dedup.PageSize
		p.lowerCompressed += int64(len(targets)) * int64(share)
		p.lowerCompressedOnce += int64(share)
		s.costs[c.id] = share
		p.digests[c.id] = c.dg
	}
	hold := func(ti int) {
		for _, c := range b.contents {
			p.sentTo[ti] = append(p.sentTo[ti], c.id)
		}
		p.sent[ti] += len(b.contents)
	}
	if g != nil && g.sender != nil {
		// One object for the whole group, naming every holder; each receiver keeps its own VMs' slots. A content
		// with too many holders to name is kept for the whole session.
		p.heads = p.heads[:0]
		for _, c := range b.contents {
			h := wire.BundleHead{ID: c.id, Slots: c.holders}
			if len(c.holders) > wire.MaxSlotsPerContent {
				h.Slots = nil
				for _, ti := range targets {
					p.pinned[ti][c.id/64] |= 1 << (c.id % 64)
				}
			}
			p.heads = append(p.heads, h)
		}
		payload := wire.AppendBundle(nil, b.codec, p.heads, b.data)
		g.objects = append(g.objects, multicast.Object{ID: uint64(b.contents[0].id), Payload: payload})
		g.queued += len(payload)
		for _, c := range b.contents {
			g.digests = wire.AppendDigestRecord(g.digests, c.id, c.dg)
		}
		for _, ti := range targets {
			hold(ti)
		}
		// A group's first Send is small, so that the link, which the TCP part has just left, waits for one
		// chunk's preparation at most that long; the later ones are prepared while the one before is sent.
		if g.queued >= multicastChunk || (g.sends == 0 && g.queued >= firstMulticastChunk) {
			return p.sendGroup(ctx, g)
		}
		return nil
	}
	for _, ti := range targets {
		p.heads, p.slots = p.heads[:0], p.slots[:0]
		for _, c := range b.contents {
			from := len(p.slots)
			for _, vmi := range c.holders {
				if s.vms[vmi].target == s.targets[ti] {
					p.slots = append(p.slots, vmi)
				}
			}
			h := wire.BundleHead{ID: c.id, Slots: p.slots[from:len(p.slots):len(p.slots)]}
			if len(h.Slots) > wire.MaxSlotsPerContent {
				// Too many to name: the receiver keeps it for the whole session, and every VM may use it.
				h.Slots = nil
				p.pinned[ti][c.id/64] |= 1 << (c.id % 64)
			}
			p.heads = append(p.heads, h)
		}
		p.frames[ti] = wire.AppendBundle(p.frames[ti], b.codec, p.heads, b.data)
		hold(ti)
		if len(p.frames[ti]) >= contentFrameTarget {
			if err := p.flush(ti); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p *primer) flush(ti int) error {
	if len(p.frames[ti]) == 0 {
		return nil
	}
	if p.unicastStart.IsZero() {
		p.unicastStart = time.Now()
	}
	if p.unicastBytes += int64(len(p.frames[ti])); p.unicastBytes >= 1<<20 {
		p.probe.Start() // a socket buffer's worth in: TCP is past its start, the link busy
	}
	if p.unicastBytes >= destinationsAfter {
		p.s.startDestinations()
	}
	t0 := time.Now()
	err := p.s.targets[ti].sc.Send(wire.FrameContent, p.frames[ti], false)
	p.linkWait += time.Since(t0)
	p.frames[ti] = p.frames[ti][:0]
	if err != nil {
		return fmt.Errorf("prime to %s: %w", p.s.targets[ti].addr, err)
	}
	return nil
}

// flushGroup multicasts the group's queued objects and waits for every Send of the group to end; targets the
// transport dropped get their objects by unicast.
func (p *primer) flushGroup(ctx context.Context, g *primeGroup) error {
	if err := p.sendGroup(ctx, g); err != nil {
		return err
	}
	return p.settleGroup(g)
}

// sendGroup starts multicasting the group's queued objects, once the Send before it has ended (settleGroup), and
// returns without waiting for it.
func (p *primer) sendGroup(ctx context.Context, g *primeGroup) error {
	if err := p.settleGroup(g); err != nil {
		return err
	}
	if len(g.objects) == 0 {
		return nil
	}
	// Each member gets the contents' digests first, over its own control connection: its receiver stores a
	// content the group delivers only if the bytes match (a member holding the group key could forge packets).
	for _, ti := range g.targets {
		for b := g.digests; len(b) > 0; {
			n := min(len(b), maxDigestsFrame)
			if err := p.s.targets[ti].sc.Send(wire.FrameDigests, b[:n], false); err != nil {
				return fmt.Errorf("prime to %s: %w", p.s.targets[ti].addr, err)
			}
			b = b[n:]
		}
	}
	g.digests = g.digests[:0]
	ids := make([]multicast.ReceiverID, len(g.targets))
	for i, ti := range g.targets {
		ids[i] = multicast.ReceiverID(ti)
	}
	objects := g.objects
	g.objects, g.queued = nil, 0
	g.sends++
	g.inflight = make(chan groupSent, 1)
	go func(out chan<- groupSent) {
		res, err := g.sender.Send(ctx, ids, objects)
		out <- groupSent{objects: objects, res: res, err: err}
	}(g.inflight)
	return nil
}

// settleGroup waits for the group's Send under way, if any; the targets it dropped get its objects by unicast.
func (p *primer) settleGroup(g *primeGroup) error {
	if g.inflight == nil {
		return nil
	}
	t0 := time.Now()
	sent := <-g.inflight
	p.linkWait += time.Since(t0)
	g.inflight = nil
	if sent.err != nil {
		return fmt.Errorf("multicast to %s: %w", g.addr, sent.err)
	}
	for _, id := range sent.res.Dropped {
		ti := int(id)
		st := g.sender.Stats()
		p.s.log.Warn("multicast receiver dropped as too slow; serving it by unicast", "target", p.s.targets[ti].addr,
			"group_sent", st.Transport.BytesSent, "data", st.Engine.DataBytes, "repair", st.Engine.RepairBytes,
			"rate_bps", st.Engine.RateBps, "cuts", st.Engine.RateCuts)
		for _, o := range sent.objects {
			p.frames[ti] = append(p.frames[ti], o.Payload...) // the same bundle as on unicast
			if len(p.frames[ti]) >= contentFrameTarget {
				if err := p.flush(ti); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// finish flushes the unicast frames, closes the prime with every target and waits for their confirmations. Only
// a target that confirmed counts as holding the contents.
func (p *primer) finish(ctx context.Context, rep *report.Report) error {
	s := p.s
	for ti, t := range s.targets {
		if t.sc == nil || p.sent[ti] == 0 {
			continue
		}
		if err := p.flush(ti); err != nil {
			return err
		}
		if err := t.sc.SendJSON(wire.FramePrimeDone, wire.PrimeDoneMsg{Contents: p.sent[ti]}); err != nil {
			return fmt.Errorf("prime to %s: %w", t.addr, err)
		}
	}
	for ti, t := range s.targets {
		if t.sc != nil && p.sent[ti] == 0 {
			// The seed brought everything this target needs, or it needs nothing yet: the overlap may add to it.
			t.held, t.pinned = p.held[ti], p.pinned[ti]
		}
		if t.sc == nil || p.sent[ti] == 0 {
			continue
		}
		var ack wire.PrimeAckMsg
		if err := t.sc.Expect(ctx, wire.FramePrimeAck, &ack); err != nil {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("prime to %s failed, its VMs' pages travel literal: %v", t.addr, err))
			continue
		}
		dropped := p.holdSent(ti, ack.Missing)
		p.dropped[ti] += dropped
		if dropped > 0 {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("prime to %s: it did not store %d contents (multicast ones not matching their digests, or no room in its store); their pages travel literal",
				t.addr, dropped))
		}
		if want := p.sent[ti] - dropped + len(t.seedHeld); ack.Held < want {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("prime to %s: it holds %d of %d contents; its VMs' pages travel literal",
				t.addr, ack.Held, want))
			continue
		}
		t.held, t.pinned = p.held[ti], p.pinned[ti]
		s.log.Info("prime done", "target", t.addr, "contents", ack.Held, "bytes", ack.Bytes)
	}
	return nil
}

// holdSent adds to target ti's held index the contents sent to it, less those its receiver reported missing, and
// returns how many of them it left out. Only the ids sent to ti count: a missing id it was never sent (a forged
// one) changes nothing.
func (p *primer) holdSent(ti int, missing []uint32) int { return p.holdSentIf(ti, missing, nil) }

// holdSentIf is holdSent when ok, given how many of the contents sent the receiver reported missing, agrees (nil
// agrees); else it adds nothing and returns -1. Either way the contents sent are settled.
func (p *primer) holdSentIf(ti int, missing []uint32, ok func(dropped int) bool) int {
	gone := make(map[dedup.ContentID]bool, len(missing))
	for _, id := range missing {
		gone[dedup.ContentID(id)] = true
	}
	left := 0
	for _, id := range p.sentTo[ti] {
		if gone[id] {
			left++
		}
	}
	sent := p.sentTo[ti]
	p.sentTo[ti] = nil
	if ok != nil && !ok(left) {
		return -1
	}
	for _, id := range sent {
		if !gone[id] {
			p.held[ti].Add(id, p.sm.Contents[id].FP, p.digests[id])
		}
	}
	return left
}

func targetSetKey(targets []int) string { return fmt.Sprint(targets) }

// readCurrent reads content id's bytes from the first holder whose page still has the scanned fingerprint.
func readCurrent(sm *dedup.SharingMap, id dedup.ContentID, page []byte, fp dedup.FingerprintFunc) bool {
	want := sm.Contents[id].FP
	for i, l := range sm.Holders(id) {
		if i >= 4 {
			return false
		}
		var rerr *dedup.RegionError
		if err := sm.ReadPage(l, page); err != nil && !errors.As(err, &rerr) {
			return false
		} else if err != nil {
			continue
		}
		if fp(page) == want && !dedup.IsZero(page) {
			return true
		}
	}
	return false
}
