package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/qemu/stream"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// pageCodec compresses pages: the prime's bundles, and literal pages unless they adapt.
type pageCodec = dedup.Codec

// compressAuto is --compress's default: each stream's literal pages adapt their compression to the link and the CPU
// (dedup.CodecChooser), and the prime's bundles use zstd.
const compressAuto = "auto"

// parseCompress parses --compress: the codec of the prime and of fixed literals, and whether literals adapt.
func parseCompress(s string) (c pageCodec, adaptive bool, err error) {
	if s == compressAuto {
		return dedup.CodecZstd, true, nil
	}
	c, err = dedup.ParseCodec(s)
	if err != nil {
		return c, false, fmt.Errorf("--compress %q: use auto, zstd, s2 or none", s)
	}
	return c, false, nil
}

// probeEvery is how often a stream whose literals adapt compresses one of them with every method to measure them
// (after its first few literals): the probes cost about 1% of what its literals cost.
const probeEvery = 64

// literalCodec compresses one stream's literal pages: with a fixed method, or adapting (chooser not nil).
type literalCodec struct {
	method   dedup.Method
	chooser  *dedup.CodecChooser
	share    func() float64 // the stream's share of the link now, bytes/s
	literals int
	scratch  []byte
}

func (m *vmMigration) literalCodec() *literalCodec {
	lc := &literalCodec{method: dedup.MethodOf(m.s.codec), share: m.s.linkShareNow}
	if m.s.adaptive {
		lc.chooser = dedup.NewCodecChooser(lc.method)
	}
	return lc
}

// literal notes one literal page, whose bytes are page, and probes every method on it when its turn comes. It
// returns whether the method changed.
func (lc *literalCodec) literal(page []byte) bool {
	if lc.chooser == nil {
		return false
	}
	if lc.literals++; lc.literals > 4 && lc.literals%probeEvery != 0 {
		return false
	}
	lc.chooser.SetLink(lc.share())
	for _, c := range lc.chooser.Candidates() {
		t0 := time.Now()
		lc.scratch, _ = c.Compress(lc.scratch[:0], page)
		lc.chooser.Observe(dedup.Probe{Method: c, CPU: time.Since(t0), Wire: len(lc.scratch)})
	}
	was := lc.method
	lc.method = lc.chooser.Decide()
	return lc.method != was
}

// pagesFrameTarget is the size at which a PAGES frame is sent; small enough that QEMU's view of the link stays
// honest (a deep buffer hides real downtime), large enough to amortize the frame's seal.
const pagesFrameTarget = 64 << 10

// pump decodes the source QEMU's stream and sends it to the receiver as frames. It runs on its own goroutine and
// is the only writer of stream frames; it returns nil at the source stream's clean end (STREAM_END sent).
func (m *vmMigration) pump(ctx context.Context) error {
	// The stream waits in its socket (QEMU blocks writing) until the prime is over and the target's held contents
	// are known.
	select {
	case <-m.s.primed:
	case <-ctx.Done():
		return ctx.Err()
	}
	if m.mig != nil {
		select { // and until the watch has given QEMU the downtime limit the link's share calls for
		case <-m.mig.tuned:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	dec := stream.NewDecoder(m.src)
	sc := m.conn()
	if sc == nil {
		return errors.New("the connection to the receiver is lost")
	}
	held := m.s.heldFor(m.vm)
	fingerprint := m.s.fingerprint()
	final := report.NewFinalImage(m.s.targetIndex(m.vm.target))
	m.vm.final = final
	m.s.streams.Add(1)
	defer m.s.streams.Add(-1)
	lc := m.literalCodec()
	defer func() { m.lastMethod = lc.method }()
	var batch, zbuf []byte
	literalBytes := 0 // of the batch: compressed page bytes, which a frame compression would not shrink
	flush := func(force bool) error {
		if len(batch) > 0 {
			t, payload := wire.FramePages, batch
			// A frame of zero pages and references shrinks to about 5 bytes a record when compressed as a whole; a
			// frame of literals, compressed one by one already, does not, and is not given the extra pass.
			if literalBytes < len(batch)/2 {
				if zbuf = dedup.CompressRecords(zbuf, batch); zbuf != nil {
					t, payload = wire.FramePagesZ, zbuf
				}
			}
			if err := sc.Send(t, payload, force); err != nil {
				return err
			}
			batch, literalBytes = batch[:0], 0
		} else if force {
			return sc.Flush()
		}
		return nil
	}
	var wireBytes int64
	sent := literalsSent{digester: m.s.digester, at: map[uint64]dedup.Digest{}}
	firstPage := true
	lastProgress := time.Now()
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		ev, err := dec.Next()
		if errors.Is(err, io.EOF) {
			if err := flush(false); err != nil {
				return m.toReceiver(err)
			}
			return m.toReceiver(sc.Send(wire.FrameStreamEnd, nil, true))
		}
		if err != nil {
			return fmt.Errorf("source stream: %w", err)
		}
		switch e := ev.(type) {
		case stream.Prefix:
			err = sc.Send(wire.FramePrefix, e.Raw, true)
		case stream.RAMStart:
			err = sc.SendJSON(wire.FrameRAMStart, wire.RAMStartToWire(e))
		case stream.SectionBegin:
			err = sc.Send(wire.FrameSection, wire.AppendSection(nil, byte(e.Kind), e.SectionID), false)
		case stream.Page:
			if firstPage {
				firstPage = false
				m.log.Debug("the stream's first page", "since_migrate_ms", time.Since(m.started).Milliseconds())
			}
			m.pages.Total++
			m.counters.stream.Add(dedup.PageSize)
			if sent.same(e) {
				m.pages.Unchanged++
				continue
			}
			var placed dedup.Placed
			batch, placed = dedup.AppendPage(batch, dedup.Page{Block: uint16(e.Block), Offset: uint64(e.Offset), Zero: e.Zero,
				Fill: e.Fill, Data: e.Data}, fingerprint, held, lc.method)
			block, offset := uint16(e.Block), uint64(e.Offset)
			sent.record(e, placed.Kind)
			switch placed.Kind {
			case dedup.RecordZero:
				m.pages.Zero++
				final.Zero(block, offset)
			case dedup.RecordRef:
				m.pages.Referenced++
				cost, local := m.s.contentCost(m.vm.target, placed.Ref)
				final.Ref(block, offset, placed.FP, placed.Ref, cost, local)
			case dedup.RecordLiteral:
				m.pages.Literal++
				literalBytes += placed.Size
				final.Literal(block, offset, placed.FP, uint32(placed.Size))
				m.counters.litStream.Add(dedup.PageSize)
				m.counters.litWire.Add(int64(placed.Size))
				if lc.literal(e.Data) {
					cpu, wire, _ := lc.chooser.Estimate(lc.method)
					m.log.Debug("literal pages: compression changed", "method", lc.method.String(), "page_cpu", cpu,
						"page_wire", int(wire), "link_share", int64(m.s.linkShareNow()))
				}
			}
			if len(batch) >= pagesFrameTarget {
				err = flush(false)
			}
		case stream.SwitchoverStart:
			// QEMU 10.0+ machine types: the VM stopped; the destination hears it where the source said it.
			if err = flush(false); err == nil {
				err = sc.Send(wire.FrameSwitchover, nil, true)
			}
		case stream.SectionEnd:
			if err = flush(false); err == nil {
				err = sc.Send(wire.FrameSectionEnd, nil, true)
			}
		case stream.Tail:
			m.counters.stream.Add(int64(len(e.Raw)))
			if err = flush(false); err == nil {
				err = sc.Send(wire.FrameTail, e.Raw, true)
			}
		default:
			return fmt.Errorf("source stream: unexpected event %T", ev)
		}
		if err != nil {
			return m.toReceiver(err)
		}
		if time.Since(lastProgress) > 500*time.Millisecond {
			wireBytes = sc.BytesOut()
			m.s.progress.set(m.vm.spec.Name, "migrating", fmt.Sprintf("%d pages, %s sent", m.pages.Total, fmtBytes(wireBytes)))
			lastProgress = time.Now()
		}
	}
}

// toReceiver labels a failed send as the receiver's side of the story.
func (m *vmMigration) toReceiver(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("receiver %s: connection lost while sending the stream (did the receiver stop?): %w", m.vm.target.addr, err)
}

// literalsSent remembers, for each address the stream last sent as a literal page, the keyed digest of the bytes it
// sent, so that a page QEMU sends again with the same bytes is left out: the destination has it. QEMU sends a page
// twice when the guest writes it after the dirty-bitmap sync that began a pass and before the pass reads it (the
// pass reads the new bytes, and the next sync finds the page dirty again). References and zero pages cost a few
// bytes and are not tracked; only literals, which cost a page each, are.
type literalsSent struct {
	digester *dedup.Digester
	at       map[uint64]dedup.Digest // by pageKey
}

func pageKey(p stream.Page) uint64 { return uint64(p.Block)<<48 | uint64(p.Offset)/dedup.PageSize }

// same reports whether p's bytes are exactly those the stream last sent literal at p's address.
func (l *literalsSent) same(p stream.Page) bool {
	if len(l.at) == 0 || p.Zero {
		return false
	}
	dg, ok := l.at[pageKey(p)]
	return ok && l.digester.Sum(p.Data) == dg
}

// record notes what the stream sends at p's address: a literal's digest, or that it no longer holds a literal there.
func (l *literalsSent) record(p stream.Page, kind dedup.RecordKind) {
	if l.digester == nil {
		return
	}
	if kind == dedup.RecordLiteral {
		l.at[pageKey(p)] = l.digester.Sum(p.Data)
	} else if len(l.at) > 0 {
		delete(l.at, pageKey(p))
	}
}
