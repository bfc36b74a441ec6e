package dest

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/qemu/stream"
	"github.com/vmscatter/vmscatter/scatter/secure"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// rebuilder turns a VM connection's frames back into a QEMU stream for the destination.
type rebuilder struct {
	enc     *stream.Encoder
	store   *dedup.ContentStore
	refWait time.Duration
	blocks  []stream.RAMBlock
	page    []byte
	pages   int
	refs    int
	zbuf    []byte // decoded PAGES_Z payloads
}

func newRebuilder(w net.Conn, store *dedup.ContentStore, refWait time.Duration) *rebuilder {
	return &rebuilder{enc: stream.NewEncoder(w), store: store, refWait: refWait, page: make([]byte, dedup.PageSize)}
}

// run consumes frames until STREAM_END (nil) or an error.
func (rb *rebuilder) run(ctx context.Context, sc *secure.Conn) error {
	for {
		t, b, err := sc.Recv()
		if err != nil {
			return err
		}
		switch t {
		case wire.FramePrefix:
			err = rb.enc.WritePrefix(b)
		case wire.FrameRAMStart:
			var m wire.RAMStartMsg
			if err = wire.Unmarshal(t, b, &m); err != nil {
				return err
			}
			rs := m.FromWire()
			rb.blocks = rs.Blocks
			err = rb.enc.StartRAM(rs)
		case wire.FrameSection:
			kind, _, perr := wire.ParseSection(b)
			if perr != nil {
				return perr
			}
			err = rb.enc.BeginSection(stream.SectionKind(kind))
		case wire.FramePages:
			err = rb.pagesFrame(ctx, b)
		case wire.FramePagesZ:
			if rb.zbuf, err = dedup.DecodeRecords(rb.zbuf, b); err == nil {
				err = rb.pagesFrame(ctx, rb.zbuf)
			}
		case wire.FrameSwitchover:
			err = rb.enc.WriteSwitchoverStart()
		case wire.FrameSectionEnd:
			if err = rb.enc.EndSection(); err == nil {
				err = rb.enc.Flush()
			}
		case wire.FrameTail:
			if err = rb.enc.WriteTail(b); err == nil {
				err = rb.enc.Flush()
			}
		case wire.FrameStreamEnd:
			return rb.enc.Flush()
		case wire.FrameStreamCancel, wire.FrameAbort:
			return abortReason(t, b)
		default:
			return fmt.Errorf("%w: %s in a stream", wire.ErrFrame, t)
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
			return fmt.Errorf("%w: page record names block %d of %d", wire.ErrFrame, rec.Block, len(rb.blocks))
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
			return fmt.Errorf("%w: page record kind %d", wire.ErrFrame, rec.Kind)
		}
		rb.pages++
		if err := rb.enc.WritePage(p); err != nil {
			return err
		}
	}
	return nil
}
