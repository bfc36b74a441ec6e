package datapath

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/qemu/stream"
	"github.com/vmscatter/vmscatter/scatter/secure"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// Frame is one plaintext frame of a VM's stream connection.
type Frame struct {
	Type    wire.FrameType
	Payload []byte
}

// pagesFrameTarget is the pump's PAGES frame size (scatter/source/pump.go).
const pagesFrameTarget = 64 << 10

// SenderFrames returns the frames the sender's pump sends for a QEMU stream whose target holds held, literals
// compressed with codec: the same page records (dedup.AppendPage), cut into frames by the pump's rules (a PAGES frame
// at 64 KiB, at a section's end and before the tail; compressed as a whole, PAGES_Z, unless literals make up half
// of it). scatter/source's TestPumpSendsSenderFrames checks that the pump sends exactly these.
func SenderFrames(qemu []byte, held dedup.Holder, codec dedup.Codec) ([]Frame, error) {
	dec := stream.NewDecoder(bytes.NewReader(qemu))
	var frames []Frame
	var batch []byte
	literalBytes := 0
	send := func(t wire.FrameType, payload []byte) { frames = append(frames, Frame{t, bytes.Clone(payload)}) }
	flush := func() {
		if len(batch) == 0 {
			return
		}
		t, payload := wire.FramePages, batch
		if literalBytes < len(batch)/2 {
			if z := dedup.CompressRecords(nil, batch); z != nil {
				t, payload = wire.FramePagesZ, z
			}
		}
		send(t, payload)
		batch, literalBytes = batch[:0], 0
	}
	for {
		ev, err := dec.Next()
		if errors.Is(err, io.EOF) {
			flush()
			send(wire.FrameStreamEnd, nil)
			return frames, nil
		}
		if err != nil {
			return nil, err
		}
		switch e := ev.(type) {
		case stream.Prefix:
			send(wire.FramePrefix, e.Raw)
		case stream.RAMStart:
			b, err := wire.Marshal(wire.RAMStartToWire(e))
			if err != nil {
				return nil, err
			}
			send(wire.FrameRAMStart, b)
		case stream.SectionBegin:
			send(wire.FrameSection, wire.AppendSection(nil, byte(e.Kind), e.SectionID))
		case stream.Page:
			var placed dedup.Placed
			batch, placed = dedup.AppendPage(batch, dedup.Page{Block: uint16(e.Block), Offset: uint64(e.Offset), Zero: e.Zero,
				Fill: e.Fill, Data: e.Data}, nil, held, dedup.MethodOf(codec))
			if placed.Kind == dedup.RecordLiteral {
				literalBytes += placed.Size
			}
			if len(batch) >= pagesFrameTarget {
				flush()
			}
		case stream.SectionEnd:
			flush()
			send(wire.FrameSectionEnd, nil)
		case stream.Tail:
			flush()
			send(wire.FrameTail, e.Raw)
		default:
			return nil, fmt.Errorf("datapath: unexpected stream event %T", ev)
		}
	}
}

// Seal sends frames on c as the pump would (flushed at the end), so that what c's writer holds afterwards is what
// the receiver reads off the wire.
func Seal(c *secure.Conn, frames []Frame) error {
	for _, f := range frames {
		if err := c.Send(f.Type, f.Payload, false); err != nil {
			return err
		}
	}
	return c.Flush()
}
