package dedup

import (
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// zstdPair is a zstd encoder and decoder built on first use, for one kind of input: pages one by one, bundles, or
// frames of page records. Both are safe for concurrent use. The decoder never decodes more than maxOut bytes nor
// uses a window larger than window, whatever the input claims.
type zstdPair struct {
	window, maxOut int
	lowMem         bool              // the encoder keeps small tables (inputs of one page)
	level          zstd.EncoderLevel // 0: the fastest
	encodeOnly     bool              // no decoder: another pair's reads these frames

	once sync.Once
	enc  *zstd.Encoder
	dec  *zstd.Decoder
}

func (z *zstdPair) get() (*zstd.Encoder, *zstd.Decoder) {
	z.once.Do(func() {
		var err error
		level := z.level
		if level == 0 {
			level = zstd.SpeedFastest
		}
		z.enc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderCRC(false),
			zstd.WithWindowSize(z.window), zstd.WithLowerEncoderMem(z.lowMem), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)))
		if err == nil && !z.encodeOnly {
			z.dec, err = zstd.NewReader(nil, zstd.WithDecoderMaxMemory(uint64(z.maxOut)), zstd.WithDecoderMaxWindow(uint64(z.window)),
				zstd.WithDecodeAllCapLimit(true), zstd.WithDecoderConcurrency(runtime.GOMAXPROCS(0)))
		}
		if err != nil {
			panic("dedup: zstd setup: " + err.Error()) // constant options: a programming error
		}
	})
	return z.enc, z.dec
}

var (
	pageZstd   = zstdPair{window: zstd.MinWindowSize * 4, maxOut: PageSize, lowMem: true} // 4 KiB: one page
	bundleZstd = zstdPair{window: 64 << 10, maxOut: MaxEncodedBundle}                     // the whole bundle
	// bundleZstdMore encodes bundles at EffortMore; bundleZstd's decoder reads them.
	bundleZstdMore = zstdPair{window: 64 << 10, maxOut: MaxEncodedBundle, level: zstd.SpeedDefault, encodeOnly: true}
	recordsZstd    = zstdPair{window: 128 << 10, maxOut: MaxRecordsFrame}
)
