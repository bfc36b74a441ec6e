package dest

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/qemu/stream"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// rebuilder turns a VM connection's stream frames back into a QEMU stream for the destination: references resolved
// from the session's content store, literals decompressed, QEMU's records re-encoded byte for byte. It is used by
// the connection's reader goroutine alone, between READY and STREAM_END.
type rebuilder struct {
	w       net.Conn // the destination's incoming socket
	enc     *stream.Encoder
	store   *dedup.ContentStore
	refWait time.Duration
	blocks  []stream.RAMBlock
	page    []byte
	ref     []byte // a referenced content, read from the store
	pages   int
	refs    int
	zbuf    []byte // decoded PAGES_Z payloads
	started func() // called at the stream's first frame, then dropped; nil for none
}

func newRebuilder(w net.Conn, store *dedup.ContentStore, refWait time.Duration) *rebuilder {
	return &rebuilder{w: w, enc: stream.NewEncoder(w), store: store, refWait: refWait, page: make([]byte, dedup.PageSize),
		ref: make([]byte, dedup.PageSize)}
}

// isStreamFrame reports whether t is one of the stream's frames, which the rebuilder consumes (STREAM_END is also
// the machine's).
func isStreamFrame(t wire.FrameType) bool {
	switch t {
	case wire.FramePrefix, wire.FrameRAMStart, wire.FrameSection, wire.FramePages, wire.FramePagesZ,
		wire.FrameSwitchover, wire.FrameSectionEnd, wire.FrameTail, wire.FrameStreamEnd:
		return true
	}
	return false
}

// frame re-encodes one stream frame into the destination's stream. At STREAM_END it flushes what it holds and
// closes the destination's input, whatever the destination still expects.
func (rb *rebuilder) frame(ctx context.Context, t wire.FrameType, b []byte) (err error) {
	if rb.started != nil {
		rb.started()
		rb.started = nil
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
		err = rb.enc.Flush()
		if uc, ok := rb.w.(*net.UnixConn); ok {
			_ = uc.CloseWrite()
		}
	default:
		return fmt.Errorf("%w: %s in a stream", wire.ErrFrame, t)
	}
	return err
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
			if err := rb.store.GetInto(ctx, rec.Ref, rb.refWait, rb.ref); err != nil {
				return err
			}
			p.Data = rb.ref
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
