package dedup

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/klauspost/compress/dict"
	"github.com/klauspost/compress/zstd"
)

// TestPrimeCompressionExperiments measures, on real guests' RAM, what the prime's bundles would weigh under other
// choices: bundles ordered by similarity, zstd's default level, bigger bundles, one stream with its history, a
// dictionary trained on the guests' own pages (docs/benchmarks.md, section 5). It needs raw RAM images, such as
// bench/scale's capture makes:
//
//	go test ./bench/scale -run TestCapture -scale.capture /tmp/cap -scale.sameseed
//	VMSCATTER_PAGE_IMAGES='/tmp/cap/img*.ram' go test ./dedup -run TestPrimeCompressionExperiments -v
func TestPrimeCompressionExperiments(t *testing.T) {
	glob := os.Getenv("VMSCATTER_PAGE_IMAGES")
	if glob == "" {
		t.Skip("skipped without VMSCATTER_PAGE_IMAGES (a glob of raw guest RAM images)")
	}
	paths, _ := filepath.Glob(glob)
	if len(paths) == 0 {
		t.Fatalf("no image matches %q", glob)
	}
	// The distinct non-zero pages, in scan order (image by image), as the prime's contents are.
	seen := map[Fingerprint]bool{}
	var pages [][]byte
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+PageSize <= len(b); i += PageSize {
			pg := b[i : i+PageSize]
			if IsZero(pg) {
				continue
			}
			if f := XXHash(pg); !seen[f] {
				seen[f] = true
				pages = append(pages, pg)
			}
		}
	}
	t.Logf("%d images, %d distinct non-zero pages (%.1f MiB)", len(paths), len(pages), float64(len(pages)*PageSize)/(1<<20))

	const window = 1024 // the prime's prepareWindow
	bundledBy := func(per int, order [][]byte, enc *zstd.Encoder) (int, time.Duration) {
		total, buf, out := 0, make([]byte, 0, per*PageSize), []byte(nil)
		t0 := time.Now()
		for i := 0; i < len(order); i += per {
			buf = buf[:0]
			for _, p := range order[i:min(i+per, len(order))] {
				buf = append(buf, p...)
			}
			out = enc.EncodeAll(buf, out[:0])
			total += min(len(out), len(buf))
		}
		return total, time.Since(t0)
	}
	bundled := func(order [][]byte, enc *zstd.Encoder) (int, time.Duration) {
		return bundledBy(MaxBundlePages, order, enc)
	}
	newEnc := func(opts ...zstd.EOption) *zstd.Encoder {
		e, err := zstd.NewWriter(nil, append([]zstd.EOption{zstd.WithEncoderCRC(false), zstd.WithWindowSize(64 << 10),
			zstd.WithEncoderConcurrency(1)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	report := func(name string, n int, d time.Duration, base int) {
		t.Logf("%-40s %7.2f MiB  %.3f of the pages  %+.2f%%  %v", name, float64(n)/(1<<20), float64(n)/float64(len(pages)*PageSize),
			100*(float64(n)/float64(base)-1), d.Round(time.Millisecond))
	}
	fastest := newEnc(zstd.WithEncoderLevel(zstd.SpeedFastest))
	base, d := bundled(pages, fastest)
	report("zstd fastest, scan order (the prime)", base, d, base)
	n, d := bundled(pages, newEnc(zstd.WithEncoderLevel(zstd.SpeedDefault)))
	report("zstd default level, scan order", n, d, base)
	n, d = bundledBy(63, pages, newEnc(zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithWindowSize(256<<10)))
	report("zstd fastest, bundles of 63 pages", n, d, base)
	// One zstd stream for all, as a TCP prime to one target could be: each bundle flushed, with the history before it.
	var sink bytes.Buffer
	stream, err := zstd.NewWriter(&sink, zstd.WithEncoderCRC(false), zstd.WithWindowSize(1<<20), zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	for i := 0; i < len(pages); i += MaxBundlePages {
		for _, p := range pages[i:min(i+MaxBundlePages, len(pages))] {
			stream.Write(p)
		}
		stream.Flush()
	}
	stream.Close()
	report("zstd fastest, one stream (1 MiB window)", sink.Len(), time.Since(t0), base)

	// Similarity: within each window, sort by a MinHash of the page's aligned non-zero 8-byte words.
	sorted := slices.Clone(pages)
	t0 = time.Now()
	for i := 0; i < len(sorted); i += window {
		w := sorted[i:min(i+window, len(sorted))]
		keys := make(map[*byte][2]uint64, len(w))
		for _, p := range w {
			keys[&p[0]] = minHash2(p)
		}
		slices.SortStableFunc(w, func(a, b []byte) int {
			ka, kb := keys[&a[0]], keys[&b[0]]
			if ka[0] != kb[0] {
				return cmpU64(ka[0], kb[0])
			}
			return cmpU64(ka[1], kb[1])
		})
	}
	sortTime := time.Since(t0)
	n, d = bundled(sorted, fastest)
	report("zstd fastest, similarity order", n, d+sortTime, base)

	// A dictionary trained on a sample of the pages themselves (every 16th), sent once to each target.
	for _, size := range []int{32 << 10, 112 << 10} {
		var sample [][]byte
		for i := 0; i < len(pages); i += 16 {
			sample = append(sample, pages[i])
		}
		t0 := time.Now()
		dct, err := dict.BuildZstdDict(sample, dict.Options{MaxDictSize: size, HashBytes: 6, ZstdDictID: 1})
		if err != nil {
			t.Fatal(err)
		}
		train := time.Since(t0)
		n, d = bundled(pages, newEnc(zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderDict(dct)))
		report("zstd fastest + dictionary "+itoa(size>>10)+" KiB (+dict)", n+len(dct), d+train, base)
		n, d = bundled(sorted, newEnc(zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderDict(dct)))
		report("  the same, similarity order", n+len(dct), d+train, base)
	}
}

// minHash2 is two MinHash values of a page's non-zero aligned 8-byte words.
func minHash2(p []byte) [2]uint64 {
	m := [2]uint64{^uint64(0), ^uint64(0)}
	for i := 0; i+8 <= len(p); i += 8 {
		w := binary.LittleEndian.Uint64(p[i:])
		if w == 0 {
			continue
		}
		h1 := (w ^ 0x9e3779b97f4a7c15) * 0xbf58476d1ce4e5b9
		h1 ^= h1 >> 31
		h2 := (w ^ 0x94d049bb133111eb) * 0xd6e8feb86659fd93
		h2 ^= h2 >> 29
		m[0], m[1] = min(m[0], h1), min(m[1], h2)
	}
	return m
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}
