package dedup

import (
	"errors"
	"fmt"

	"github.com/klauspost/compress/s2"
)

// Codec names how a literal page is compressed on the wire.
type Codec byte

// Codecs. The values are part of the record format (docs/dedup.md).
const (
	CodecNone Codec = 0 // the page's 4096 bytes as they are
	CodecS2   Codec = 1 // one s2 block (klauspost/compress/s2.Encode)
	CodecZstd Codec = 2 // one zstd frame, fastest level, no checksum
)

// MaxEncodedPage bounds the encoded size of one page under any codec, and so the length of
// a literal record's data. It is above the worst case of each encoder for 4096 bytes of
// incompressible input (s2: 4810, zstd: 4108).
const MaxEncodedPage = 5120

// ErrCorruptPage reports compressed page data that does not decode to exactly one page.
var ErrCorruptPage = errors.New("dedup: corrupt compressed page")

// ErrUnknownCodec reports a codec byte or name this version does not know.
var ErrUnknownCodec = errors.New("dedup: unknown codec")

// ParseCodec parses "none", "s2" or "zstd".
func ParseCodec(s string) (Codec, error) {
	switch s {
	case "none":
		return CodecNone, nil
	case "s2":
		return CodecS2, nil
	case "zstd":
		return CodecZstd, nil
	}
	return 0, fmt.Errorf("%w: %q (want none, s2 or zstd)", ErrUnknownCodec, s)
}

// String returns the codec's name as ParseCodec accepts it.
func (c Codec) String() string {
	switch c {
	case CodecNone:
		return "none"
	case CodecS2:
		return "s2"
	case CodecZstd:
		return "zstd"
	}
	return fmt.Sprintf("codec(%d)", byte(c))
}

// Valid reports whether c is a known codec.
func (c Codec) Valid() bool { return c <= CodecZstd }

// Append appends page (PageSize bytes) compressed with c to dst. The result may be larger
// than the page for incompressible data; Compress picks the smaller form.
func (c Codec) Append(dst, page []byte) []byte {
	if len(page) != PageSize {
		panic(fmt.Sprintf("dedup: Codec.Append of %d bytes, want %d", len(page), PageSize))
	}
	switch c {
	case CodecNone:
		return append(dst, page...)
	case CodecS2:
		n := len(dst)
		dst = growSlice(dst, s2.MaxEncodedLen(PageSize))
		enc := s2.Encode(dst[n:cap(dst)], page)
		return dst[:n+len(enc)]
	case CodecZstd:
		enc, _ := pageZstd.get()
		return enc.EncodeAll(page, dst)
	}
	panic(fmt.Sprintf("dedup: Append with %v", c))
}

// Compress appends page compressed with c to dst, or the page as it is when compression
// does not make it smaller, and returns the codec it used.
func (c Codec) Compress(dst, page []byte) ([]byte, Codec) {
	if c == CodecNone {
		return c.Append(dst, page), CodecNone
	}
	n := len(dst)
	out := c.Append(dst, page)
	if len(out)-n < PageSize {
		return out, c
	}
	return append(out[:n], page...), CodecNone
}

// Decode decodes src, compressed with c, into dst, which must be PageSize long. It fails
// with ErrCorruptPage unless src decodes to exactly PageSize bytes, and it never allocates
// or writes more than that: a small src that claims a large output is refused before
// decoding.
func (c Codec) Decode(dst, src []byte) error {
	if len(dst) != PageSize {
		return fmt.Errorf("dedup: Decode needs a %d-byte page, got %d", PageSize, len(dst))
	}
	switch c {
	case CodecNone:
		if len(src) != PageSize {
			return fmt.Errorf("%w: raw page of %d bytes", ErrCorruptPage, len(src))
		}
		copy(dst, src)
		return nil
	case CodecS2:
		if n, err := s2.DecodedLen(src); err != nil || n != PageSize {
			return fmt.Errorf("%w: s2 block of %d bytes (%v)", ErrCorruptPage, n, err)
		}
		out, err := s2.Decode(dst, src)
		if err != nil || len(out) != PageSize || &out[0] != &dst[0] {
			return fmt.Errorf("%w: s2: %v", ErrCorruptPage, err)
		}
		return nil
	case CodecZstd:
		_, dec := pageZstd.get()
		out, err := dec.DecodeAll(src, dst[:0:PageSize])
		if err != nil || len(out) != PageSize || &out[0] != &dst[0] {
			return fmt.Errorf("%w: zstd: %d bytes (%v)", ErrCorruptPage, len(out), err)
		}
		return nil
	}
	return fmt.Errorf("%w: %d", ErrUnknownCodec, byte(c))
}

// growSlice returns b with room for n more bytes.
func growSlice(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b
	}
	nb := make([]byte, len(b), len(b)+n+len(b)/2)
	copy(nb, b)
	return nb
}
