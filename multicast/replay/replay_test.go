package replay

import "testing"

func TestFilter(t *testing.T) {
	var f Filter
	steps := []struct {
		n  uint64
		ok bool
	}{
		{0, true}, {0, false}, {1, true}, {1, false}, {5, true}, {3, true}, {3, false}, {4, true},
		{WindowSize + 5, true}, {5, false}, {6, true}, {4, false}, {WindowSize + 5, false},
		{1 << 40, true}, {1<<40 - WindowSize, true}, {1<<40 - WindowSize - 1, false}, {WindowSize + 6, false},
		{1<<40 + 1, true}, {1 << 40, false},
	}
	for i, s := range steps {
		if got := f.Accept(s.n); got != s.ok {
			t.Fatalf("step %d: Accept(%d) = %v, want %v", i, s.n, got, s.ok)
		}
	}
}

func TestEveryNumberOnce(t *testing.T) {
	var f Filter
	// Numbers arrive out of order within the window: each accepted exactly once.
	seen := 0
	for base := uint64(0); base < 100000; base += 1000 {
		for i := uint64(999); ; i-- {
			if f.Accept(base + i) {
				seen++
			}
			if f.Accept(base + i) {
				t.Fatalf("%d accepted twice", base+i)
			}
			if i == 0 {
				break
			}
		}
	}
	if seen != 100000 {
		t.Fatalf("accepted %d, want 100000", seen)
	}
}
