package grouping

import (
	"cmp"
	"math/rand/v2"
	"slices"
)

// ours: several starting placements, each improved by local search, the best kept.
//
//   - Starts: the greedy placement, and greedy with another rule for the next VM (the fewest new shared pages);
//     on small problems also the capacity packing and random packings.
//   - Local search over pairs of targets (a, b): every move of one VM from a to b or b to a, and every swap of a
//     VM of a with one of b, within capacities; the best improving one is applied, until none is left. A move's
//     delta is O(the VM's classes) from per-target class counts; a swap's delta is the two move deltas plus a
//     correction over the classes both VMs hold, computed only when the two deltas alone could beat the best.
//   - Pairs: with few targets every pair; otherwise a with the targets of the MinHash neighbours of its VMs.
//   - Small problems also get iterated local search: kick the best placement with random moves and swaps,
//     search again, keep it if better.
//
// Greedy is one of the starts and local search never makes a placement worse, so ours is never worse than
// greedy. Everything is driven by a fixed seed: the same Problem gives the same placement.

const (
	oursSeed        = 0x766d73636174 // "vmscat"
	allPairsTargets = 16             // up to this many targets local search tries every pair
	maxPartners     = 8              // beyond, the targets paired with each target
	maxPasses       = 100
	smallProblemVMs = 64 // up to this many VMs: random starts and iterated local search
	randomStarts    = 8
	kickRounds      = 200
	kickSize        = 3
	kickTries       = 8 * kickSize
)

func ours(m *model, caps *capacities, packing []int) []int {
	rng := rand.New(rand.NewPCG(oursSeed, uint64(m.nVM)<<32|uint64(m.nT)))
	base := greedy(m, caps, packing)
	best, bestCost := slices.Clone(base), m.fabric(base)
	var nbrs [][]int32
	if m.nT > allPairsTargets {
		nbrs = m.nearest(m.sketches(oursSeed))
	}
	starts := [][]int{base, greedyWith(m, caps, packing, leastNew)}
	small := m.nVM <= smallProblemVMs
	if small {
		starts = append(starts, packing)
		for range randomStarts {
			if r := randomPacking(caps, rng); r != nil {
				starts = append(starts, r)
			}
		}
	}
	ls := &searcher{m: m, caps: caps, nbrs: nbrs, rng: rng}
	for _, start := range starts {
		s := ls.search(start)
		if s.total() < bestCost {
			best, bestCost = slices.Clone(s.assign), s.total()
		}
	}
	if small {
		for range kickRounds {
			s := ls.load(best)
			ls.kick(s)
			ls.descend(s)
			if s.total() < bestCost {
				best, bestCost = slices.Clone(s.assign), s.total()
			}
		}
	}
	return best
}

// searcher runs local search.
type searcher struct {
	m    *model
	caps *capacities
	nbrs [][]int32 // MinHash neighbours, nil when every pair of targets is tried
	rng  *rand.Rand
	// Caches, valid for one state: the versions of targets a and b when pair (a, b) last had no improving
	// step (a*nT+b -> verA<<32|verB, +1 so that 0 means never), and each VM's remove gain with the version
	// (+1) of its target then.
	settled []uint64
	gain    []int
	gainVer []uint32
	gainAt  []int
}

func (ls *searcher) load(assign []int) *state {
	ls.settled = make([]uint64, ls.m.nT*ls.m.nT)
	ls.gain = make([]int, ls.m.nVM)
	ls.gainVer = make([]uint32, ls.m.nVM)
	ls.gainAt = make([]int, ls.m.nVM)
	s := newState(ls.m, ls.caps)
	for v, t := range assign {
		s.add(v, t)
	}
	return s
}

func (ls *searcher) search(assign []int) *state {
	s := ls.load(assign)
	ls.descend(s)
	return s
}

// descend applies improving moves and swaps until a whole pass finds none.
func (ls *searcher) descend(s *state) {
	order := make([]int, ls.m.nT)
	for t := range order {
		order[t] = t
	}
	for range maxPasses {
		improved := false
		ls.rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, a := range order {
			for _, b := range ls.partners(s, a) {
				for ls.improvePair(s, a, b) {
					improved = true
				}
			}
		}
		if !improved {
			return
		}
	}
}

// partners lists the targets b != a worth pairing with a: every other target when there are few, else the
// maxPartners targets holding the most MinHash neighbours of a's VMs.
func (ls *searcher) partners(s *state, a int) []int {
	var out []int
	if ls.nbrs == nil {
		for b := range ls.m.nT {
			if b != a {
				out = append(out, b)
			}
		}
		return out
	}
	links := map[int]int{}
	for _, v := range s.members[a] {
		for _, u := range ls.nbrs[v] {
			if b := s.assign[u]; b != a {
				if links[b] == 0 {
					out = append(out, b)
				}
				links[b]++
			}
		}
	}
	slices.SortFunc(out, func(x, y int) int { return cmp.Or(links[y]-links[x], x-y) })
	return out[:min(len(out), maxPartners)]
}

// removeGain is s.removeGain(v), cached until v's target changes.
func (ls *searcher) removeGain(s *state, v int) int {
	if t, ver := s.assign[v], s.version[s.assign[v]]+1; ls.gainVer[v] != ver || ls.gainAt[v] != t {
		ls.gain[v], ls.gainVer[v], ls.gainAt[v] = s.removeGain(v), ver, t
	}
	return ls.gain[v]
}

// improvePair applies the best improving move or swap between targets a and b, and reports whether it found
// one.
func (ls *searcher) improvePair(s *state, a, b int) bool {
	key := a*ls.m.nT + b
	if a > b {
		key = b*ls.m.nT + a
	}
	vers := uint64(s.version[min(a, b)])<<32 | uint64(s.version[max(a, b)]) + 1
	if ls.settled[key] == vers {
		return false
	}
	va, vb := ls.movable(s, a), ls.movable(s, b)
	da := make([]int, len(va)) // delta of moving va[i] to b
	db := make([]int, len(vb)) // delta of moving vb[j] to a
	for i, v := range va {
		da[i] = s.addCost(v, b) - ls.removeGain(s, v)
	}
	for j, u := range vb {
		db[j] = s.addCost(u, a) - ls.removeGain(s, u)
	}
	best, bv, bu := 0, -1, -1
	for i, v := range va {
		if da[i] < best && s.fits(v, b) {
			best, bv, bu = da[i], v, -1
		}
	}
	for j, u := range vb {
		if db[j] < best && s.fits(u, a) {
			best, bv, bu = db[j], -1, u
		}
	}
	for i, v := range va {
		for j, u := range vb {
			if da[i]+db[j] >= best || !s.swapFits(v, u) {
				continue
			}
			if d := da[i] + db[j] + s.swapCorrection(v, u); d < best {
				best, bv, bu = d, v, u
			}
		}
	}
	before := s.total()
	switch {
	case best == 0:
		ls.settled[key] = vers
		return false
	case bu < 0:
		s.move(bv, b)
	case bv < 0:
		s.move(bu, a)
	default:
		s.move(bv, b)
		s.move(bu, a)
	}
	if s.total() != before+best {
		panic("grouping: local search delta differs from the real change") // a bug here, never bad input
	}
	return true
}

// movable lists the VMs of target t that are not pinned, in ascending order.
func (ls *searcher) movable(s *state, t int) []int {
	var out []int
	for _, v := range s.members[t] {
		if ls.caps.pins[v] < 0 {
			out = append(out, int(v))
		}
	}
	slices.Sort(out)
	return out
}

// kick makes kickSize random feasible moves or swaps of free VMs, whatever they cost.
func (ls *searcher) kick(s *state) {
	done := 0
	for try := 0; try < kickTries && done < kickSize; try++ {
		v := ls.rng.IntN(ls.m.nVM)
		t := ls.rng.IntN(ls.m.nT)
		if ls.caps.pins[v] >= 0 || s.assign[v] == t {
			continue
		}
		if s.fits(v, t) {
			s.move(v, t)
			done++
			continue
		}
		if len(s.members[t]) == 0 {
			continue
		}
		u := int(s.members[t][ls.rng.IntN(len(s.members[t]))])
		if ls.caps.pins[u] < 0 && s.swapFits(v, u) {
			a := s.assign[v]
			s.move(v, t)
			s.move(u, a)
			done++
		}
	}
}

// randomPacking places the free VMs in random order, each on a random target where it fits; nil if one fits
// nowhere.
func randomPacking(caps *capacities, rng *rand.Rand) []int {
	assign := make([]int, len(caps.pins))
	copy(assign, caps.pins)
	l := caps.loads(assign)
	free := caps.freeVMs()
	rng.Shuffle(len(free), func(i, j int) { free[i], free[j] = free[j], free[i] })
	for _, v := range free {
		var fit []int
		for t := range l {
			if caps.fitsWith(t, l[t], v, -1) {
				fit = append(fit, t)
			}
		}
		if len(fit) == 0 {
			return nil
		}
		t := fit[rng.IntN(len(fit))]
		assign[v] = t
		l[t] = load{l[t].mem + caps.memOn(v, t), l[t].vcpus + caps.vmVCPUs[v], l[t].vms + 1}
	}
	return assign
}
