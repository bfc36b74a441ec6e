package dedup

import (
	"encoding/binary"
	"slices"
	"sync"
)

// HeldIndex is the sender's view of what one target holds: the contents primed to it,
// each under its ContentID with the salted digest of the exact bytes that were sent.
// Lookup turns page bytes into the ContentID of equal bytes, or reports that the target
// holds no such content.
//
// A fingerprint match is never taken as proof. Lookup works in two steps:
//
//  1. the page's fingerprint is looked up in a set of the held fingerprints; most pages
//     that the target does not hold stop here, for the cost of one fingerprint;
//  2. otherwise the page's salted SHA-256 is computed and looked up in a table of held
//     digests, keyed by the digest's first 8 bytes and confirmed on all 32.
//
// So a page becomes a reference only to a content whose digest equals the page's, and a
// guest that crafts fingerprint collisions gains one SHA-256 per crafted page, never a
// wrong reference, and no longer lookups: the candidates are found by digest, not by
// walking the colliding fingerprints.
//
// A HeldIndex is safe for concurrent use: Lookups run in parallel, Add excludes them.
type HeldIndex struct {
	fp FingerprintFunc
	d  *Digester

	mu       sync.RWMutex
	fps      *fpTable // set of the fingerprints of held contents
	byDigest *fpTable // digest prefix -> index into held
	held     []heldContent
}

type heldContent struct {
	dg Digest
	id ContentID
}

// NewHeldIndex returns an empty index. fp nil means XXHash. d holds the session salt.
func NewHeldIndex(fp FingerprintFunc, d *Digester) *HeldIndex {
	if fp == nil {
		fp = XXHash
	}
	return &HeldIndex{fp: fp, d: d, fps: newFPTable(0), byDigest: newFPTable(0)}
}

func digestKey(dg *Digest) Fingerprint { return Fingerprint(binary.LittleEndian.Uint64(dg[:8])) }

// Add records that the target holds content id, whose bytes have fingerprint fp and digest
// dg. Both must be computed over the bytes that were actually sent to the target, not over
// the bytes seen at scan time. It returns false, and changes nothing, when the target
// already holds a content with that digest (under this id or another one: either serves as
// a reference) or, with odds of 2^-64 per pair, one whose digest shares its first 8 bytes.
func (h *HeldIndex) Add(id ContentID, fp Fingerprint, dg Digest) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, inserted := h.byDigest.getOrInsert(digestKey(&dg), uint32(len(h.held))); !inserted {
		return false
	}
	h.held = append(h.held, heldContent{dg: dg, id: id})
	h.fps.getOrInsert(fp, 0)
	return true
}

// Grow makes room for n more contents, so that a sender that knows how many it will prime
// to the target pays for no rehashing.
func (h *HeldIndex) Grow(n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fps.grow(n)
	h.byDigest.grow(n)
	h.held = slices.Grow(h.held, n)
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
	_, candidate := h.fps.get(fp)
	h.mu.RUnlock()
	if !candidate {
		return 0, false
	}
	dg := h.d.Sum(page)
	h.mu.RLock()
	defer h.mu.RUnlock()
	i, ok := h.byDigest.get(digestKey(&dg))
	if !ok || h.held[i].dg != dg {
		return 0, false
	}
	return h.held[i].id, true
}

// Len returns the number of contents held.
func (h *HeldIndex) Len() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.held)
}
