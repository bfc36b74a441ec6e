package dedup

import (
	"slices"
	"sync"
)

// MaxCandidates bounds the held contents that share one fingerprint. Real xxhash64
// collisions are rare (about n²/2⁶⁵ among n contents); many contents with one
// fingerprint mean a guest that crafts collisions, and the bound keeps its pages from
// making lookups slow: beyond it, Add refuses, and such pages travel as literals.
const MaxCandidates = 8

// HeldIndex is the sender's view of what one target holds: the contents primed to it,
// each under its ContentID with the keyed digest of the exact bytes that were sent.
// Lookup turns page bytes into the ContentID of equal bytes, or reports that the target
// holds no such content.
//
// A fingerprint match is never taken as proof. Lookup works in two steps:
//
//  1. the page's fingerprint is looked up in an open-addressing table of the held
//     fingerprints; most pages that the target does not hold stop here, for the cost of
//     the fingerprint and one probe;
//  2. otherwise the page's digest (Digester) is computed once and compared with the digests
//     of the candidates under that fingerprint (at most MaxCandidates).
//
// So a page becomes a reference only to a content whose digest equals the page's. A guest
// that crafts fingerprint collisions gains at most one digest and MaxCandidates digest
// comparisons per page, never a wrong reference.
//
// A HeldIndex is safe for concurrent use: Lookups run in parallel, Add excludes them.
type HeldIndex struct {
	fp FingerprintFunc
	d  *Digester

	mu   sync.RWMutex
	fps  *fpTable // fingerprint -> index in held of its first candidate
	held []heldContent
}

type heldContent struct {
	dg   Digest
	id   ContentID
	next uint32 // index+1 in held of the next candidate with the same fingerprint; 0 ends
}

// NewHeldIndex returns an empty index. fp nil means XXHash. d holds the session salt.
func NewHeldIndex(fp FingerprintFunc, d *Digester) *HeldIndex {
	if fp == nil {
		fp = XXHash
	}
	return &HeldIndex{fp: fp, d: d, fps: newFPTable(0)}
}

// Grow makes room for n more contents, so that a sender that knows how many it will prime
// to the target pays for no rehashing.
func (h *HeldIndex) Grow(n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fps.grow(n)
	h.held = slices.Grow(h.held, n)
}

// Add records that the target holds content id, whose bytes have fingerprint fp and digest
// dg. Both must be computed over the bytes that were actually sent to the target, not over
// the bytes seen at scan time. It returns false, and changes nothing, when the target
// already holds a content with that digest (under this id or another one: either serves as
// a reference), or when MaxCandidates contents already share fp.
func (h *HeldIndex) Add(id ContentID, fp Fingerprint, dg Digest) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	first, inserted := h.fps.getOrInsert(fp, uint32(len(h.held)))
	if !inserted {
		n, last := 0, first
		for j := first; ; {
			e := &h.held[j]
			if e.dg == dg {
				return false
			}
			n, last = n+1, j
			if e.next == 0 {
				break
			}
			j = e.next - 1
		}
		if n >= MaxCandidates {
			return false
		}
		h.held[last].next = uint32(len(h.held)) + 1
	}
	h.held = append(h.held, heldContent{dg: dg, id: id})
	return true
}

// AddPage is Add with the fingerprint and digest computed from page, the bytes sent.
func (h *HeldIndex) AddPage(id ContentID, page []byte) bool {
	return h.Add(id, h.fp(page), h.d.Sum(page))
}

// Lookup returns the id of a held content whose bytes equal page.
func (h *HeldIndex) Lookup(page []byte) (ContentID, bool) {
	return h.LookupFP(page, h.fp(page))
}

// LookupFP is Lookup for a caller that already has the page's fingerprint (computed with
// the index's FingerprintFunc).
func (h *HeldIndex) LookupFP(page []byte, fp Fingerprint) (ContentID, bool) {
	h.mu.RLock()
	first, candidate := h.fps.get(fp)
	h.mu.RUnlock()
	if !candidate {
		return 0, false
	}
	dg := h.d.Sum(page) // outside the lock: the slow part
	h.mu.RLock()
	defer h.mu.RUnlock()
	for j := first; ; {
		e := &h.held[j]
		if e.dg == dg {
			return e.id, true
		}
		if e.next == 0 {
			return 0, false
		}
		j = e.next - 1
	}
}

// Len returns the number of contents held.
func (h *HeldIndex) Len() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.held)
}
