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
	sc := m.conn()
	if sc == nil {
		return errors.New("the connection to the receiver is lost")
	}
	held := m.s.heldFor(m.vm)
	fingerprint := m.s.fingerprint()
	final := report.NewFinalImage(m.s.targetIndex(m.vm.target))
	m.vm.final = final
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
			err = sc.SendJSON(wire.FrameRAMStart, wire.RAMStartToWire(e))
		case stream.SectionBegin:
			err = sc.Send(wire.FrameSection, wire.AppendSection(nil, byte(e.Kind), e.SectionID), false)
		case stream.Page:
			m.pages.Total++
			m.counters.stream.Add(dedup.PageSize)
			var placed dedup.Placed
			batch, placed = dedup.AppendPage(batch, dedup.Page{Block: uint16(e.Block), Offset: uint64(e.Offset), Zero: e.Zero,
				Fill: e.Fill, Data: e.Data}, fingerprint, held, m.s.codec)
			block, offset := uint16(e.Block), uint64(e.Offset)
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
