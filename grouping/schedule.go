package grouping

import (
	"encoding/binary"
	"math/bits"
)

// Batch is the contents that go to exactly the same set of targets, sent once to that group.
type Batch struct {
	Targets  []int    // target indices, ascending
	Contents []uint32 // content ids, ascending
}

// Schedule is the multicast batches in sending order and the group membership changes that order implies:
// a target joins before the first batch of a run of consecutive batches that include it, and leaves after the
// run (after the last batch at the latest).
type Schedule struct {
	Batches           []Batch
	Joins, Leaves     int   // summed over targets
	MembershipChanges int   // Joins + Leaves
	TargetJoins       []int // per target index: how many times it joins (and leaves)
	TargetsUsed       int   // targets in at least one batch: the ideal is 2×TargetsUsed changes
}

// scheduleBudget bounds the distance evaluations of the batch ordering (2-opt and or-opt).
const scheduleBudget = 200_000_000

// scheduleStarts is how many nearest-neighbour tours (from different first batches) are improved.
const scheduleStarts = 16

// BuildSchedule groups every content held by some VM into batches by its target set (the targets of the VMs
// holding it) and orders the batches so that target memberships change rarely.
//
// The count of joins plus leaves of an order is the length of a closed tour through the batches' target sets
// and the empty set, measured by the size of the symmetric difference between consecutive sets: a travelling
// salesman (Hamilton) tour. It is built by nearest neighbour from the empty set, then improved by 2-opt and
// or-opt (moving runs of 1 to 3 batches), within a fixed budget of evaluations. When the target sets have the
// consecutive-ones property this usually reaches the ideal of one join and one leave per target.
//
// assign must hold a valid target index for every VM (as Place returns); BuildSchedule panics otherwise.
// Content ids outside [0, p.NumContents) are ignored.
func BuildSchedule(p Problem, assign []int) Schedule {
	if len(assign) != len(p.Contents) {
		panic("grouping: BuildSchedule: assignment length differs from the number of VMs")
	}
	nT := len(p.Targets)
	words := (nT + 63) / 64
	nc := max(p.NumContents, 0)
	sets := make([]uint64, nc*words)
	held := make([]bool, nc)
	for v, t := range assign {
		if t < 0 || t >= nT {
			panic("grouping: BuildSchedule: VM assigned to a target index out of range")
		}
		for _, c := range p.Contents[v] {
			if int(c) < nc {
				sets[int(c)*words+t/64] |= 1 << (t % 64)
				held[c] = true
			}
		}
	}
	var batches []Batch
	var keys [][]uint64
	index := make(map[string]int)
	key := make([]byte, 8*words)
	for c := range nc {
		if !held[c] {
			continue
		}
		set := sets[c*words : (c+1)*words]
		for i, w := range set {
			binary.LittleEndian.PutUint64(key[8*i:], w)
		}
		b, ok := index[string(key)]
		if !ok {
			b = len(batches)
			index[string(key)] = b
			batches = append(batches, Batch{Targets: members(set)})
			keys = append(keys, set)
		}
		batches[b].Contents = append(batches[b].Contents, uint32(c))
	}
	order := orderSets(keys)
	s := Schedule{Batches: make([]Batch, len(order)), TargetJoins: make([]int, nT)}
	for i, b := range order {
		s.Batches[i] = batches[b]
	}
	in := make([]bool, nT)
	for _, b := range s.Batches {
		now := make([]bool, nT)
		for _, t := range b.Targets {
			now[t] = true
			if !in[t] {
				s.TargetJoins[t]++
			}
		}
		in = now
	}
	for _, j := range s.TargetJoins {
		s.Joins += j
		if j > 0 {
			s.TargetsUsed++
		}
	}
	s.Leaves = s.Joins // every run of a target ends with a leave, after the last batch at the latest
	s.MembershipChanges = s.Joins + s.Leaves
	return s
}

func members(set []uint64) []int {
	var out []int
	for i, w := range set {
		for w != 0 {
			out = append(out, 64*i+bits.TrailingZeros64(w))
			w &= w - 1
		}
	}
	return out
}

// orderSets returns an order of the sets that keeps the tour through them and the empty set short.
func orderSets(sets [][]uint64) []int {
	n := len(sets)
	if n == 0 {
		return nil
	}
	empty := make([]uint64, len(sets[0]))
	node := func(i int) []uint64 { // node n is the empty set
		if i == n {
			return empty
		}
		return sets[i]
	}
	budget := scheduleBudget
	dist := func(i, j int) int {
		budget--
		d := 0
		for w, x := range node(i) {
			d += bits.OnesCount64(x ^ node(j)[w])
		}
		return d
	}
	length := func(tour []int) int {
		l := 0
		for i := 1; i < len(tour); i++ {
			l += dist(tour[i-1], tour[i])
		}
		return l
	}
	var best []int
	bestLen := 0
	starts := min(n, scheduleStarts)
	for start := range starts {
		first := start * n / starts // the first start begins with the smallest set, the others spread out
		if start == 0 {
			for j := range n {
				if dist(n, j) < dist(n, first) {
					first = j
				}
			}
		}
		tour := nearestNeighbour(n, first, dist)
		for improved := true; improved && budget > 0; {
			improved = twoOpt(tour, dist, &budget) || orOpt(tour, dist, &budget)
		}
		if l := length(tour); best == nil || l < bestLen {
			best, bestLen = tour, l
		}
		if budget <= 0 {
			break
		}
	}
	return best[1 : n+1]
}

// nearestNeighbour builds a tour from the empty set (node n) through first, then always to the nearest node
// not yet visited, and back to the empty set. tour[0] and tour[n+1] are the empty set.
func nearestNeighbour(n, first int, dist func(i, j int) int) []int {
	tour := make([]int, 0, n+2)
	tour = append(tour, n, first)
	used := make([]bool, n)
	used[first] = true
	for cur := first; len(tour) <= n; {
		next, nd := -1, 0
		for j := range n {
			if !used[j] {
				if d := dist(cur, j); next < 0 || d < nd {
					next, nd = j, d
				}
			}
		}
		used[next] = true
		tour = append(tour, next)
		cur = next
	}
	return append(tour, n)
}

// twoOpt reverses tour[i..j] whenever that shortens the tour.
func twoOpt(tour []int, dist func(i, j int) int, budget *int) bool {
	improved := false
	n := len(tour) - 2
	for i := 1; i < n && *budget > 0; i++ {
		for j := i + 1; j <= n; j++ {
			d := dist(tour[i-1], tour[j]) + dist(tour[i], tour[j+1]) - dist(tour[i-1], tour[i]) - dist(tour[j], tour[j+1])
			if d < 0 {
				for a, b := i, j; a < b; a, b = a+1, b-1 {
					tour[a], tour[b] = tour[b], tour[a]
				}
				improved = true
			}
		}
	}
	return improved
}

// orOpt moves a run of 1 to 3 batches, possibly reversed, to another place whenever that shortens the tour.
func orOpt(tour []int, dist func(i, j int) int, budget *int) bool {
	n := len(tour) - 2
	for l := 1; l <= 3; l++ {
		for i := 1; i+l-1 <= n && *budget > 0; i++ {
			j := i + l - 1 // the run is tour[i..j]
			prev, next := tour[i-1], tour[j+1]
			cut := dist(prev, tour[i]) + dist(tour[j], next) - dist(prev, next)
			for k := 0; k <= n; k++ { // insert between tour[k] and tour[k+1]
				if k >= i-1 && k <= j {
					continue
				}
				a, b := tour[k], tour[k+1]
				base := dist(a, b)
				fwd := dist(a, tour[i]) + dist(tour[j], b) - base
				rev := dist(a, tour[j]) + dist(tour[i], b) - base
				if min(fwd, rev) < cut {
					run := append([]int(nil), tour[i:j+1]...)
					if rev < fwd {
						for x, y := 0, len(run)-1; x < y; x, y = x+1, y-1 {
							run[x], run[y] = run[y], run[x]
						}
					}
					rest := append(append([]int(nil), tour[:i]...), tour[j+1:]...)
					if k > j {
						k -= l
					}
					out := append(append(append([]int(nil), rest[:k+1]...), run...), rest[k+1:]...)
					copy(tour, out)
					return true
				}
			}
		}
	}
	return false
}
