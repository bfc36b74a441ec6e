package grouping

import (
	"reflect"
	"testing"
)

// pagesTable is a StoreWeight from a table: pages[c][t], and the (c, t) pairs held already.
func pagesTable(pages map[uint32][]int, held map[[2]int]bool) StoreWeight {
	return func(c uint32, t int) (int, bool) { return pages[c][t], held[[2]int{int(c), t}] }
}

func TestFitStoresKeepsAllWithinCapacity(t *testing.T) {
	batches := []Batch{{Targets: []int{0, 1}, Contents: []uint32{1, 2}}, {Targets: []int{0}, Contents: []uint32{3}}}
	w := pagesTable(map[uint32][]int{1: {1, 1}, 2: {3, 1}, 3: {1, 0}}, nil)
	for _, caps := range [][]int{{Unlimited, Unlimited}, {3, 2}} {
		fit := FitStores(batches, caps, w)
		if !reflect.DeepEqual(fit.Batches, batches) || !reflect.DeepEqual(fit.LeftOut, []int{0, 0}) ||
			!reflect.DeepEqual(fit.Wanted, []int{3, 2}) {
			t.Fatalf("capacities %v: %+v", caps, fit)
		}
	}
}

// TestFitStoresByGain: a target short of room keeps the contents held by most pages and by most targets; a content
// of a single page of one VM goes first; the batches split by the targets each content keeps.
func TestFitStoresByGain(t *testing.T) {
	batches := []Batch{
		{Targets: []int{0, 1}, Contents: []uint32{10, 11, 12}},
		{Targets: []int{0}, Contents: []uint32{20, 21, 22}},
	}
	w := pagesTable(map[uint32][]int{
		10: {1, 1}, // gain 0.5 on both targets
		11: {5, 2}, // 4.5
		12: {2, 1}, // 1.5
		20: {1, 0}, // 0: one page of one VM
		21: {8, 0}, // 7
		22: {2, 0}, // 1
	}, nil)
	fit := FitStores(batches, []int{3, Unlimited}, w)
	want := []Batch{
		{Targets: []int{1}, Contents: []uint32{10}},
		{Targets: []int{0, 1}, Contents: []uint32{11, 12}},
		{Targets: []int{0}, Contents: []uint32{21}},
	}
	if !reflect.DeepEqual(fit.Batches, want) {
		t.Fatalf("batches %+v, want %+v", fit.Batches, want)
	}
	if !reflect.DeepEqual(fit.LeftOut, []int{3, 0}) || !reflect.DeepEqual(fit.Wanted, []int{6, 3}) {
		t.Fatalf("left out %v, wanted %v", fit.LeftOut, fit.Wanted)
	}
	// At capacity 0 a target is sent nothing; a content no target keeps is dropped.
	fit = FitStores(batches, []int{0, 0}, w)
	if len(fit.Batches) != 0 || !reflect.DeepEqual(fit.LeftOut, []int{6, 3}) {
		t.Fatalf("capacity 0: %+v", fit)
	}
}

// TestFitStoresHeldCostsNothing: a content the target read from its own files stays in its batch and takes none of
// its capacity.
func TestFitStoresHeldCostsNothing(t *testing.T) {
	batches := []Batch{{Targets: []int{0}, Contents: []uint32{1, 2, 3}}}
	w := pagesTable(map[uint32][]int{1: {1}, 2: {9}, 3: {4}}, map[[2]int]bool{{2, 0}: true})
	fit := FitStores(batches, []int{1}, w)
	want := []Batch{{Targets: []int{0}, Contents: []uint32{2, 3}}}
	if !reflect.DeepEqual(fit.Batches, want) || fit.LeftOut[0] != 1 || fit.Wanted[0] != 2 {
		t.Fatalf("%+v", fit)
	}
}

// TestFitStoresNeverExceeds: on a larger random-ish input, each target is sent at most its capacity (held contents
// aside), and every content kept for a target was in one of its batches before.
func TestFitStoresNeverExceeds(t *testing.T) {
	const nT, nC = 4, 3000
	var batches []Batch
	for set := 1; set < 1<<nT; set++ {
		var b Batch
		for t := range nT {
			if set&(1<<t) != 0 {
				b.Targets = append(b.Targets, t)
			}
		}
		for c := uint32(set); c < nC; c += 1 << nT {
			b.Contents = append(b.Contents, c)
		}
		batches = append(batches, b)
	}
	w := func(c uint32, t int) (int, bool) { return 1 + int(c*2654435761>>28)%7, c%97 == 0 }
	caps := []int{100, 0, 1000, Unlimited}
	fit := FitStores(batches, caps, w)
	before := map[[2]int]bool{}
	for _, b := range batches {
		for _, c := range b.Contents {
			for _, t := range b.Targets {
				before[[2]int{int(c), t}] = true
			}
		}
	}
	sent := make([]int, nT)
	for _, b := range fit.Batches {
		for _, c := range b.Contents {
			for _, tg := range b.Targets {
				if !before[[2]int{int(c), tg}] {
					t.Errorf("content %d kept for target %d, which never wanted it", c, tg)
				}
				if _, held := w(c, tg); !held {
					sent[tg]++
				}
			}
		}
	}
	for tg, c := range caps {
		if c >= 0 && sent[tg] > c {
			t.Errorf("target %d: %d contents sent, capacity %d", tg, sent[tg], c)
		}
		if sent[tg]+fit.LeftOut[tg] != fit.Wanted[tg] {
			t.Errorf("target %d: %d sent + %d left out != %d wanted", tg, sent[tg], fit.LeftOut[tg], fit.Wanted[tg])
		}
	}
}
