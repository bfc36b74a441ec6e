package scatter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/qemu/stream"
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
	final := newFinalImage(m.s.targetIndex(m.vm.target))
	m.vm.final = final
	var batch, zbuf []byte
	flush := func(force bool) error {
		if len(batch) > 0 {
			t, payload := framePages, batch
			if zbuf = dedup.CompressRecords(zbuf, batch); zbuf != nil {
				t, payload = framePagesZ, zbuf
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
			return m.toReceiver(sc.Send(frameStreamEnd, nil, true))
		}
		if err != nil {
			return fmt.Errorf("source stream: %w", err)
		}
		switch e := ev.(type) {
		case stream.Prefix:
			err = sc.Send(framePrefix, e.Raw, true)
		case stream.RAMStart:
			err = sendJSON(sc, frameRAMStart, e)
		case stream.SectionBegin:
			err = sc.Send(frameSection, appendSection(nil, byte(e.Kind), e.SectionID), false)
		case stream.Page:
			m.pages.Total++
			m.counters.stream.Add(dedup.PageSize)
			rec := dedup.PageRecord{Block: uint16(e.Block), Offset: uint64(e.Offset)}
			switch {
			case e.Zero:
				m.pages.Zero++
				rec.Kind, rec.Fill = dedup.RecordZero, e.Fill
				final.zero(rec.Block, rec.Offset)
			default:
				fp := fingerprint(e.Data)
				if id, ok := held.LookupFP(e.Data, fp); ok {
					m.pages.Referenced++
					rec.Kind, rec.Ref = dedup.RecordRef, id
					cost, local := m.s.contentCost(m.vm.target, id)
					final.ref(rec.Block, rec.Offset, fp, id, cost, local)
				} else {
					m.pages.Literal++
					rec.Kind = dedup.RecordLiteral
					m.litBuf, rec.Codec = m.s.codec.Compress(m.litBuf[:0], e.Data)
					rec.Data = m.litBuf
					final.literal(rec.Block, rec.Offset, fp, uint32(len(m.litBuf)))
					m.counters.litStream.Add(dedup.PageSize)
					m.counters.litWire.Add(int64(len(m.litBuf)))
				}
			}
			batch = dedup.AppendRecord(batch, rec)
			if len(batch) >= pagesFrameTarget {
				err = flush(false)
			}
			if f := m.s.cfg.faults; f.truncateAfterPages > 0 && m.pages.Total >= int64(f.truncateAfterPages) {
				if err := flush(false); err != nil {
					return err
				}
				return sc.Send(frameStreamEnd, nil, true)
			} else if f.stallAfterPages > 0 && m.pages.Total >= int64(f.stallAfterPages) {
				_ = flush(true)
				<-ctx.Done()
				return ctx.Err()
			}
		case stream.SectionEnd:
			if err = flush(false); err == nil {
				err = sc.Send(frameSectionEnd, nil, true)
			}
		case stream.Tail:
			m.counters.stream.Add(int64(len(e.Raw)))
			if err = flush(false); err == nil {
				err = sc.Send(frameTail, e.Raw, true)
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

// errInjectedDeath ends a VM connection without a word, as a receiver that died would.
var errInjectedDeath = errors.New("injected receiver death")

// rebuilder turns a VM connection's frames back into a QEMU stream for the destination.
type rebuilder struct {
	enc      *stream.Encoder
	store    *dedup.ContentStore
	refWait  time.Duration
	blocks   []stream.RAMBlock
	page     []byte
	pages    int
	refs     int
	dieAfter int
	zbuf     []byte // decoded PAGES_Z payloads
}

func newRebuilder(w net.Conn, store *dedup.ContentStore, refWait time.Duration) *rebuilder {
	return &rebuilder{enc: stream.NewEncoder(w), store: store, refWait: refWait, page: make([]byte, dedup.PageSize)}
}

// run consumes frames until STREAM_END (nil) or an error.
func (rb *rebuilder) run(ctx context.Context, sc *secureConn) error {
	for {
		t, b, err := sc.Recv()
		if err != nil {
			return err
		}
		switch t {
		case framePrefix:
			err = rb.enc.WritePrefix(b)
		case frameRAMStart:
			var rs stream.RAMStart
			if err = decodeJSON(t, b, &rs); err != nil {
				return err
			}
			rb.blocks = rs.Blocks
			err = rb.enc.StartRAM(rs)
		case frameSection:
			kind, _, perr := parseSection(b)
			if perr != nil {
				return perr
			}
			err = rb.enc.BeginSection(stream.SectionKind(kind))
		case framePages:
			err = rb.pagesFrame(ctx, b)
		case framePagesZ:
			if rb.zbuf, err = dedup.DecodeRecords(rb.zbuf, b); err == nil {
				err = rb.pagesFrame(ctx, rb.zbuf)
			}
		case frameSectionEnd:
			if err = rb.enc.EndSection(); err == nil {
				err = rb.enc.Flush()
			}
		case frameTail:
			if err = rb.enc.WriteTail(b); err == nil {
				err = rb.enc.Flush()
			}
		case frameStreamEnd:
			return rb.enc.Flush()
		case frameStreamCancel, frameAbort:
			return abortReason(t, b)
		default:
			return fmt.Errorf("%w: %s in a stream", ErrFrame, t)
		}
		if err != nil {
			return err
		}
	}
}

func (rb *rebuilder) pagesFrame(ctx context.Context, b []byte) error {
	for len(b) > 0 {
		rec, n, err := dedup.ParseRecord(b)
		if err != nil {
			return err
		}
		b = b[n:]
		if int(rec.Block) >= len(rb.blocks) {
			return fmt.Errorf("%w: page record names block %d of %d", ErrFrame, rec.Block, len(rb.blocks))
		}
		p := stream.Page{Block: int(rec.Block), Offset: stream.RAMOffset(rec.Offset)}
		switch rec.Kind {
		case dedup.RecordZero:
			p.Zero, p.Fill = true, rec.Fill
		case dedup.RecordLiteral:
			if err := rec.Codec.Decode(rb.page, rec.Data); err != nil {
				return err
			}
			p.Data = rb.page
		case dedup.RecordRef:
			data, err := rb.store.Get(ctx, rec.Ref, rb.refWait)
			if err != nil {
				return err
			}
			p.Data = data
			rb.refs++
		default:
			return fmt.Errorf("%w: page record kind %d", ErrFrame, rec.Kind)
		}
		rb.pages++
		if rb.dieAfter > 0 && rb.pages >= rb.dieAfter {
			return errInjectedDeath
		}
		if err := rb.enc.WritePage(p); err != nil {
			return err
		}
	}
	return nil
}
