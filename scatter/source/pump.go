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

// pageCodec compresses literal pages.
type pageCodec = dedup.Codec

func parseCompress(s string) (pageCodec, error) {
	c, err := dedup.ParseCodec(s)
	if err != nil {
		return c, fmt.Errorf("--compress %q: use s2, zstd or none", s)
	}
	return c, nil
}

// pagesFrameTarget is the size at which a PAGES frame is sent; small enough that QEMU's view of the link stays
// honest (a deep buffer hides real downtime), large enough to amortize the frame's seal.
const pagesFrameTarget = 64 << 10

// pump decodes the source QEMU's stream and sends it to the receiver as frames. It runs on its own goroutine and
// is the only writer of stream frames; it returns nil at the source stream's clean end (STREAM_END sent).
func (m *vmMigration) pump(ctx context.Context) error {
	dec := stream.NewDecoder(m.src)
	sc := m.sc
	held := m.s.heldFor(m.vm)
	fingerprint := m.s.fingerprint()
	final := report.NewFinalImage(m.s.targetIndex(m.vm.target))
	m.vm.final = final
	var batch, zbuf []byte
	flush := func(force bool) error {
		if len(batch) > 0 {
			t, payload := wire.FramePages, batch
			if zbuf = dedup.CompressRecords(zbuf, batch); zbuf != nil {
				t, payload = wire.FramePagesZ, zbuf
			}
			if err := sc.Send(t, payload, force); err != nil {
				return err
			}
			batch = batch[:0]
		} else if force {
			return sc.Flush()
		}
		return nil
	}
	var sent int64
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
			err = sc.SendJSON(wire.FrameRAMStart, e)
		case stream.SectionBegin:
			err = sc.Send(wire.FrameSection, wire.AppendSection(nil, byte(e.Kind), e.SectionID), false)
		case stream.Page:
			m.pages.Total++
			m.counters.stream.Add(dedup.PageSize)
			rec := dedup.PageRecord{Block: uint16(e.Block), Offset: uint64(e.Offset)}
			switch {
			case e.Zero:
				m.pages.Zero++
				rec.Kind, rec.Fill = dedup.RecordZero, e.Fill
				final.Zero(rec.Block, rec.Offset)
			default:
				fp := fingerprint(e.Data)
				if id, ok := held.LookupFP(e.Data, fp); ok {
					m.pages.Referenced++
					rec.Kind, rec.Ref = dedup.RecordRef, id
					cost, local := m.s.contentCost(m.vm.target, id)
					final.Ref(rec.Block, rec.Offset, fp, id, cost, local)
				} else {
					m.pages.Literal++
					rec.Kind = dedup.RecordLiteral
					m.litBuf, rec.Codec = m.s.codec.Compress(m.litBuf[:0], e.Data)
					rec.Data = m.litBuf
					final.Literal(rec.Block, rec.Offset, fp, uint32(len(m.litBuf)))
					m.counters.litStream.Add(dedup.PageSize)
					m.counters.litWire.Add(int64(len(m.litBuf)))
				}
			}
			batch = dedup.AppendRecord(batch, rec)
			if len(batch) >= pagesFrameTarget {
				err = flush(false)
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
			sent = sc.BytesOut()
			m.s.progress.set(m.vm.spec.Name, "migrating", fmt.Sprintf("%d pages, %s sent", m.pages.Total, fmtBytes(sent)))
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
