package stream

import (
	"encoding/binary"
	"fmt"
	"io"
	"slices"
)

// encodeBufferSize bounds the encoder's output buffer. QEMU sizes its switch-over from the rate of its own socket
// writes, so a proxy must not hide a slow link behind a deep buffer.
const encodeBufferSize = 1 << 20

// maxPageRecord is the largest page record: header word, counted block id and the data.
const maxPageRecord = 8 + 1 + 255 + PageSize

type encodeState uint8

const (
	enPrefix   encodeState = iota // nothing written
	enRAMStart                    // prefix written; StartRAM is next
	enBetween                     // between RAM sections
	enSection                     // inside a section
	enTail                        // tail being written
)

// Encoder writes a pre-copy migration stream that a destination of the source's QEMU version (7.2 through 11.1)
// loads. Calls follow stream order: WritePrefix, StartRAM, then BeginSection, WritePage..., EndSection any number of
// times, with at most one WriteSwitchoverStart between two sections, then WriteTail.
// Pages may be regrouped into sections of any size and any order within the rules of pre-copy (a later copy of a
// page overrides an earlier one). Output is buffered up to 1 MiB and flushed at every section end and by WriteTail
// and Flush. It is not safe for concurrent use.
type Encoder struct {
	w            io.Writer
	buf          []byte
	state        encodeState
	ignoreShared bool
	ramID        uint32
	blocks       []RAMBlock
	last         int // block named by the last page of the current section, -1 at a section start
	switchover   bool
	tailStarted  bool
	written      int64
	err          error // sticky write error
}

// NewEncoder returns an encoder writing to w.
func NewEncoder(w io.Writer) *Encoder {
	return &Encoder{w: w, last: -1}
}

// OutputOffset is the number of bytes handed to the writer so far (not counting the buffer).
func (e *Encoder) OutputOffset() int64 { return e.written }

func (e *Encoder) order(call string, want ...encodeState) error {
	if e.err != nil {
		return e.err
	}
	if !slices.Contains(want, e.state) {
		return fmt.Errorf("%w: %s", ErrEncoderState, call)
	}
	return nil
}

// WritePrefix writes the stream prefix verbatim after validating it (see ParsePrefix).
func (e *Encoder) WritePrefix(raw []byte) error {
	if err := e.order("WritePrefix", enPrefix); err != nil {
		return err
	}
	p, err := ParsePrefix(raw)
	if err != nil {
		return fmt.Errorf("encoder: prefix: %w", err)
	}
	e.ignoreShared = slices.Contains(p.Capabilities, capIgnoreShared)
	e.buf = append(e.buf, raw...)
	e.state = enRAMStart
	return nil
}

// StartRAM writes the START section of idstr "ram" and flushes.
func (e *Encoder) StartRAM(s RAMStart) error {
	if err := e.order("StartRAM", enRAMStart); err != nil {
		return err
	}
	if s.IgnoreShared != e.ignoreShared {
		return fmt.Errorf("encoder: RAMStart.IgnoreShared is %v but the prefix says %v", s.IgnoreShared, e.ignoreShared)
	}
	if s.VersionID != ramVersion {
		return fmt.Errorf("encoder: ram section version %d, want %d", s.VersionID, ramVersion)
	}
	if len(s.Blocks) > maxRAMBlocks {
		return fmt.Errorf("encoder: %d RAM blocks (limit %d)", len(s.Blocks), maxRAMBlocks)
	}
	var total uint64
	seen := make(map[string]bool, len(s.Blocks))
	for _, b := range s.Blocks {
		switch {
		case len(b.ID) == 0 || len(b.ID) > 255:
			return fmt.Errorf("encoder: block id %q must have 1 to 255 bytes", b.ID)
		case seen[b.ID]:
			return fmt.Errorf("encoder: block %q twice", b.ID)
		case b.Length == 0 || b.Length%PageSize != 0 || total+b.Length < total:
			return fmt.Errorf("encoder: block %q of %d bytes: empty, unaligned or overflowing", b.ID, b.Length)
		case b.Addr != 0 && !s.IgnoreShared:
			return fmt.Errorf("encoder: block %q has an address but x-ignore-shared is off", b.ID)
		}
		seen[b.ID] = true
		total += b.Length
	}
	b := append(e.buf, secStart)
	b = binary.BigEndian.AppendUint32(b, s.SectionID)
	b = appendCounted(b, ramIDStr)
	b = binary.BigEndian.AppendUint32(b, s.InstanceID)
	b = binary.BigEndian.AppendUint32(b, s.VersionID)
	b = binary.BigEndian.AppendUint64(b, total|ramFlagMemSize)
	for _, blk := range s.Blocks {
		b = appendCounted(b, blk.ID)
		b = binary.BigEndian.AppendUint64(b, blk.Length)
		if s.IgnoreShared {
			b = binary.BigEndian.AppendUint64(b, blk.Addr)
		}
	}
	b = binary.BigEndian.AppendUint64(b, ramFlagEOS)
	e.buf = appendFooter(b, s.SectionID)
	e.ramID = s.SectionID
	e.blocks = slices.Clone(s.Blocks)
	e.state = enBetween
	return e.Flush()
}

func appendCounted(b []byte, s string) []byte {
	return append(append(b, byte(len(s))), s...)
}

func appendFooter(b []byte, id uint32) []byte {
	return binary.BigEndian.AppendUint32(append(b, secFooter), id)
}

// BeginSection opens a PART or END section of the ram state.
func (e *Encoder) BeginSection(kind SectionKind) error {
	if err := e.order("BeginSection", enBetween); err != nil {
		return err
	}
	if kind != SectionKindPart && kind != SectionKindEnd {
		return fmt.Errorf("encoder: section kind %v", kind)
	}
	e.buf = binary.BigEndian.AppendUint32(append(e.buf, byte(kind)), e.ramID)
	e.last = -1
	e.state = enSection
	return nil
}

// WritePage writes one page record. The first page of each section names its block; later pages of the same block
// use CONTINUE. A Zero page writes its Fill byte and ignores Data; any other page needs PageSize bytes of Data.
func (e *Encoder) WritePage(p Page) error {
	if err := e.order("WritePage", enSection); err != nil {
		return err
	}
	if p.Block < 0 || p.Block >= len(e.blocks) {
		return fmt.Errorf("encoder: page of block %d, the stream has %d blocks", p.Block, len(e.blocks))
	}
	blk := e.blocks[p.Block]
	if uint64(p.Offset)%PageSize != 0 || uint64(p.Offset) >= blk.Length {
		return fmt.Errorf("encoder: page offset %#x in block %q of %#x bytes", uint64(p.Offset), blk.ID, blk.Length)
	}
	if !p.Zero && len(p.Data) != PageSize {
		return fmt.Errorf("encoder: page with %d bytes of data, want %d", len(p.Data), PageSize)
	}
	if len(e.buf)+maxPageRecord > encodeBufferSize {
		if err := e.Flush(); err != nil {
			return err
		}
	}
	w := uint64(p.Offset) | ramFlagPage
	if p.Zero {
		w = uint64(p.Offset) | ramFlagZero
	}
	if p.Block == e.last {
		w |= ramFlagContinue
	}
	b := binary.BigEndian.AppendUint64(e.buf, w)
	if p.Block != e.last {
		b = appendCounted(b, blk.ID)
		e.last = p.Block
	}
	if p.Zero {
		b = append(b, p.Fill)
	} else {
		b = append(b, p.Data...)
	}
	e.buf = b
	return nil
}

// EndSection closes the section (EOS record and footer) and flushes.
func (e *Encoder) EndSection() error {
	if err := e.order("EndSection", enSection); err != nil {
		return err
	}
	e.buf = appendFooter(binary.BigEndian.AppendUint64(e.buf, ramFlagEOS), e.ramID)
	e.state = enBetween
	return e.Flush()
}

// WriteSwitchoverStart writes the SWITCHOVER_START command (QEMU 10.0+) between two RAM sections. Write it where the
// decoder found it: after every section that the source sent before it, before the END section (see SwitchoverStart).
// A stream holds it at most once.
func (e *Encoder) WriteSwitchoverStart() error {
	if err := e.order("WriteSwitchoverStart", enBetween); err != nil {
		return err
	}
	if e.switchover {
		return fmt.Errorf("%w: second WriteSwitchoverStart", ErrEncoderState)
	}
	e.switchover = true
	b := binary.BigEndian.AppendUint16(append(e.buf, secCommand), cmdSwitchoverStart)
	e.buf = binary.BigEndian.AppendUint16(b, 0)
	return nil
}

// WriteTail writes a chunk of the tail verbatim, after flushing what is buffered. The tail must start with a FULL
// section or EOF, as the decoder found it.
func (e *Encoder) WriteTail(raw []byte) error {
	if err := e.order("WriteTail", enBetween, enTail); err != nil {
		return err
	}
	if len(raw) == 0 {
		return nil
	}
	if !e.tailStarted && raw[0] != secFull && raw[0] != secEOF {
		return fmt.Errorf("encoder: tail starts with byte %#02x, want a FULL section or EOF", raw[0])
	}
	e.tailStarted = true
	e.state = enTail
	if err := e.Flush(); err != nil {
		return err
	}
	return e.write(raw)
}

// Flush writes out what is buffered.
func (e *Encoder) Flush() error {
	if e.err != nil {
		return e.err
	}
	if len(e.buf) == 0 {
		return nil
	}
	err := e.write(e.buf)
	e.buf = e.buf[:0]
	if cap(e.buf) > 2*encodeBufferSize {
		e.buf = nil // a large prefix grew it
	}
	return err
}

func (e *Encoder) write(b []byte) error {
	n, err := e.w.Write(b)
	e.written += int64(n)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		e.err = fmt.Errorf("writing migration stream: %w", err)
	}
	return e.err
}

// WriteEvent writes one decoded event, so that a Decoder's events can be copied through unchanged.
func (e *Encoder) WriteEvent(ev StreamEvent) error {
	switch ev := ev.(type) {
	case Prefix:
		return e.WritePrefix(ev.Raw)
	case RAMStart:
		return e.StartRAM(ev)
	case SectionBegin:
		if err := e.order("BeginSection", enBetween); err != nil {
			return err
		}
		if ev.SectionID != e.ramID {
			return fmt.Errorf("encoder: section %d is not the ram section (%d)", ev.SectionID, e.ramID)
		}
		return e.BeginSection(ev.Kind)
	case Page:
		return e.WritePage(ev)
	case SectionEnd:
		return e.EndSection()
	case SwitchoverStart:
		return e.WriteSwitchoverStart()
	case Tail:
		return e.WriteTail(ev.Raw)
	}
	return fmt.Errorf("encoder: unknown event %T", ev)
}
