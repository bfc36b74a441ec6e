package grouping

import (
	"cmp"
	"math"
	"slices"
)

// MinHash sketches of the VMs' shared pages, to find each VM's most similar VMs without comparing page sets.
//
// One-permutation hashing: every shared page hashes once; the top bits pick one of sketchBins bins and the
// rest is kept as the bin's minimum. Two VMs agree on a bin with probability about their Jaccard similarity J,
// and their shared pages are about J/(1+J)·(|A|+|B|). Pages are named by (class, index in class): the classes
// already merge pages with equal holder sets, so this names each shared page exactly once.

const (
	sketchBins = 64
	neighbours = 10   // per VM, the most similar VMs kept
	allPairsN  = 2048 // up to this many VMs every pair is compared; beyond, LSH bands choose the pairs
	bandRows   = 4    // bins per LSH band
)

type sketch [sketchBins]uint64

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

func (m *model) sketches(seed uint64) []sketch {
	sk := make([]sketch, m.nVM)
	for v := range sk {
		for b := range sk[v] {
			sk[v][b] = math.MaxUint64
		}
		for _, k := range m.classes[v] {
			base := splitmix(seed ^ uint64(k)<<20)
			for j := range uint64(m.weight[k]) {
				h := splitmix(base + j)
				b, val := h>>58, h&(1<<58-1)
				if val < sk[v][b] {
					sk[v][b] = val
				}
			}
		}
	}
	return sk
}

// similarity estimates how many pages VMs u and v share.
func (m *model) similarity(sk []sketch, u, v int) float64 {
	same, used := 0, 0
	for b := range sketchBins {
		x, y := sk[u][b], sk[v][b]
		if x == math.MaxUint64 && y == math.MaxUint64 {
			continue
		}
		used++
		if x == y {
			same++
		}
	}
	if same == 0 {
		return 0
	}
	j := float64(same) / float64(used)
	return j / (1 + j) * float64(m.shared[u]+m.shared[v])
}

// nearest returns, for every VM, up to `neighbours` VMs with the most estimated shared pages (at least one),
// the most similar first.
func (m *model) nearest(sk []sketch) [][]int32 {
	type cand struct {
		v   int32
		sim float64
	}
	best := make([][]cand, m.nVM)
	offer := func(u, v int) {
		s := m.similarity(sk, u, v)
		if s < 1 {
			return
		}
		for _, pair := range [2][2]int{{u, v}, {v, u}} {
			a, b := pair[0], pair[1]
			l := best[a]
			if len(l) == neighbours && l[len(l)-1].sim >= s {
				continue
			}
			i, _ := slices.BinarySearchFunc(l, s, func(c cand, s float64) int { return cmp.Compare(s, c.sim) })
			if len(l) == neighbours {
				l = l[:len(l)-1]
			}
			best[a] = slices.Insert(l, i, cand{int32(b), s})
		}
	}
	if m.nVM <= allPairsN {
		for u := range m.nVM {
			for v := u + 1; v < m.nVM; v++ {
				offer(u, v)
			}
		}
	} else {
		// LSH: VMs equal on all rows of some band are candidate pairs; a window bounds huge buckets.
		const window = 16
		order := make([]int, m.nVM)
		key := make([]uint64, m.nVM)
		seen := make(map[[2]int]bool)
		for band := 0; band+bandRows <= sketchBins; band += bandRows {
			for v := range order {
				order[v] = v
				h := uint64(band)
				for r := range bandRows {
					h = splitmix(h ^ sk[v][band+r])
				}
				key[v] = h
			}
			slices.SortFunc(order, func(a, b int) int { return cmp.Or(cmp.Compare(key[a], key[b]), a-b) })
			for i, u := range order {
				for j := i + 1; j < len(order) && j <= i+window && key[order[j]] == key[u]; j++ {
					p := [2]int{min(u, order[j]), max(u, order[j])}
					if !seen[p] {
						seen[p] = true
						offer(p[0], p[1])
					}
				}
			}
		}
	}
	out := make([][]int32, m.nVM)
	for v, l := range best {
		for _, c := range l {
			out[v] = append(out[v], c.v)
		}
	}
	return out
}
