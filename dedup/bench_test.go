package dedup

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
)

// Benchmarks for docs/dedup.md. Run with:
//
//	go test -run XXX -bench . -benchtime 2s ./dedup/

// exePages returns the non-zero pages of this test binary: machine code, read-only data
// and symbol tables, the closest thing to guest memory at hand.
var exePages = sync.OnceValue(func() [][]byte {
	b, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		return nil
	}
	var pages [][]byte
	for i := 0; i+PageSize <= len(b); i += PageSize {
		if p := b[i : i+PageSize]; !IsZero(p) {
			pages = append(pages, p)
		}
	}
	return pages
})

func textPages() [][]byte {
	var pages [][]byte
	for i := range 256 {
		pages = append(pages, textPage(i))
	}
	return pages
}

func benchPage() []byte { return textPage(1) }

func BenchmarkFingerprint(b *testing.B) {
	p := benchPage()
	b.SetBytes(PageSize)
	for b.Loop() {
		XXHash(p)
	}
}

func BenchmarkIsZero(b *testing.B) {
	last := make([]byte, PageSize)
	last[PageSize-1] = 1
	for _, c := range []struct {
		name string
		page []byte
	}{{"zero", make([]byte, PageSize)}, {"nonzero-last-byte", last}, {"text", benchPage()}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(PageSize)
			for b.Loop() {
				IsZero(c.page)
			}
		})
	}
}

func BenchmarkDigest(b *testing.B) {
	d := testDigester()
	p := benchPage()
	b.SetBytes(PageSize)
	for b.Loop() {
		d.Sum(p)
	}
}

func randomFPs(n int) []Fingerprint {
	r := rand.New(rand.NewPCG(3, 3))
	fps := make([]Fingerprint, n)
	for i := range fps {
		fps[i] = Fingerprint(r.Uint64())
	}
	return fps
}

// BenchmarkIndex measures the content table the scan uses, against a Go map, with 1 M
// distinct fingerprints: insert (growing from empty) and lookup (all hits).
func BenchmarkIndex(b *testing.B) {
	const n = 1 << 20
	fps := randomFPs(n)
	b.Run("insert", func(b *testing.B) {
		for b.Loop() {
			t := newFPTable(0)
			for i, fp := range fps {
				t.getOrInsert(fp, uint32(i))
			}
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds()/1e6, "Mpages/s")
	})
	b.Run("lookup", func(b *testing.B) {
		t := newFPTable(0)
		for i, fp := range fps {
			t.getOrInsert(fp, uint32(i))
		}
		for b.Loop() {
			for _, fp := range fps {
				t.get(fp)
			}
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds()/1e6, "Mpages/s")
	})
	b.Run("gomap-insert", func(b *testing.B) {
		for b.Loop() {
			m := map[Fingerprint]uint32{}
			for i, fp := range fps {
				if _, ok := m[fp]; !ok {
					m[fp] = uint32(i)
				}
			}
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds()/1e6, "Mpages/s")
	})
	b.Run("gomap-lookup", func(b *testing.B) {
		m := map[Fingerprint]uint32{}
		for i, fp := range fps {
			m[fp] = uint32(i)
		}
		for b.Loop() {
			for _, fp := range fps {
				_ = m[fp]
			}
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds()/1e6, "Mpages/s")
	})
}

// BenchmarkHeldIndex measures the sender's lookups against 256 K held contents: Add with
// precomputed fingerprint and digest, a page the target holds (fingerprint, digest,
// probe), and one it does not (fingerprint and probe), given the fingerprint (LookupFP)
// as the migrate path has it.
func BenchmarkHeldIndex(b *testing.B) {
	const n = 1 << 18
	fps := randomFPs(n)
	dgs := make([]Digest, n)
	for i := range dgs {
		binary.LittleEndian.PutUint64(dgs[i][:], uint64(fps[i])*31)
	}
	b.Run("add", func(b *testing.B) {
		for b.Loop() {
			h := NewHeldIndex(nil, testDigester())
			h.Grow(n)
			for i := range n {
				h.Add(ContentID(i), fps[i], dgs[i])
			}
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds()/1e6, "Mpages/s")
	})
	h := NewHeldIndex(nil, testDigester())
	for i := range n {
		h.Add(ContentID(i), fps[i], dgs[i])
	}
	held := benchPage()
	h.AddPage(ContentID(n), held)
	heldFP := XXHash(held)
	b.Run("lookup-hit", func(b *testing.B) {
		b.SetBytes(PageSize)
		for b.Loop() {
			if _, ok := h.LookupFP(held, heldFP); !ok {
				b.Fatal("miss")
			}
		}
	})
	other := textPage(2)
	b.Run("lookup-miss", func(b *testing.B) {
		i := 0
		for b.Loop() {
			h.LookupFP(other, Fingerprint(i)*0x9E3779B97F4A7C15)
			i++
		}
	})
}

func BenchmarkCompress(b *testing.B) {
	corpora := []struct {
		name  string
		pages [][]byte
	}{{"exe", exePages()}, {"text", textPages()}}
	for _, corpus := range corpora {
		if len(corpus.pages) == 0 {
			b.Logf("no %s pages", corpus.name)
			continue
		}
		for _, c := range []Codec{CodecS2, CodecZstd} {
			b.Run(fmt.Sprintf("%s/%v", corpus.name, c), func(b *testing.B) {
				var dst []byte
				in, out, i := 0, 0, 0
				b.SetBytes(PageSize)
				for b.Loop() {
					p := corpus.pages[i%len(corpus.pages)]
					i++
					dst = c.Append(dst[:0], p)
					in += PageSize
					out += min(len(dst), PageSize) // what Compress would send
				}
				b.ReportMetric(float64(out)/float64(in), "ratio")
			})
			b.Run(fmt.Sprintf("%s/%v-decode", corpus.name, c), func(b *testing.B) {
				encs := make([][]byte, min(len(corpus.pages), 512))
				for i := range encs {
					encs[i] = c.Append(nil, corpus.pages[i])
				}
				page := make([]byte, PageSize)
				i := 0
				b.SetBytes(PageSize)
				for b.Loop() {
					if err := c.Decode(page, encs[i%len(encs)]); err != nil {
						b.Fatal(err)
					}
					i++
				}
			})
		}
	}
}

// scanImage is 512 MiB of synthetic guest memory: a quarter zero pages, half drawn from
// 16 K shared contents, a quarter unique.
var scanImage = sync.OnceValue(func() []byte {
	const pages = 512 << 20 / PageSize
	mem := make([]byte, pages*PageSize)
	r := rand.New(rand.NewPCG(5, 5))
	src := exePages()
	if len(src) == 0 {
		src = textPages()
	}
	for i := range pages {
		p := mem[i*PageSize : (i+1)*PageSize]
		switch k := r.IntN(4); k {
		case 0: // zero
		case 1, 2: // shared
			s := r.IntN(16 << 10)
			copy(p, src[s%len(src)])
			binary.LittleEndian.PutUint64(p[8:], uint64(s))
		default: // unique
			copy(p, src[r.IntN(len(src))])
			binary.LittleEndian.PutUint64(p[8:], uint64(i)<<32)
		}
	}
	return mem
})

func BenchmarkScan512MiB(b *testing.B) {
	mem := scanImage()
	for _, workers := range []int{1, 2} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			regions := []Region{{VM: 0, Block: "pc.ram", Size: int64(len(mem)), R: bytes.NewReader(mem)}}
			b.SetBytes(int64(len(mem)))
			var m *SharingMap
			for b.Loop() {
				var err error
				if m, err = Scan(context.Background(), regions, ScanOptions{Workers: workers}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(m.Distinct()), "distinct")
			b.ReportMetric(float64(m.ZeroPages), "zero")
		})
	}
}
