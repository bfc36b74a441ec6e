package dedup

import "fmt"

// Method is how the sender compresses a literal page. A record names its codec (docs/dedup.md), which a receiver of
// any version decodes; a method is the sender's choice of encoder for it. Today each codec has one encoder: zstd's
// default level, tried as a fourth method, sent 1–3% fewer bytes than its fastest for 1.6–2× its CPU
// (docs/benchmarks.md, section 7), and was left out.
type Method byte

// Methods, cheapest first. On the fixture's pages, one at a time (section 5 of docs/benchmarks.md and
// TestMethodsCompress): s2 runs about three times as fast as zstd's fastest level and sends 1.1–1.3× its bytes.
const (
	MethodNone Method = iota // CodecNone: the page as it is
	MethodS2                 // CodecS2
	MethodZstd               // CodecZstd, fastest level
	numMethods
)

// Methods lists every method, cheapest first.
func Methods() []Method { return []Method{MethodNone, MethodS2, MethodZstd} }

// MethodOf is the method that compresses with c as --compress names it (zstd at its fastest level).
func MethodOf(c Codec) Method {
	switch c {
	case CodecS2:
		return MethodS2
	case CodecZstd:
		return MethodZstd
	}
	return MethodNone
}

// Codec is the codec m's records carry.
func (m Method) Codec() Codec {
	switch m {
	case MethodS2:
		return CodecS2
	case MethodZstd:
		return CodecZstd
	}
	return CodecNone
}

// Valid reports whether m is a known method.
func (m Method) Valid() bool { return m < numMethods }

func (m Method) String() string {
	switch m {
	case MethodNone:
		return "none"
	case MethodS2:
		return "s2"
	case MethodZstd:
		return "zstd"
	}
	return fmt.Sprintf("method(%d)", byte(m))
}

// Compress appends page compressed with m to dst, or the page as it is when that does not make it smaller, and
// returns the codec it used (what the record must carry).
func (m Method) Compress(dst, page []byte) ([]byte, Codec) { return m.Codec().Compress(dst, page) }
