package dedup

import (
	"fmt"

	"github.com/klauspost/compress/s2"
)

// Pages compressed one by one lose what neighbouring pages share (a kernel's text, a file in the page cache): zstd
// on 15 consecutive distinct pages of real guests sends 6% fewer bytes than on each page alone, and s2 on each page
// alone sends 20% more, at about the same speed. The prime, whose contents all go to the same targets, compresses
// them in bundles of up to MaxBundlePages; a bundle is one multicast object and is decoded whole.

// MaxBundlePages bounds the pages of one bundle: 15 pages and their record heads fit one multicast object.
const MaxBundlePages = 15

// MaxEncodedBundle bounds the encoded size of one bundle's data under any codec (incompressible data is sent as it
// is, see CompressPages).
const MaxEncodedBundle = MaxBundlePages * PageSize

// CompressPages appends pages (1 to MaxBundlePages whole pages, back to back) compressed together with c to dst, or
// the pages as they are when compression does not make them smaller, and returns the codec it used.
func CompressPages(dst, pages []byte, c Codec) ([]byte, Codec) {
	return CompressPagesEffort(dst, pages, c, EffortFast)
}

// CompressPagesEffort is CompressPages with zstd at the given effort; the other codecs have one. The bytes decode
// alike whatever the effort.
func CompressPagesEffort(dst, pages []byte, c Codec, e Effort) ([]byte, Codec) {
	n := len(pages) / PageSize
	if n < 1 || n > MaxBundlePages || len(pages)%PageSize != 0 {
		panic(fmt.Sprintf("dedup: CompressPages of %d bytes", len(pages)))
	}
	start := len(dst)
	switch c {
	case CodecS2:
		dst = growSlice(dst, s2.MaxEncodedLen(len(pages)))
		enc := s2.Encode(dst[start:cap(dst)], pages)
		dst = dst[:start+len(enc)]
	case CodecZstd:
		enc, _ := bundleZstd.get()
		if e == EffortMore {
			enc, _ = bundleZstdMore.get()
		}
		dst = enc.EncodeAll(pages, dst)
	default:
		return append(dst, pages...), CodecNone
	}
	if len(dst)-start < len(pages) {
		return dst, c
	}
	return append(dst[:start], pages...), CodecNone
}

// DecodePages decodes src, n pages compressed together with c, into dst, which must be n × PageSize long. It fails
// with ErrCorruptPage unless src decodes to exactly that many bytes, and never writes more.
func DecodePages(dst, src []byte, c Codec) error {
	n := len(dst) / PageSize
	if n < 1 || n > MaxBundlePages || len(dst)%PageSize != 0 {
		return fmt.Errorf("%w: a bundle of %d bytes", ErrCorruptPage, len(dst))
	}
	switch c {
	case CodecNone:
		if len(src) != len(dst) {
			return fmt.Errorf("%w: raw bundle of %d bytes, want %d", ErrCorruptPage, len(src), len(dst))
		}
		copy(dst, src)
		return nil
	case CodecS2:
		if m, err := s2.DecodedLen(src); err != nil || m != len(dst) {
			return fmt.Errorf("%w: s2 bundle of %d bytes, want %d (%v)", ErrCorruptPage, m, len(dst), err)
		}
		out, err := s2.Decode(dst, src)
		if err != nil || len(out) != len(dst) || &out[0] != &dst[0] {
			return fmt.Errorf("%w: s2 bundle: %v", ErrCorruptPage, err)
		}
		return nil
	case CodecZstd:
		_, dec := bundleZstd.get()
		out, err := dec.DecodeAll(src, dst[:0:len(dst)])
		if err != nil || len(out) != len(dst) || &out[0] != &dst[0] {
			return fmt.Errorf("%w: zstd bundle: %d bytes, want %d (%v)", ErrCorruptPage, len(out), len(dst), err)
		}
		return nil
	}
	return fmt.Errorf("%w: %d", ErrUnknownCodec, byte(c))
}
