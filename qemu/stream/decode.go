package stream

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
)

type decodeState uint8

const (
	stPrefix   decodeState = iota // nothing read yet
	stRAMStart                    // prefix returned; the ram START section is next
	stBetween                     // between RAM sections
	stSection                     // inside a PART or END section
	stTail                        // copying the tail
)

// Decoder reads a pre-copy migration stream of QEMU 7.2 through 11.1 and returns it as events: one Prefix, one
// RAMStart, then SectionBegin, Page..., SectionEnd for each RAM section (with one SwitchoverStart between two of them
// from QEMU 10.0 machine types), then Tail chunks until io.EOF. It is not safe for concurrent use.
//
// RAM_SAVE_FLAG_MULTIFD_FLUSH records (be64 0x200) are dropped, not returned: QEMU 8.1.0 to 8.1.2 send them without
// multifd on machine type 8.1 (in the START section before EOS, after each full pass over RAM, and in the END section
// before EOS), and without multifd a precopy loader does nothing with them (multifd_recv_sync_main returns at once),
// while QEMU 7.2 and 8.0 destinations reject them ("Unknown combination of migration flags: 0x200"). So the stream
// means the same to every destination without them. With multifd they mark channel syncs, but a multifd migration
// fails anyway: its extra connections start with the multifd magic, which the decoder refuses.
type Decoder struct {
	in           streamReader
	state        decodeState
	err          error // sticky: returned by every Next after the first failure (or io.EOF)
	ignoreShared bool
	ramID        uint32
	blocks       []RAMBlock
	index        map[string]int
	cur          int  // block of the last page record; like QEMU, it carries across sections
	switchover   bool // SWITCHOVER_START seen
	flushes      int  // MULTIFD_FLUSH records dropped
}

// NewDecoder returns a decoder reading from r. It reads ahead in chunks of up to 256 KiB but never waits for more
// bytes than the event it is decoding needs.
func NewDecoder(r io.Reader) *Decoder {
	return &Decoder{in: streamReader{src: r}, cur: -1}
}

// InputOffset is the number of input bytes consumed so far.
func (d *Decoder) InputOffset() int64 { return d.in.off }

// MultifdFlushes is the number of RAM_SAVE_FLAG_MULTIFD_FLUSH records dropped so far (see Decoder): non-zero for a
// QEMU 8.1.0-8.1.2 source on machine type 8.1.
func (d *Decoder) MultifdFlushes() int { return d.flushes }

// Next returns the next event. Byte slices in a Page or Tail alias the decoder's buffer and stay valid only until
// the next call. After the tail, Next returns io.EOF. Malformed input gives a *StreamError, a feature the codec
// refuses an *UnsupportedError; a failed read of the input is returned wrapped. Errors are sticky.
func (d *Decoder) Next() (StreamEvent, error) {
	if d.err != nil {
		return nil, d.err
	}
	var ev StreamEvent
	var err error
	switch d.state {
	case stPrefix:
		ev, err = d.readPrefix()
	case stRAMStart:
		ev, err = d.readRAMStart()
	case stBetween:
		ev, err = d.readBetween()
	case stSection:
		ev, err = d.readRecord()
	case stTail:
		ev, err = d.readTail()
	}
	if err != nil {
		d.err = err
		return nil, err
	}
	return ev, nil
}

func malformed(at int64, class error, format string, args ...any) error {
	return &StreamError{Offset: at, Err: class, Detail: fmt.Sprintf(format, args...)}
}

func unsupported(at int64, feature, format string, args ...any) error {
	return &UnsupportedError{Feature: feature, Offset: at, Detail: fmt.Sprintf(format, args...)}
}

// readErr turns a failed read into the error Next returns: truncation is malformed input, anything else is the
// input's own failure.
func (d *Decoder) readErr(err error, what string) error {
	if err == io.ErrUnexpectedEOF {
		return &StreamError{Offset: d.in.off, Err: io.ErrUnexpectedEOF, Detail: "stream ends inside " + what}
	}
	return fmt.Errorf("reading migration stream at byte %d (%s): %w", d.in.off, what, err)
}

func (d *Decoder) take(n int, what string) ([]byte, error) {
	b, err := d.in.take(n)
	if err != nil {
		return nil, d.readErr(err, what)
	}
	return b, nil
}

func (d *Decoder) peekByte(what string) (byte, error) {
	b, err := d.in.peek(1)
	if err != nil {
		return 0, d.readErr(err, what)
	}
	return b[0], nil
}

func (d *Decoder) u8(what string) (byte, error) {
	b, err := d.take(1, what)
	if err != nil {
		return 0, err
	}
	return b[0], nil
}

func (d *Decoder) be16(what string) (uint16, error) {
	b, err := d.take(2, what)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint16(b), nil
}

func (d *Decoder) be32(what string) (uint32, error) {
	b, err := d.take(4, what)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(b), nil
}

func (d *Decoder) be64(what string) (uint64, error) {
	b, err := d.take(8, what)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(b), nil
}

// counted reads a string of one length byte and that many bytes (qemu_get_counted_string). The slice aliases the
// buffer.
func (d *Decoder) counted(what string) ([]byte, error) {
	n, err := d.u8(what)
	if err != nil {
		return nil, err
	}
	return d.take(int(n), what)
}

// readStartHeader reads a START or FULL header after its type byte: section id, idstr, instance and version.
// (idstr is copied: the reads after it may move the buffer.)
func (d *Decoder) readStartHeader() (id uint32, idstr string, inst, ver uint32, err error) {
	if id, err = d.be32("section id"); err != nil {
		return
	}
	var raw []byte
	if raw, err = d.counted("section idstr"); err != nil {
		return
	}
	idstr = string(raw)
	if inst, err = d.be32("instance id"); err != nil {
		return
	}
	ver, err = d.be32("version id")
	return
}

func (d *Decoder) readRAMStart() (StreamEvent, error) {
	at := d.in.off
	if _, err := d.take(1, "section type"); err != nil {
		return nil, err
	}
	id, idstr, inst, ver, err := d.readStartHeader()
	if err != nil {
		return nil, err
	}
	if idstr != ramIDStr {
		return nil, unsupported(at, featureOfSection(idstr), "iterable section %q", idstr)
	}
	if ver != ramVersion {
		return nil, malformed(at, ErrBadSection, "ram section version %d, want %d", ver, ramVersion)
	}
	recAt := d.in.off
	w, err := d.be64("MEM_SIZE record")
	if err != nil {
		return nil, err
	}
	if w&ramFlagMask != ramFlagMemSize {
		return nil, malformed(recAt, ErrBadRAMList, "START begins with flags %#x, want MEM_SIZE", w&ramFlagMask)
	}
	left := w &^ ramFlagMask
	s := RAMStart{SectionID: id, InstanceID: inst, VersionID: ver, IgnoreShared: d.ignoreShared}
	index := map[string]int{}
	for left > 0 {
		bAt := d.in.off
		if len(s.Blocks) == maxRAMBlocks {
			return nil, malformed(bAt, ErrTooLong, "more than %d RAM blocks", maxRAMBlocks)
		}
		name, err := d.counted("block id")
		if err != nil {
			return nil, err
		}
		if len(name) == 0 {
			return nil, malformed(bAt, ErrBadRAMList, "empty block id")
		}
		if _, dup := index[string(name)]; dup {
			return nil, malformed(bAt, ErrBadRAMList, "block %q twice", name)
		}
		b := RAMBlock{ID: string(name)}
		if b.Length, err = d.be64("block length"); err != nil {
			return nil, err
		}
		if b.Length == 0 || b.Length%PageSize != 0 || b.Length > left {
			return nil, malformed(bAt, ErrBadRAMList, "block %q of %d bytes (empty, unaligned, or past %d left of MEM_SIZE)",
				b.ID, b.Length, left)
		}
		if d.ignoreShared {
			if b.Addr, err = d.be64("block address"); err != nil {
				return nil, err
			}
		}
		left -= b.Length
		index[b.ID] = len(s.Blocks)
		s.Blocks = append(s.Blocks, b)
	}
	eosAt := d.in.off
	eos, err := d.be64("EOS record")
	if err != nil {
		return nil, err
	}
	for eos == ramFlagMultifdFlush {
		d.flushes++
		eosAt = d.in.off
		if eos, err = d.be64("EOS record"); err != nil {
			return nil, err
		}
	}
	if eos != ramFlagEOS {
		if err := refusedRecord(eosAt, eos); err != nil {
			return nil, err
		}
		return nil, malformed(eosAt, ErrBadRAMList, "record %#x after the block list, want EOS", eos)
	}
	if err := d.footer(id); err != nil {
		return nil, err
	}
	d.ramID, d.blocks, d.index = id, s.Blocks, index
	d.state = stBetween
	return s, nil
}

func (d *Decoder) footer(id uint32) error {
	at := d.in.off
	b, err := d.take(5, "section footer")
	if err != nil {
		return err
	}
	if b[0] != secFooter {
		return malformed(at, ErrBadFooter, "byte %#02x where the footer of section %d belongs", b[0], id)
	}
	if got := binary.BigEndian.Uint32(b[1:]); got != id {
		return malformed(at, ErrBadFooter, "footer names section %d inside section %d", got, id)
	}
	return nil
}

func (d *Decoder) readBetween() (StreamEvent, error) {
	at := d.in.off
	t, err := d.peekByte("section type")
	if err != nil {
		return nil, err
	}
	switch t {
	case secPart, secEnd:
		b, err := d.take(5, "section header")
		if err != nil {
			return nil, err
		}
		id := binary.BigEndian.Uint32(b[1:])
		if id != d.ramID {
			return nil, malformed(at, ErrBadSection, "section %d is not the ram section (%d)", id, d.ramID)
		}
		d.state = stSection
		return SectionBegin{Kind: SectionKind(t), SectionID: id}, nil
	case secFull, secEOF:
		d.state = stTail
		return d.readTail()
	case secStart:
		d.in.take(1)
		_, idstr, _, _, err := d.readStartHeader()
		if err != nil {
			return nil, err
		}
		if idstr == ramIDStr {
			return nil, malformed(at, ErrBadSection, "second ram START section")
		}
		return nil, unsupported(at, featureOfSection(idstr), "iterable section %q", idstr)
	case secCommand:
		cmd, data, err := d.readCommandHeader()
		if err != nil {
			return nil, err
		}
		if f := commandFeature(cmd); f != "" {
			return nil, unsupported(at, f, "command %d", cmd)
		}
		if cmd != cmdSwitchoverStart {
			return nil, malformed(at, ErrBadCommand, "command %d between RAM sections", cmd)
		}
		if len(data) != 0 {
			return nil, malformed(at, ErrBadCommand, "SWITCHOVER_START with %d bytes of data, want 0", len(data))
		}
		if d.switchover {
			return nil, malformed(at, ErrBadCommand, "second SWITCHOVER_START")
		}
		d.switchover = true
		return SwitchoverStart{}, nil
	}
	return nil, malformed(at, ErrBadSection, "unknown section type %#02x", t)
}

// refusedRecord names the feature behind a record's flags when the codec refuses it.
func refusedRecord(at int64, w uint64) error {
	flags := w & ramFlagMask
	switch {
	case flags&ramFlagXBZRLE != 0:
		return unsupported(at, FeatureXBZRLE, "XBZRLE page")
	case flags&ramFlagCompress != 0:
		return unsupported(at, FeatureCompress, "RAM_SAVE_FLAG_COMPRESS_PAGE")
	case flags&ramFlagHook != 0:
		return unsupported(at, FeatureRDMA, "RAM_SAVE_FLAG_HOOK")
	}
	return nil
}

func (d *Decoder) readRecord() (StreamEvent, error) {
	at := d.in.off
	w, err := d.be64("RAM record")
	if err != nil {
		return nil, err
	}
	for w == ramFlagMultifdFlush { // dropped: see Decoder
		d.flushes++
		at = d.in.off
		if w, err = d.be64("RAM record"); err != nil {
			return nil, err
		}
	}
	if err := refusedRecord(at, w); err != nil {
		return nil, err
	}
	flags := w & ramFlagMask
	off := RAMOffset(w &^ ramFlagMask)
	switch flags &^ ramFlagContinue {
	case ramFlagEOS:
		if w != ramFlagEOS {
			return nil, malformed(at, ErrBadRecord, "EOS record %#x", w)
		}
		if err := d.footer(d.ramID); err != nil {
			return nil, err
		}
		d.state = stBetween
		return SectionEnd{}, nil
	case ramFlagZero, ramFlagPage:
	case ramFlagMemSize:
		return nil, malformed(at, ErrBadRecord, "MEM_SIZE outside the START section")
	case ramFlagMultifdFlush:
		return nil, malformed(at, ErrBadRecord, "MULTIFD_FLUSH record %#x with an offset or CONTINUE", w)
	default:
		return nil, malformed(at, ErrBadRecord, "unknown flags %#x", flags)
	}
	if flags&ramFlagContinue != 0 {
		if d.cur < 0 {
			return nil, malformed(at, ErrNoPreviousBlock, "")
		}
	} else {
		name, err := d.counted("block id")
		if err != nil {
			return nil, err
		}
		i, ok := d.index[string(name)]
		if !ok {
			return nil, malformed(at, ErrUnknownBlock, "%q", name)
		}
		d.cur = i
	}
	if b := d.blocks[d.cur]; uint64(off) >= b.Length {
		return nil, malformed(at, ErrBadOffset, "offset %#x in block %q of %#x bytes", uint64(off), b.ID, b.Length)
	}
	if flags&ramFlagZero != 0 {
		fill, err := d.u8("zero page fill byte")
		if err != nil {
			return nil, err
		}
		return Page{Block: d.cur, Offset: off, Zero: true, Fill: fill}, nil
	}
	data, err := d.take(PageSize, "page data")
	if err != nil {
		return nil, err
	}
	return Page{Block: d.cur, Offset: off, Data: data}, nil
}

func (d *Decoder) readTail() (StreamEvent, error) {
	b, err := d.in.takeAvailable()
	if err == io.EOF {
		return nil, io.EOF
	}
	if err != nil {
		return nil, fmt.Errorf("reading migration stream tail at byte %d: %w", d.in.off, err)
	}
	return Tail{Raw: b}, nil
}

// ParsePrefix validates raw as a complete stream prefix (everything before the ram START section, as in
// Prefix.Raw) and returns what it says.
func ParsePrefix(raw []byte) (Prefix, error) {
	d := NewDecoder(io.MultiReader(bytes.NewReader(raw), bytes.NewReader([]byte{secStart})))
	ev, err := d.Next()
	if err != nil {
		return Prefix{}, err
	}
	p := ev.(Prefix)
	if len(p.Raw) != len(raw) {
		return Prefix{}, malformed(int64(len(p.Raw)), ErrBadSection, "prefix has %d bytes after its end",
			len(raw)-len(p.Raw))
	}
	return p, nil
}
