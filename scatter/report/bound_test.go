package report

import "testing"

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
