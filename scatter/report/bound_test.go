package report

import (
	"runtime"
	"testing"

	"github.com/vmscatter/vmscatter/dedup"
)

func TestFinalBound(t *testing.T) {
	a := NewFinalImage(0) // VM on target 0
	a.Ref(0, 0, 1, 1, 100, false)
	a.Ref(0, 4096, 2, 2, 50, false)
	a.Ref(0, 8192, 3, 3, 0, true) // from a local file
	a.Literal(0, 12288, 9, 4096)
	a.Zero(0, 12288)                // ended as a zero page: free
	b := NewFinalImage(1)           // VM on target 1
	b.Literal(0, 0, 1, 80)          // same content, cheaper: the bound takes the cheapest
	b.Ref(0, 4096, 3, 3, 30, false) // local on target 0, not on target 1
	b.Ref(0, 8192, 4, 4, 10, false)
	b.Ref(0, 8192, 5, 5, 20, false) // overwritten: only the last content counts
	c := NewFinalImage(0)           // a second VM on target 0 shares content 1 and 2
	c.Ref(1, 0, 1, 1, 100, false)
	c.Ref(1, 4096, 2, 2, 50, false)

	// Primed: 1, 2, 3 (for target 1), 4 (overwritten before the end) and 7 (referenced by no stream).
	primed := []uint32{1: 100, 2: 50, 3: 30, 4: 10, 7: 40}
	got := ComputeFinalBound([]*FinalImage{a, b, c, nil}, primed)
	if got.PrimeUnused != 50 { // 4 and 7
		t.Errorf("prime unused %d, want 50", got.PrimeUnused)
	}
	if got.DistinctPages != 4 { // 1, 2, 3, 5
		t.Errorf("distinct %d, want 4", got.DistinctPages)
	}
	// Multicast: 1 (80) + 2 (50) + 3 (30, needed by target 1) + 5 (20).
	if got.Multicast != 180 {
		t.Errorf("multicast bound %d, want 180", got.Multicast)
	}
	// Unicast: target 0 needs 1 (80) and 2 (50), and has 3 locally; target 1 needs 1 (80), 3 (30), 5 (20).
	if got.Unicast != 260 {
		t.Errorf("unicast bound %d, want 260", got.Unicast)
	}
}

// TestFinalImageBytesPerPage measures a FinalImage's memory per page of a 4 GiB guest whose pages all end non-zero,
// and holds it to its fixed 16 bytes (and a little for the chunk table).
func TestFinalImageBytesPerPage(t *testing.T) {
	if testing.Short() {
		t.Skip("measures a million pages; skipped in -short")
	}
	const pages = 1 << 20
	before := heapBytes()
	f := NewFinalImage(0)
	for n := range uint64(pages) {
		if n%3 == 0 {
			f.Literal(0, n*dedup.PageSize, dedup.Fingerprint(n), 1000)
		} else {
			f.Ref(0, n*dedup.PageSize, dedup.Fingerprint(n), dedup.ContentID(n), 700, n%7 == 0)
		}
	}
	per := float64(heapBytes()-before) / pages
	t.Logf("FinalImage: %.2f bytes per page", per)
	if per > 16.1 {
		t.Errorf("FinalImage takes %.2f bytes per page, over its fixed 16", per)
	}
	runtime.KeepAlive(f)
}

func TestFinalImageRecordsLastContent(t *testing.T) {
	f := NewFinalImage(0)
	f.Zero(3, 1<<40) // a zero page where nothing was ever recorded allocates nothing
	if len(f.blocks) != 0 {
		t.Fatalf("Zero allocated %d blocks", len(f.blocks))
	}
	f.Literal(1, 5*finalChunk*dedup.PageSize+dedup.PageSize, 42, 1<<31) // a cost beyond the mask is clamped, not a flag
	f.Ref(1, 0, 43, 9, 10, true)
	var got []finalPage
	f.each(func(p finalPage) { got = append(got, p) })
	if len(got) != 2 || got[0].fp != 43 || !got[0].local() || got[0].ref != 10 || got[0].bytes() != 10 ||
		got[1].fp != 42 || got[1].local() || got[1].bytes() != costMask || got[1].ref != 0 {
		t.Fatalf("pages %+v", got)
	}
	f.Zero(1, 0)
	n := 0
	f.each(func(finalPage) { n++ })
	if n != 1 {
		t.Fatalf("%d pages after a zero, want 1", n)
	}
}

func heapBytes() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}
