package source

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// The prime's overlap: the streams' first pass, which QEMU sends in address order, begins with pages that are
// zero or held (references), and the source link idles while the streams turn them into references, 0.2-0.3 s in
// the 4-guest bench, before the pass reaches pages whose bytes changed since the scan. The prime leaves its last
// contents to that time: those whose every page lies in the last part of its VM's RAM, which the pass reaches last.
// They are primed once the prime's own part is confirmed and the streams flow, and confirmed the same way (a second
// PRIME_DONE); until then a page of one goes literal, as a page of any content its target does not hold does.
const (
	// overlapBudget bounds the overlap's contents, in bytes of pages: about 0.35 s of a 200 Mbit/s link for
	// contents that do not compress, about the time the streams took to reach them in the bench. Measured there
	// (docs/benchmarks.md): with 4 MiB the link still idled 0.08-0.11 s after the prime, with 8 MiB 0.04-0.08 s.
	overlapBudget = 8 << 20
	// overlapFrom is where, in a VM's RAM, a content's pages must all lie (from this fraction on) to be left to the
	// overlap.
	overlapFrom = 0.5
	// overlapSpan bounds the overlap's time on the link as the prime measured it (overlapKeep): on a slow link
	// overlapBudget would take seconds, which the streams would spend waiting for it.
	overlapSpan = 350 * time.Millisecond
)

// overlapKeep is how many of the latest contents (overlapContents' order) the overlap keeps on a link of rate
// bytes/s: those that fit overlapSpan, counted as whole pages; all of them when the rate is unknown (0).
func overlapKeep(latest []uint32, rate float64) int {
	if rate <= 0 {
		return len(latest)
	}
	return min(len(latest), int(rate*overlapSpan.Seconds())/dedup.PageSize)
}

// pickOf marks ids in a bitmap over the map's contents.
func pickOf(sm *dedup.SharingMap, ids []uint32) []bool {
	pick := make([]bool, sm.Distinct())
	for _, id := range ids {
		pick[id] = true
	}
	return pick
}

// overlapMaxWait bounds a stream's wait for the overlap (overlapWait): beyond it, a receiver that does not answer,
// the page goes literal.
const overlapMaxWait = 5 * time.Second

// overlapWait is the prime's overlap as one target's streams see it: the fingerprints of the contents it sends the
// target, and done, closed once the target confirmed them (they are in its held index then) or failed to. A stream
// that meets a page with one of those fingerprints waits for done before it looks the page up again: on a host
// whose first pass outruns the overlap, its pages would otherwise go literal after their contents were sent. It
// waits only while the source VM runs (or is paused): QEMU may finish a guest that dirties nothing while its stream
// waits (its last pages are in the socket by then), and the wait would then be downtime; the stream sends the page
// literal instead.
type overlapWait struct {
	ids  map[dedup.Fingerprint]dedup.ContentID // read-only once the overlap starts
	done chan struct{}
	once sync.Once
}

func newOverlapWait(sm *dedup.SharingMap, tail []primeBatch, ti int) *overlapWait {
	o := &overlapWait{ids: map[dedup.Fingerprint]dedup.ContentID{}, done: make(chan struct{})}
	for _, b := range tail {
		if slices.Contains(b.targets, ti) {
			for _, id := range b.contents {
				o.ids[sm.Contents[id].FP] = dedup.ContentID(id)
			}
		}
	}
	return o
}

// settleOverlaps says the overlap is over for every target, confirmed or not.
func (p *primer) settleOverlaps() {
	for _, t := range p.s.targets {
		t.overlap.settle()
	}
}

// settle says the overlap to this target is over, confirmed or not.
func (o *overlapWait) settle() {
	if o != nil {
		o.once.Do(func() { close(o.done) })
	}
}

// wait waits for the overlap to this target to be over, at most overlapMaxWait and only while mayWait agrees
// (asked at once, then every overlapPoll); it reports whether the overlap is over.
func (o *overlapWait) wait(mayWait func() bool) bool {
	select {
	case <-o.done:
		return true
	default:
	}
	if mayWait == nil || !mayWait() {
		return false
	}
	deadline := time.NewTimer(overlapMaxWait)
	defer deadline.Stop()
	tick := time.NewTicker(overlapPoll)
	defer tick.Stop()
	for {
		select {
		case <-o.done:
			return true
		case <-deadline.C:
			return false
		case <-tick.C:
			if !mayWait() {
				return false
			}
		}
	}
}

// overlapPoll is how often a waiting stream asks whether it may still wait.
const overlapPoll = 20 * time.Millisecond

// overlapContents picks the contents of the batches that the prime leaves to its overlap, the latest first, or
// returns nil: those whose every scanned page lies at or beyond the fraction from of its VM's RAM, by the earliest
// of its pages, until they weigh budget bytes of pages. A content with more holders than a bundle names (kept for
// no VM in particular, which would change the targets' pinned sets while the streams read them) is never picked.
func overlapContents(sm *dedup.SharingMap, batches []primeBatch, budget int64, from float64) []uint32 {
	type late struct {
		id  uint32
		pos float64
	}
	var cands []late
	for _, b := range batches {
		for _, id := range b.contents {
			c := sm.Contents[id]
			if c.Count > wire.MaxSlotsPerContent {
				continue
			}
			pos := 1.0
			for _, l := range sm.Holders(dedup.ContentID(id)) {
				r := sm.Regions[l.Region]
				if r.Pages == 0 {
					pos = 0
					break
				}
				pos = min(pos, float64(l.Page)/float64(r.Pages))
			}
			if pos >= from {
				cands = append(cands, late{id, pos})
			}
		}
	}
	if len(cands) == 0 || budget < dedup.PageSize {
		return nil
	}
	slices.SortStableFunc(cands, func(a, b late) int { return cmp.Compare(b.pos, a.pos) })
	var out []uint32
	for i, c := range cands {
		if int64(i+1)*dedup.PageSize > budget {
			break
		}
		out = append(out, c.id)
	}
	return out
}

// splitBatches splits each batch into the contents not picked (head) and those picked (tail), in order. Every
// batch stays in head, empty or not, so that the prime's own part meets each group; tail has only batches with
// contents.
func splitBatches(batches []primeBatch, pick []bool) (head, tail []primeBatch) {
	for _, b := range batches {
		h := primeBatch{targets: b.targets}
		t := primeBatch{targets: b.targets}
		for _, id := range b.contents {
			if pick[id] {
				t.contents = append(t.contents, id)
			} else {
				h.contents = append(h.contents, id)
			}
		}
		head = append(head, h)
		if len(t.contents) > 0 {
			tail = append(tail, t)
		}
	}
	return head, tail
}

// overlap is the rest of a prime, run once the prime's own part is confirmed (run), and reported once it is
// joined (merge).
type overlap struct {
	p        *primer
	batches  []primeBatch
	warnings []string
	err      error
}

// run sends the overlap's contents, confirms them with every target, and adds those a target confirmed to its held
// index, which the streams read as they go. It ends the prime's groups. Cancelled, it stops where it is: what it
// did not confirm is never referenced.
func (o *overlap) run(ctx context.Context) {
	p := o.p
	defer p.closeGroups()
	defer p.settleOverlaps()
	if o.err = p.sendBatches(ctx, o.batches, nil); o.err == nil {
		o.warnings = p.finishOverlap(ctx)
	}
}

// merge puts the overlap's outcome and the prime's figures into rep; call it once run has returned.
func (o *overlap) merge(rep *report.Report, cancelled bool) {
	o.p.report(rep)
	for _, b := range o.batches {
		rep.Totals.PrimeOverlapContents += len(b.contents)
	}
	rep.Warnings = append(rep.Warnings, o.warnings...)
	if o.err != nil && !cancelled {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("the prime's last contents were not all sent, their pages travel literal: %v", o.err))
	}
}

// finishOverlap flushes the overlap's unicast frames, closes it with every target that confirmed the prime's own
// part and was sent more since, and waits for their confirmations: only then do the contents enter the target's
// held index. It returns its warnings.
func (p *primer) finishOverlap(ctx context.Context) (warnings []string) {
	s := p.s
	var asked []int
	for ti, t := range s.targets {
		if t.sc == nil || t.held == nil || len(p.sentTo[ti]) == 0 { // t.held nil: its prime failed
			continue
		}
		err := p.flush(ti)
		if err == nil {
			err = t.sc.SendJSON(wire.FramePrimeDone, wire.PrimeDoneMsg{Contents: p.sent[ti]})
		}
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("prime to %s: its last contents failed, their pages travel literal: %v", t.addr, err))
			continue
		}
		asked = append(asked, ti)
	}
	for _, ti := range asked {
		t := s.targets[ti]
		var ack wire.PrimeAckMsg
		err := t.sc.Expect(ctx, wire.FramePrimeAck, &ack)
		if err != nil {
			t.overlap.settle()
			warnings = append(warnings, fmt.Sprintf("prime to %s: its last contents failed, their pages travel literal: %v", t.addr, err))
			continue
		}
		sent := p.sentTo[ti]
		dropped := p.holdSentIf(ti, ack.Missing, func(dropped int) bool {
			return ack.Held >= p.sent[ti]-p.dropped[ti]-dropped+len(t.seedHeld)
		})
		t.overlap.settle() // its streams look again: what it holds now is in its held index
		if dropped < 0 {
			warnings = append(warnings, fmt.Sprintf("prime to %s: it holds %d contents, fewer than it was sent; the pages of the last %d travel literal",
				t.addr, ack.Held, len(sent)))
			continue
		}
		p.dropped[ti] += dropped
		if dropped > 0 {
			warnings = append(warnings, fmt.Sprintf("prime to %s: it did not store %d of its last contents; their pages travel literal", t.addr, dropped))
		}
		s.log.Info("prime's overlap done", "target", t.addr, "contents", ack.Held, "bytes", ack.Bytes)
	}
	return warnings
}
