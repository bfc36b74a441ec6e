package grouping

import (
	"slices"
	"testing"
)

// Two targets alike in capacity and load are interchangeable to the searches only if every VM may go to both. These
// call the searches directly: Place's heuristics usually find the answer before a search would go wrong.
func twinProblem() (Problem, *capacities) {
	p := Problem{
		Targets:     []Target{{Name: "A", MemBytes: 4 << 30}, {Name: "B", MemBytes: 4 << 30}},
		VMs:         []VM{{Name: "a", MemBytes: 1 << 30, Allowed: []string{"B"}}, {Name: "b", MemBytes: 1 << 30}},
		Contents:    [][]uint32{{0, 1, 2, 3}, {0, 1, 2, 3}},
		NumContents: 4,
	}
	pins, allowed, err := p.validate()
	if err != nil {
		panic(err)
	}
	return p, newCapacities(p, pins, allowed)
}

func TestBacktrackTriesTargetsThatAdmitOthers(t *testing.T) {
	_, caps := twinProblem()
	assign := []int{-1, -1}
	budget := 1000
	if !caps.backtrack(assign, make([]load, 2), []int{0, 1}, 0, &budget) || assign[0] != 1 {
		t.Fatalf("backtrack: %v", assign)
	}
}

func TestExactOpensTargetsThatAdmitOthers(t *testing.T) {
	p, caps := twinProblem()
	m := newModel(p)
	// From a poor incumbent (a and b apart), the optimum has both on B.
	got := exact(m, caps, []int{1, 0})
	if !slices.Equal(got, []int{1, 1}) {
		t.Fatalf("exact: %v, fabric %d", got, m.fabric(got))
	}
}
