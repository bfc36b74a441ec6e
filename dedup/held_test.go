package dedup

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

func testDigester() *Digester {
	var salt [32]byte
	copy(salt[:], "vmscatter dedup test salt 000001")
	return NewDigester(salt)
}

// TestHeldIndexCollisions is the collision test: with a fingerprint of the first byte
// only, most pages collide, and each held page has a twin that differs in one byte past the
// first. Lookup must never return an id whose bytes differ from the page, and must find
// every page that Add accepted.
func TestHeldIndexCollisions(t *testing.T) {
	weak := func(p []byte) Fingerprint { return Fingerprint(p[0]) }
	r := rand.New(rand.NewPCG(7, 7))
	newPage := func() []byte {
		p := make([]byte, PageSize)
		p[0] = byte(r.IntN(64)) // 64 fingerprints in all
		for i := 1; i < len(p); i++ {
			p[i] = byte(r.IntN(4))
		}
		return p
	}
	h := NewHeldIndex(weak, testDigester())
	held := map[ContentID][]byte{}
	refused := 0
	var probes [][]byte
	for i := range 3000 {
		p := newPage()
		if i%3 == 0 {
			id := ContentID(i)
			if h.AddPage(id, p) {
				held[id] = p
			} else {
				refused++ // MaxCandidates pages already share p's fingerprint
			}
			twin := bytes.Clone(p)
			twin[1+r.IntN(PageSize-1)] ^= 0x80
			probes = append(probes, p, twin)
		} else {
			probes = append(probes, p)
		}
	}
	found := 0
	for _, p := range probes {
		id, ok := h.Lookup(p)
		if !ok {
			continue
		}
		if !bytes.Equal(held[id], p) {
			t.Fatalf("Lookup returned id %d whose bytes differ from the page", id)
		}
		found++
	}
	if found != len(held) || h.Len() != len(held) || len(held) != 64*MaxCandidates || refused != 1000-len(held) {
		t.Fatalf("found %d of %d held pages (Len %d, refused %d)", found, len(held), h.Len(), refused)
	}
}

func TestHeldIndexCandidateBound(t *testing.T) {
	same := func([]byte) Fingerprint { return 1 }
	h := NewHeldIndex(same, testDigester())
	for i := range 2 * MaxCandidates {
		if got := h.AddPage(ContentID(i), pageOf(i+1)); got != (i < MaxCandidates) {
			t.Fatalf("AddPage %d = %v", i, got)
		}
	}
	for i := range 2 * MaxCandidates {
		id, ok := h.Lookup(pageOf(i + 1))
		if ok != (i < MaxCandidates) || ok && id != ContentID(i) {
			t.Fatalf("Lookup %d = %d, %v", i, id, ok)
		}
	}
}

func TestHeldIndexAddTwice(t *testing.T) {
	h := NewHeldIndex(nil, testDigester())
	p := pageOf(3)
	if !h.AddPage(5, p) || h.AddPage(5, p) || h.AddPage(6, p) {
		t.Fatal("a second Add of the same bytes must be refused")
	}
	if id, ok := h.Lookup(p); !ok || id != 5 {
		t.Fatalf("Lookup = %d, %v", id, ok)
	}
	// A wrong digest under the right fingerprint never matches.
	q := pageOf(4)
	h.Add(9, XXHash(q), Digest{1, 2, 3})
	if id, ok := h.Lookup(q); ok {
		t.Fatalf("Lookup matched id %d with a wrong digest", id)
	}
}

func TestHeldIndexOtherSaltNeverMatches(t *testing.T) {
	h := NewHeldIndex(nil, testDigester())
	p := pageOf(8)
	other := NewDigester([32]byte{1})
	h.Add(1, XXHash(p), other.Sum(p))
	if _, ok := h.Lookup(p); ok {
		t.Fatal("a digest under another salt matched")
	}
}
