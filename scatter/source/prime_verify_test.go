package source

import (
	"bytes"
	"testing"

	"github.com/vmscatter/vmscatter/dedup"
)

// TestDroppedGroupContentNeverReferenced: a content a target's receiver dropped (PRIME_ACK's missing: a forgery
// took its place, its digest did not match, or its store had no room) is left out of the target's held index, so no page ever becomes a
// reference to it; the group's other contents are held; a missing id the target was never sent changes nothing.
func TestDroppedGroupContentNeverReferenced(t *testing.T) {
	var salt [32]byte
	salt[5] = 1
	d := dedup.NewDigester(salt)
	pages := [][]byte{bytes.Repeat([]byte{1}, dedup.PageSize), bytes.Repeat([]byte{2}, dedup.PageSize), bytes.Repeat([]byte{3}, dedup.PageSize)}
	sm := &dedup.SharingMap{}
	p := &primer{sm: sm, held: []*dedup.HeldIndex{dedup.NewHeldIndex(dedup.XXHash, d)},
		digests: make([]dedup.Digest, len(pages)), sentTo: [][]dedup.ContentID{{0, 1, 2}}}
	for i, pg := range pages {
		sm.Contents = append(sm.Contents, dedup.Content{FP: dedup.XXHash(pg), Count: 1})
		p.digests[i] = d.Sum(pg)
	}
	if left := p.holdSent(0, []uint32{1, 77}); left != 1 {
		t.Fatalf("left out %d contents, want 1 (77 was never sent)", left)
	}
	if _, ok := p.held[0].Lookup(pages[1]); ok {
		t.Fatal("the dropped content 1 is referenced")
	}
	for _, i := range []int{0, 2} {
		if id, ok := p.held[0].Lookup(pages[i]); !ok || int(id) != i {
			t.Fatalf("content %d: lookup %d %v", i, id, ok)
		}
	}
}
