package pageset

import (
	"bytes"
	"errors"
	"math"
	"testing"
)

func newSet(t *testing.T, pages int, p Params) *Set {
	t.Helper()
	s, err := New(make([]byte, pages*PageSize), p)
	if err != nil {
		t.Fatal(err)
	}
	s.Fill()
	return s
}

func checkAll(s *Set) []error {
	var errs []error
	for i := 0; i < s.Len(); i++ {
		if err := s.Check(i); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

func TestFillDirtyVerify(t *testing.T) {
	s := newSet(t, 64, Params{Seed: 7, Salt: 1})
	if errs := checkAll(s); len(errs) != 0 {
		t.Fatalf("fresh set: %v", errs)
	}
	for i := 0; i < 64; i += 3 {
		s.Dirty(i)
	}
	s.Dirty(3)
	if errs := checkAll(s); len(errs) != 0 {
		t.Fatalf("after dirtying: %v", errs)
	}
	if s.Gen(3) != 2 || s.Gen(1) != 0 {
		t.Fatalf("generations: page 3 %d, page 1 %d", s.Gen(3), s.Gen(1))
	}
}

func TestCorruptionDetected(t *testing.T) {
	s := newSet(t, 8, Params{Seed: 7, Salt: 1})
	stale := bytes.Clone(s.Page(2))
	s.Dirty(2)
	cases := []struct {
		name    string
		corrupt func()
		page    int
		reason  string
	}{
		{"body bit flip", func() { s.Page(5)[1000] ^= 0x10 }, 5, "sum"},
		{"zeroed page", func() { clear(s.Page(6)) }, 6, "magic"},
		{"page from elsewhere", func() { copy(s.Page(4), s.Page(1)) }, 4, "index"},
		{"stale generation", func() { copy(s.Page(2), stale) }, 2, "gen"},
	}
	for _, c := range cases {
		c.corrupt()
		errs := checkAll(s)
		if len(errs) != 1 {
			t.Fatalf("%s: want one error, got %v", c.name, errs)
		}
		var pe *PageError
		if !errors.As(errs[0], &pe) || pe.Page != c.page || pe.Reason != c.reason {
			t.Fatalf("%s: got %v, want page %d reason %s", c.name, errs[0], c.page, c.reason)
		}
		s.Repair(c.page)
		if errs := checkAll(s); len(errs) != 0 {
			t.Fatalf("%s: after repair: %v", c.name, errs)
		}
	}
}

func TestSharingBetweenGuests(t *testing.T) {
	const pages = 400
	a := newSet(t, pages, Params{Seed: 7, Salt: 100, Private: 0.25})
	b := newSet(t, pages, Params{Seed: 7, Salt: 200, Private: 0.25})
	other := newSet(t, pages, Params{Seed: 8, Salt: 100})
	private := 0
	for i := 0; i < pages; i++ {
		same := bytes.Equal(a.Page(i), b.Page(i))
		if a.p.IsPrivate(i) {
			private++
			if same {
				t.Fatalf("private page %d is equal in two guests", i)
			}
		} else if !same {
			t.Fatalf("shared page %d differs between two guests with the same seed", i)
		}
		if bytes.Equal(a.Page(i), other.Page(i)) {
			t.Fatalf("page %d equal under different seeds", i)
		}
	}
	if private < pages/8 || private > pages/2 {
		t.Fatalf("%d of %d pages private, want about a quarter", private, pages)
	}
	a.Dirty(0)
	b.Dirty(0)
	if bytes.Equal(a.Page(0), b.Page(0)) {
		t.Fatal("dirtied pages of two guests with distinct salts are equal")
	}
	// WritePage lets a host compute a guest's page without the guest.
	want := make([]byte, PageSize)
	WritePage(want, Params{Seed: 7, Salt: 100, Private: 0.25}, 0, 1)
	if !bytes.Equal(want, a.Page(0)) {
		t.Fatal("WritePage differs from the set's own page")
	}
}

func TestDistinctPagesWithinAGuest(t *testing.T) {
	s := newSet(t, 256, Params{Seed: 1})
	seen := map[string]int{}
	for i := 0; i < s.Len(); i++ {
		if j, dup := seen[string(s.Page(i))]; dup {
			t.Fatalf("pages %d and %d are equal", j, i)
		}
		seen[string(s.Page(i))] = i
	}
}

func TestNewRejects(t *testing.T) {
	for _, n := range []int{0, 100, PageSize + 1} {
		if _, err := New(make([]byte, n), Params{}); !errors.Is(err, ErrLength) {
			t.Errorf("len %d: got %v, want ErrLength", n, err)
		}
	}
	for _, f := range []float64{-0.1, 1.5, math.NaN()} {
		if _, err := New(make([]byte, PageSize), Params{Private: f}); err == nil {
			t.Errorf("private %v accepted", f)
		}
	}
}
