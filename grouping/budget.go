package grouping

import (
	"encoding/binary"
	"slices"
)

// Unlimited is a target capacity with no bound (FitStores).
const Unlimited = -1

// StoreWeight says what priming content c to target t is worth: Pages is how many of the target's VMs' pages hold
// it; Held, that the target already holds it (read from its own files), so that it costs none of the capacity.
type StoreWeight func(c uint32, t int) (pages int, held bool)

// StoreFit is the outcome of FitStores.
type StoreFit struct {
	Batches []Batch // the batches within every target's capacity, in the input's order
	Wanted  []int   // per target: the contents the batches sent it before the cut (held ones excluded)
	LeftOut []int   // per target: how many of them were left out for its capacity
}

// FitStores cuts a schedule's batches down to each target's content store: target t takes at most capacity[t]
// contents (Unlimited: all). A target that would receive more keeps those that save the most bytes, and its VMs'
// pages of the others travel literal. The saving of priming c to t is what its references spare, less its share of
// the prime:
//
//	gain(c, t) = pages(c, t) − 1/k(c)
//
// with k(c) the targets of c's batch (one multicast send is shared among them). So a content held by many pages, or
// wanted by many targets, goes first, and a content held by a single page of one VM (gain 0: it costs a page in the
// prime and spares one in the migration) comes last; it is still primed when there is room, since the prime runs
// before the migrations, while the VMs are not yet slowed. Ties go to the lower content id, so the cut is
// deterministic. The targets are cut one by one against the input's target sets (a content another target drops
// does not raise its gain here).
//
// A batch whose contents lose some of their targets splits into batches by the targets they keep, in place, so the
// schedule's order is kept as far as it can be; a content no target keeps is dropped.
func FitStores(batches []Batch, capacity []int, weight StoreWeight) StoreFit {
	nT := len(capacity)
	fit := StoreFit{Wanted: make([]int, nT), LeftOut: make([]int, nT)}
	// dropped[t] holds the contents cut from target t.
	dropped := make([]map[uint32]bool, nT)
	type cand struct {
		c    uint32
		gain float64
	}
	var cands []cand
	for t := range nT {
		cands = cands[:0]
		for _, b := range batches {
			if _, in := slices.BinarySearch(b.Targets, t); !in {
				continue
			}
			share := 1 / float64(len(b.Targets))
			for _, c := range b.Contents {
				pages, held := weight(c, t)
				if held {
					continue
				}
				cands = append(cands, cand{c: c, gain: float64(pages) - share})
			}
		}
		fit.Wanted[t] = len(cands)
		if capacity[t] < 0 || len(cands) <= capacity[t] {
			continue
		}
		slices.SortFunc(cands, func(a, b cand) int {
			switch {
			case a.gain > b.gain:
				return -1
			case a.gain < b.gain:
				return 1
			}
			return int(int64(a.c) - int64(b.c))
		})
		dropped[t] = make(map[uint32]bool, len(cands)-capacity[t])
		for _, x := range cands[capacity[t]:] {
			dropped[t][x.c] = true
		}
		fit.LeftOut[t] = len(cands) - capacity[t]
	}
	var kept []int
	key := make([]byte, 0, 8*nT)
	for _, b := range batches {
		cut := false
		for _, t := range b.Targets {
			if dropped[t] != nil {
				cut = true
				break
			}
		}
		if !cut {
			fit.Batches = append(fit.Batches, b)
			continue
		}
		// Split by the targets each content keeps, sub-batches in the order their first content comes.
		index := map[string]int{}
		first := len(fit.Batches)
		for _, c := range b.Contents {
			kept = kept[:0]
			for _, t := range b.Targets {
				if !dropped[t][c] {
					kept = append(kept, t)
				}
			}
			if len(kept) == 0 {
				continue
			}
			key = key[:0]
			for _, t := range kept {
				key = binary.AppendUvarint(key, uint64(t))
			}
			i, ok := index[string(key)]
			if !ok {
				i = len(fit.Batches) - first
				index[string(key)] = i
				fit.Batches = append(fit.Batches, Batch{Targets: slices.Clone(kept)})
			}
			fit.Batches[first+i].Contents = append(fit.Batches[first+i].Contents, c)
		}
	}
	return fit
}
