package grouping

import "slices"

// greedy is the VMScatter (VEE 2013) heuristic. The pinned VMs go first. Then, repeatedly, it takes the open
// target with the most free memory and fills it: the first VM is the one that shares the most pages with other
// VMs, each next one the VM sharing the most pages with those already there (ties: more sharing overall, then
// the lower index). A target closes when no remaining VM fits.
//
// Filling one target at a time can strand a large VM that fits nowhere at the end. Then greedy runs again,
// taking a VM only if the rest still packs (best fit decreasing); if even that fails it returns the feasible
// packing it was given.
func greedy(m *model, caps *capacities, packing []int) []int {
	return greedyWith(m, caps, packing, mostShared)
}

// pickRule says which VM greedy adds next to a target: the one with the largest key. score is the number of
// the VM's pages already present on the target.
type pickRule int

const (
	// mostShared is VMScatter's rule: the most pages shared with the VMs already there.
	mostShared pickRule = iota
	// leastNew adds the VM that brings the fewest shared pages not yet there (score - (shared - score)).
	leastNew
)

func (r pickRule) key(m *model, score []int, v int) int {
	if r == leastNew {
		return 2*score[v] - m.shared[v]
	}
	return score[v]
}

// greedyWith is greedy with a given rule for the next VM.
func greedyWith(m *model, caps *capacities, packing []int, rule pickRule) []int {
	for _, guarded := range []bool{false, true} {
		if assign, ok := greedyFill(m, caps, guarded, rule); ok {
			return assign
		}
	}
	return slices.Clone(packing)
}

func greedyFill(m *model, caps *capacities, guarded bool, rule pickRule) ([]int, bool) {
	s := newState(m, caps)
	for v, t := range caps.pins {
		if t >= 0 {
			s.add(v, t)
		}
	}
	left := caps.freeVMs() // unplaced free VMs, in packing order
	score := make([]int, m.nVM)
	closed := make([]bool, m.nT)
	for len(left) > 0 {
		t := -1
		for u := range m.nT {
			if !closed[u] && (t < 0 || freeMem(caps, s, u) > freeMem(caps, s, t)) {
				t = u
			}
		}
		if t < 0 {
			return nil, false
		}
		closed[t] = true
		// score[v] = pages of v already present on t. It grows as classes appear on t.
		clear(score)
		row := s.row(t)
		for k, n := range row {
			if n > 0 {
				for _, h := range m.holders[k] {
					score[h] += int(m.weight[k])
				}
			}
		}
		better := func(v, w int) bool { // v is a better pick than w
			if len(s.members[t]) == 0 { // the first VM: the most sharing overall
				return m.shared[v] > m.shared[w] || m.shared[v] == m.shared[w] && v < w
			}
			if kv, kw := rule.key(m, score, v), rule.key(m, score, w); kv != kw {
				return kv > kw
			}
			if m.shared[v] != m.shared[w] {
				return m.shared[v] > m.shared[w]
			}
			return v < w
		}
		for len(left) > 0 {
			pick := -1
			for i, v := range left {
				if s.fits(v, t) && (pick < 0 || better(v, left[pick])) {
					pick = i
				}
			}
			if pick >= 0 && guarded && !restPacks(caps, s, left, pick, t) {
				pick = guardedPick(caps, s, left, t, better)
			}
			if pick < 0 {
				break
			}
			v := left[pick]
			left = slices.Delete(left, pick, pick+1)
			for _, k := range m.classes[v] {
				if row[k] == 0 {
					for _, h := range m.holders[k] {
						score[h] += int(m.weight[k])
					}
				}
			}
			s.add(v, t)
		}
	}
	return s.assign, true
}

func freeMem(caps *capacities, s *state, t int) uint64 {
	return caps.p.Targets[t].MemBytes - s.load[t].mem
}

// restPacks reports whether, with left[i] placed on t, the other VMs of left still pack.
func restPacks(caps *capacities, s *state, left []int, i, t int) bool {
	l := slices.Clone(s.load)
	v := left[i]
	l[t] = load{l[t].mem + caps.memOn(v, t), l[t].vcpus + caps.vmVCPUs[v], l[t].vms + 1}
	rest := make([]int, 0, len(left)-1)
	rest = append(append(rest, left[:i]...), left[i+1:]...)
	return caps.bestFitDecreasing(make([]int, len(caps.pins)), l, rest) < 0
}

// guardedPick returns the index in left of the best VM that fits on t and leaves the rest packable, or -1.
func guardedPick(caps *capacities, s *state, left []int, t int, better func(v, w int) bool) int {
	idx := make([]int, 0, len(left))
	for i, v := range left {
		if s.fits(v, t) {
			idx = append(idx, i)
		}
	}
	slices.SortFunc(idx, func(i, j int) int {
		if better(left[i], left[j]) {
			return -1
		}
		return 1
	})
	for _, i := range idx {
		if restPacks(caps, s, left, i, t) {
			return i
		}
	}
	return -1
}
