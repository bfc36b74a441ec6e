package grouping

import "slices"

// model is the compressed form of a Problem that the algorithms work on.
//
// Contents held by exactly the same set of VMs behave identically under every placement, so they are merged
// into one class whose weight is their number. A content held by a single VM costs one fabric page wherever
// that VM goes: such contents are left out of the classes and counted once in private. So
//
//	fabric(assign) = private + Σ_targets Σ_{classes present on the target} weight.
//
// On synthetic and real sharing maps the classes are far fewer than the contents, and every delta evaluation
// walks a VM's classes, not its pages.
type model struct {
	nVM, nT  int
	classes  [][]int32 // per VM: the ids of the classes it holds, ascending
	weight   []int32   // per class: the number of contents in it
	holders  [][]int32 // per class: the VMs holding it, ascending
	private  int       // contents held by exactly one VM
	source   int       // contents held by at least one VM
	shared   []int     // per VM: Σ weight of its classes (its pages that some other VM also holds)
	vmWeight []int     // per VM: its number of contents
}

func newModel(p Problem) *model {
	n := len(p.VMs)
	m := &model{nVM: n, nT: len(p.Targets), classes: make([][]int32, n), shared: make([]int, n), vmWeight: make([]int, n)}
	// Inverted index in CSR form: holders of content c are idx[off[c]:off[c+1]], ascending VM order.
	off := make([]int, p.NumContents+1)
	for v, cs := range p.Contents {
		m.vmWeight[v] = len(cs)
		for _, c := range cs {
			off[c+1]++
		}
	}
	for c := 0; c < p.NumContents; c++ {
		if off[c+1] > 0 {
			m.source++
			if off[c+1] == 1 {
				m.private++
			}
		}
		off[c+1] += off[c]
	}
	idx := make([]int32, off[p.NumContents])
	fill := slices.Clone(off[:p.NumContents])
	for v, cs := range p.Contents {
		for _, c := range cs {
			idx[fill[c]] = int32(v)
			fill[c]++
		}
	}
	// Merge contents with equal holder sets into classes.
	byHash := make(map[uint64][]int32) // hash of the holder set -> class ids with that hash
	for c := 0; c < p.NumContents; c++ {
		hs := idx[off[c]:off[c+1]]
		if len(hs) < 2 {
			continue
		}
		h := uint64(14695981039346656037)
		for _, v := range hs {
			h = (h ^ uint64(v)) * 1099511628211
		}
		k := int32(-1)
		for _, cand := range byHash[h] {
			if slices.Equal(m.holders[cand], hs) {
				k = cand
				break
			}
		}
		if k < 0 {
			k = int32(len(m.weight))
			m.weight = append(m.weight, 0)
			m.holders = append(m.holders, hs)
			byHash[h] = append(byHash[h], k)
		}
		m.weight[k]++
	}
	for k, hs := range m.holders {
		for _, v := range hs {
			m.classes[v] = append(m.classes[v], int32(k))
			m.shared[v] += int(m.weight[k])
		}
	}
	return m
}

// fabric is the objective of a complete assignment.
func (m *model) fabric(assign []int) int {
	s := newState(m, nil)
	for v, t := range assign {
		s.add(v, t)
	}
	return s.total()
}

// state is a (partial) assignment with, per target, how many of its VMs hold each class. It makes the cost of
// moving one VM O(its classes).
type state struct {
	m       *model
	caps    *capacities
	assign  []int     // VM -> target, -1 when unplaced
	cnt     []uint16  // cnt[t*K+k]: VMs on target t holding class k
	members [][]int32 // per target: its VMs, in no particular order
	cost    int       // Σ over targets of the weight of the classes present there
	load    []load    // per target: what its VMs use
	version []uint32  // per target: bumped whenever its VMs change
}

// load is what the VMs placed on one target use.
type load struct {
	mem   uint64
	vcpus int
	vms   int
}

func newState(m *model, caps *capacities) *state {
	s := &state{
		m:       m,
		caps:    caps,
		assign:  make([]int, m.nVM),
		cnt:     make([]uint16, m.nT*len(m.weight)),
		members: make([][]int32, m.nT),
		load:    make([]load, m.nT),
		version: make([]uint32, m.nT),
	}
	for v := range s.assign {
		s.assign[v] = -1
	}
	return s
}

// total is the fabric pages of the current assignment.
func (s *state) total() int { return s.m.private + s.cost }

func (s *state) row(t int) []uint16 {
	k := len(s.m.weight)
	return s.cnt[t*k : (t+1)*k]
}

// add places unplaced VM v on target t.
func (s *state) add(v, t int) {
	row := s.row(t)
	for _, k := range s.m.classes[v] {
		if row[k] == 0 {
			s.cost += int(s.m.weight[k])
		}
		row[k]++
	}
	s.assign[v] = t
	s.version[t]++
	s.members[t] = append(s.members[t], int32(v))
	if s.caps != nil {
		s.load[t].mem += s.caps.memOn(v, t)
		s.load[t].vcpus += s.caps.vmVCPUs[v]
	}
	s.load[t].vms++
}

// remove takes VM v off its target.
func (s *state) remove(v int) {
	t := s.assign[v]
	row := s.row(t)
	for _, k := range s.m.classes[v] {
		row[k]--
		if row[k] == 0 {
			s.cost -= int(s.m.weight[k])
		}
	}
	s.assign[v] = -1
	s.version[t]++
	ms := s.members[t]
	i := slices.Index(ms, int32(v))
	ms[i] = ms[len(ms)-1]
	s.members[t] = ms[:len(ms)-1]
	if s.caps != nil {
		s.load[t].mem -= s.caps.memOn(v, t)
		s.load[t].vcpus -= s.caps.vmVCPUs[v]
	}
	s.load[t].vms--
}

func (s *state) move(v, t int) {
	s.remove(v)
	s.add(v, t)
}

// removeGain is what taking VM v off its target saves: the weight of its classes no other VM there holds.
func (s *state) removeGain(v int) int {
	row := s.row(s.assign[v])
	g := 0
	for _, k := range s.m.classes[v] {
		if row[k] == 1 {
			g += int(s.m.weight[k])
		}
	}
	return g
}

// addCost is what placing VM v on target t (where it is not) costs: the weight of its classes absent there.
func (s *state) addCost(v, t int) int {
	row := s.row(t)
	c := 0
	for _, k := range s.m.classes[v] {
		if row[k] == 0 {
			c += int(s.m.weight[k])
		}
	}
	return c
}

// swapCorrection is what must be added to the sum of the two separate move deltas when VM v (on a) and VM u
// (on b) trade places: a class both hold stays present on both targets, while the separate deltas count it as
// removed wherever v or u held it alone.
func (s *state) swapCorrection(v, u int) int {
	ra, rb := s.row(s.assign[v]), s.row(s.assign[u])
	cv, cu := s.m.classes[v], s.m.classes[u]
	corr := 0
	for i, j := 0, 0; i < len(cv) && j < len(cu); {
		switch {
		case cv[i] < cu[j]:
			i++
		case cv[i] > cu[j]:
			j++
		default:
			k := cv[i]
			if ra[k] == 1 {
				corr += int(s.m.weight[k])
			}
			if rb[k] == 1 {
				corr += int(s.m.weight[k])
			}
			i++
			j++
		}
	}
	return corr
}

// fits reports whether VM v can join target t given what is there now, ignoring v itself if it is there.
func (s *state) fits(v, t int) bool {
	return s.caps.fitsWith(t, s.load[t], v, -1)
}

// swapFits reports whether VM v (on a) and VM u (on b) can trade places.
func (s *state) swapFits(v, u int) bool {
	a, b := s.assign[v], s.assign[u]
	return s.caps.fitsWith(a, s.load[a], u, v) && s.caps.fitsWith(b, s.load[b], v, u)
}
