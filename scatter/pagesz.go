package scatter

import (
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// A PAGES frame of a VM stream is mostly small records: a reference is 15 bytes and a zero page 12, and a 128 MiB
// guest's stream holds about 24,000 and 8,000 of them, whose block numbers, offsets and content ids run in order.
// Compressed as a whole (PAGES_Z), such a frame shrinks severalfold (to about 5 bytes a record when one content id
// in ten jumps); a frame of literal pages, already compressed one
// by one, does not, and goes plain. The receiver decodes at most maxPagesFrame bytes from one PAGES_Z frame.

// maxPagesFrame bounds the records of one PAGES frame (the sender sends at pagesFrameTarget; one record more fits).
const maxPagesFrame = 1 << 20

// pagesZMinGain is the share of a frame that compression must save for PAGES_Z to be sent.
const pagesZMinGain = 0.1

var pagesZstd struct {
	once sync.Once
	enc  *zstd.Encoder
	dec  *zstd.Decoder
	err  error
}

func pagesCoders() (*zstd.Encoder, *zstd.Decoder) {
	z := &pagesZstd
	z.once.Do(func() {
		z.enc, z.err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderCRC(false),
			zstd.WithWindowSize(128<<10), zstd.WithEncoderConcurrency(1))
		if z.err != nil {
			return
		}
		z.dec, z.err = zstd.NewReader(nil, zstd.WithDecoderMaxMemory(maxPagesFrame), zstd.WithDecoderMaxWindow(128<<10),
			zstd.WithDecodeAllCapLimit(true), zstd.WithDecoderConcurrency(1))
	})
	if z.err != nil {
		panic("scatter: zstd setup: " + z.err.Error()) // constant options: a programming error
	}
	return z.enc, z.dec
}

// compressPages returns the PAGES_Z payload for records if it saves enough, else nil.
func compressPages(dst, records []byte) []byte {
	enc, _ := pagesCoders()
	out := enc.EncodeAll(records, dst[:0])
	if float64(len(out)) > (1-pagesZMinGain)*float64(len(records)) {
		return nil
	}
	return out
}

// decodePages decodes a PAGES_Z payload into dst (reused), refusing more than maxPagesFrame bytes.
func decodePages(dst, payload []byte) ([]byte, error) {
	_, dec := pagesCoders()
	if cap(dst) < maxPagesFrame {
		dst = make([]byte, 0, maxPagesFrame)
	}
	out, err := dec.DecodeAll(payload, dst[:0:maxPagesFrame])
	if err != nil || len(out) > maxPagesFrame {
		return nil, fmt.Errorf("%w: PAGES_Z payload does not decode (%v)", ErrFrame, err)
	}
	return out, nil
}
