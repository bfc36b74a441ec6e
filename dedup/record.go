package dedup

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// RecordKind says what a page record carries.
type RecordKind byte

// Record kinds. The values are part of the record format (docs/dedup.md).
const (
	RecordZero    RecordKind = 1 // a page of one repeated fill byte (QEMU's zero page)
	RecordLiteral RecordKind = 2 // the page's bytes, compressed with Codec
	RecordRef     RecordKind = 3 // the content the target holds under Ref
)

func (k RecordKind) String() string {
	switch k {
	case RecordZero:
		return "zero"
	case RecordLiteral:
		return "literal"
	case RecordRef:
		return "ref"
	}
	return fmt.Sprintf("kind(%d)", byte(k))
}

// PageRecord is one page of one VM on the data channel. A batch is a concatenation of
// records of one VM; the frame that carries it names the VM.
type PageRecord struct {
	Kind   RecordKind
	Block  uint16 // index of the RAM block in the VM's block list, as the session agreed
	Offset uint64 // byte offset of the page in its block; a multiple of PageSize
	Fill   byte   // RecordZero: the fill byte
	Codec  Codec  // RecordLiteral: how Data is compressed
	Data   []byte // RecordLiteral: the compressed page, 1 to MaxEncodedPage bytes
	Ref    ContentID
}

// Sizes of the record encodings.
const (
	recordHeaderLen  = 11                      // kind, block, offset
	zeroRecordLen    = recordHeaderLen + 1     // + fill
	refRecordLen     = recordHeaderLen + 4     // + content id
	literalHeaderLen = recordHeaderLen + 1 + 2 // + codec, data length
	// MaxRecordLen bounds the encoding of one record.
	MaxRecordLen = literalHeaderLen + MaxEncodedPage
)

// Errors of ParseRecord.
var (
	// ErrShortRecord reports a buffer that ends inside a record.
	ErrShortRecord = errors.New("dedup: truncated page record")
	// ErrBadRecord reports a record that breaks the format.
	ErrBadRecord = errors.New("dedup: bad page record")
)

// Validate reports whether r can be encoded: a known kind, an aligned offset, and for a
// literal a known codec with 1 to MaxEncodedPage bytes of data (exactly PageSize for
// CodecNone). Fields that the kind does not use must be zero.
func (r *PageRecord) Validate() error {
	if r.Offset%PageSize != 0 {
		return fmt.Errorf("%w: offset %#x not a multiple of %d", ErrBadRecord, r.Offset, PageSize)
	}
	switch r.Kind {
	case RecordZero:
		if r.Codec != 0 || r.Data != nil || r.Ref != 0 {
			return fmt.Errorf("%w: zero record with literal or ref fields", ErrBadRecord)
		}
	case RecordRef:
		if r.Codec != 0 || r.Data != nil || r.Fill != 0 {
			return fmt.Errorf("%w: ref record with zero or literal fields", ErrBadRecord)
		}
	case RecordLiteral:
		if r.Fill != 0 || r.Ref != 0 {
			return fmt.Errorf("%w: literal record with zero or ref fields", ErrBadRecord)
		}
		return checkLiteral(r.Codec, len(r.Data))
	default:
		return fmt.Errorf("%w: kind %d", ErrBadRecord, byte(r.Kind))
	}
	return nil
}

func checkLiteral(c Codec, n int) error {
	switch {
	case !c.Valid():
		return fmt.Errorf("%w: codec %d", ErrBadRecord, byte(c))
	case n < 1 || n > MaxEncodedPage:
		return fmt.Errorf("%w: literal of %d bytes (1 to %d)", ErrBadRecord, n, MaxEncodedPage)
	case c == CodecNone && n != PageSize:
		return fmt.Errorf("%w: uncompressed literal of %d bytes", ErrBadRecord, n)
	}
	return nil
}

// AppendRecord appends the encoding of r to dst. It panics if r.Validate fails: records
// are built by the sender, and a bad one is a programming error.
func AppendRecord(dst []byte, r PageRecord) []byte {
	if err := r.Validate(); err != nil {
		panic(err)
	}
	dst = append(dst, byte(r.Kind))
	dst = binary.BigEndian.AppendUint16(dst, r.Block)
	dst = binary.BigEndian.AppendUint64(dst, r.Offset)
	switch r.Kind {
	case RecordZero:
		dst = append(dst, r.Fill)
	case RecordRef:
		dst = binary.BigEndian.AppendUint32(dst, uint32(r.Ref))
	case RecordLiteral:
		dst = append(dst, byte(r.Codec))
		dst = binary.BigEndian.AppendUint16(dst, uint16(len(r.Data)))
		dst = append(dst, r.Data...)
	}
	return dst
}

// ParseRecord parses the record at the start of b and returns it with the number of bytes
// it used. A literal's Data aliases b. The data is not decompressed here: Codec.Decode
// does that, with its own bounds.
func ParseRecord(b []byte) (PageRecord, int, error) {
	if len(b) < recordHeaderLen {
		return PageRecord{}, 0, ErrShortRecord
	}
	r := PageRecord{
		Kind:   RecordKind(b[0]),
		Block:  binary.BigEndian.Uint16(b[1:]),
		Offset: binary.BigEndian.Uint64(b[3:]),
	}
	if r.Offset%PageSize != 0 {
		return PageRecord{}, 0, fmt.Errorf("%w: offset %#x not a multiple of %d", ErrBadRecord, r.Offset, PageSize)
	}
	switch r.Kind {
	case RecordZero:
		if len(b) < zeroRecordLen {
			return PageRecord{}, 0, ErrShortRecord
		}
		r.Fill = b[recordHeaderLen]
		return r, zeroRecordLen, nil
	case RecordRef:
		if len(b) < refRecordLen {
			return PageRecord{}, 0, ErrShortRecord
		}
		r.Ref = ContentID(binary.BigEndian.Uint32(b[recordHeaderLen:]))
		return r, refRecordLen, nil
	case RecordLiteral:
		if len(b) < literalHeaderLen {
			return PageRecord{}, 0, ErrShortRecord
		}
		r.Codec = Codec(b[recordHeaderLen])
		n := int(binary.BigEndian.Uint16(b[recordHeaderLen+1:]))
		if err := checkLiteral(r.Codec, n); err != nil {
			return PageRecord{}, 0, err
		}
		if len(b) < literalHeaderLen+n {
			return PageRecord{}, 0, ErrShortRecord
		}
		r.Data = b[literalHeaderLen : literalHeaderLen+n : literalHeaderLen+n]
		return r, literalHeaderLen + n, nil
	}
	return PageRecord{}, 0, fmt.Errorf("%w: kind %d", ErrBadRecord, b[0])
}

// ParseRecords calls fn for each record of a batch, in order, and stops at the first
// error, from the format or from fn. A batch that ends inside a record is ErrShortRecord.
func ParseRecords(b []byte, fn func(PageRecord) error) error {
	for len(b) > 0 {
		r, n, err := ParseRecord(b)
		if err != nil {
			return err
		}
		if err := fn(r); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// Holder answers whether a target holds a page's exact content: a HeldIndex, or a view of one (the contents one VM
// may reference). fp is the page's fingerprint, which the caller has taken once.
type Holder interface {
	LookupFP(page []byte, fp Fingerprint) (ContentID, bool)
}

// Page is one RAM page of a VM's migration stream as the sender meets it.
type Page struct {
	Block  uint16
	Offset uint64
	Zero   bool   // the source sent it as a zero (fill) page: Data is not read
	Fill   byte   // a zero page's fill byte
	Data   []byte // PageSize bytes, unless Zero
}

// Placed says how AppendPage sent a page, for the caller's counters and bookkeeping.
type Placed struct {
	Kind RecordKind
	FP   Fingerprint // the page's fingerprint (not taken for a zero page)
	Ref  ContentID   // RecordRef: the content referenced
	Size int         // RecordLiteral: bytes of the page in the record, compressed or raw
}

// AppendPage appends the record for one page of a VM in migration to dst: the sender's whole decision in one place,
// and the one path every page of every stream takes. It applies the rule that makes references exact:
//
//   - a page the source sent as a zero page becomes a RecordZero with its fill byte;
//   - a page whose exact bytes the target holds (held.LookupFP: fingerprint, then keyed digest) becomes a
//     RecordRef;
//   - any other page becomes a RecordLiteral compressed with m, or stored raw when compression does not make it
//     smaller.
//
// The compressed bytes are written straight into dst: a literal page is compressed once and copied nowhere else on
// its way into the frame. held may be nil (no references); fp nil means XXHash. It panics if the page is not
// PageSize long or its offset not a multiple of PageSize: pages come from the stream decoder, which checks both.
func AppendPage(dst []byte, p Page, fp FingerprintFunc, held Holder, m Method) ([]byte, Placed) {
	if p.Offset%PageSize != 0 || !m.Valid() || (!p.Zero && len(p.Data) != PageSize) {
		panic(fmt.Sprintf("dedup: AppendPage of %d bytes at %#x with %v", len(p.Data), p.Offset, m))
	}
	if p.Zero {
		return AppendRecord(dst, PageRecord{Kind: RecordZero, Block: p.Block, Offset: p.Offset, Fill: p.Fill}), Placed{Kind: RecordZero}
	}
	if fp == nil {
		fp = XXHash
	}
	f := fp(p.Data)
	if held != nil {
		if id, ok := held.LookupFP(p.Data, f); ok {
			return AppendRecord(dst, PageRecord{Kind: RecordRef, Block: p.Block, Offset: p.Offset, Ref: id}), Placed{Kind: RecordRef, FP: f, Ref: id}
		}
	}
	start := len(dst)
	dst = append(dst, byte(RecordLiteral))
	dst = binary.BigEndian.AppendUint16(dst, p.Block)
	dst = binary.BigEndian.AppendUint64(dst, p.Offset)
	dst = append(dst, 0, 0, 0) // codec and length, set below
	dst, used := m.Compress(dst, p.Data)
	n := len(dst) - start - literalHeaderLen
	dst[start+recordHeaderLen] = byte(used)
	binary.BigEndian.PutUint16(dst[start+recordHeaderLen+1:], uint16(n))
	return dst, Placed{Kind: RecordLiteral, FP: f, Size: n}
}
