package grouping

import "slices"

// Limits of the exact algorithm.
const (
	ExactMaxVMs     = 12
	ExactMaxTargets = 4
)

// exact is a depth-first branch and bound over the VMs (pinned first, then by shared pages, descending), each
// tried on every target where it fits, the cheapest first. It starts from the incumbent (ours) and prunes a
// partial placement whose lower bound reaches the best cost so far. The bound is the cost so far, plus the
// weight of every class no placed VM holds yet (some target must get it), plus, for the unplaced VM that is
// worst off, the least weight of already placed classes it would add to any target (this VM goes somewhere; at
// least that much is added there on top of today's cost, and the classes differ from those of the second term).
//
// Symmetry: targets with the same capacities, no pinned VM and the same VMs allowed are interchangeable, so a VM
// only opens the first empty one of them.
func exact(m *model, caps *capacities, incumbent []int) []int {
	b := &bnb{m: m, caps: caps, s: newState(m, caps), best: slices.Clone(incumbent), bestCost: m.fabric(incumbent)}
	b.missing = make([]int, len(m.weight)) // per class: how many of its holders are unplaced
	for k, hs := range m.holders {
		b.missing[k] = len(hs)
	}
	b.absent = 0
	for _, w := range m.weight {
		b.absent += int(w)
	}
	var order []int
	for v, t := range caps.pins {
		if t >= 0 {
			order = append(order, v)
		}
	}
	free := caps.freeVMs()
	slices.SortStableFunc(free, func(a, c int) int { return m.shared[c] - m.shared[a] })
	b.order = append(order, free...)
	b.twin = make([]int, m.nT) // first target interchangeable with t
	pinned := make([]bool, m.nT)
	for _, t := range caps.pins {
		if t >= 0 {
			pinned[t] = true
		}
	}
	for t := range b.twin {
		b.twin[t] = t
		for u := range t {
			tu, tt := caps.p.Targets[u], caps.p.Targets[t]
			if !pinned[u] && !pinned[t] && tu.MemBytes == tt.MemBytes && tu.VCPUSlots == tt.VCPUSlots && tu.MaxVMs == tt.MaxVMs && tu.PerVMBytes == tt.PerVMBytes &&
				caps.sameAdmission(u, t) {
				b.twin[t] = b.twin[u]
				break
			}
		}
	}
	b.branch(0)
	return b.best
}

type bnb struct {
	m        *model
	caps     *capacities
	s        *state
	order    []int
	twin     []int
	missing  []int // per class: holders not yet placed
	absent   int   // weight of the classes no placed VM holds
	best     []int
	bestCost int
}

func (b *bnb) place(v, t int) {
	for _, k := range b.m.classes[v] {
		if b.missing[k] == len(b.m.holders[k]) {
			b.absent -= int(b.m.weight[k])
		}
		b.missing[k]--
	}
	b.s.add(v, t)
}

func (b *bnb) unplace(v int) {
	b.s.remove(v)
	for _, k := range b.m.classes[v] {
		b.missing[k]++
		if b.missing[k] == len(b.m.holders[k]) {
			b.absent += int(b.m.weight[k])
		}
	}
}

func (b *bnb) branch(i int) {
	if i == len(b.order) {
		if c := b.s.total(); c < b.bestCost {
			b.best, b.bestCost = slices.Clone(b.s.assign), c
		}
		return
	}
	if b.bound(i) >= b.bestCost {
		return
	}
	v := b.order[i]
	type option struct{ t, cost int }
	var opts []option
	for t := range b.m.nT {
		if p := b.caps.pins[v]; p >= 0 && p != t {
			continue
		}
		if !b.s.fits(v, t) || b.skipTwin(t) {
			continue
		}
		opts = append(opts, option{t, b.s.addCost(v, t)})
	}
	slices.SortStableFunc(opts, func(x, y option) int { return x.cost - y.cost })
	for _, o := range opts {
		b.place(v, o.t)
		b.branch(i + 1)
		b.unplace(v)
	}
}

// skipTwin reports whether target t is empty and an interchangeable earlier target is empty too.
func (b *bnb) skipTwin(t int) bool {
	if len(b.s.members[t]) > 0 {
		return false
	}
	for u := b.twin[t]; u < t; u++ {
		if b.twin[u] == b.twin[t] && len(b.s.members[u]) == 0 {
			return true
		}
	}
	return false
}

// bound is a lower bound on the cost of any completion of the placement of order[:i].
func (b *bnb) bound(i int) int {
	lb := b.s.total() + b.absent
	worst := 0
	for _, v := range b.order[i:] {
		least := -1
		for t := range b.m.nT {
			if p := b.caps.pins[v]; p >= 0 && p != t || !b.caps.mayGo(v, t) {
				continue
			}
			add := 0
			row := b.s.row(t)
			for _, k := range b.m.classes[v] {
				if row[k] == 0 && b.missing[k] < len(b.m.holders[k]) {
					add += int(b.m.weight[k])
				}
			}
			if least < 0 || add < least {
				least = add
			}
		}
		worst = max(worst, least)
	}
	return lb + worst
}
