package report

import "github.com/vmscatter/vmscatter/dedup"

// The lower bound a run is measured against is taken over what the destinations actually loaded, not over the scan:
// memory changes between the scan and each VM's stream, and a page the guest wrote after the scan is a distinct
// content that any method must send. For every migrated VM the sender keeps its final image: for each non-zero
// page of the stream, the fingerprint of its last content and the bytes that content cost on the wire (compressed
// as it travelled, or nothing when the target read it from a local file). The bound is then each distinct content
// of those images once per target set of the transport: once in all over multicast, once per target that needs it
// over unicast, at the cheapest cost it travelled at. Pages sent more than once (the prime of a page the guest then
// overwrote, pre-copy's re-sends of dirtied pages), framing, encryption and device state are what a run spends
// above it.

// FinalImage is one VM's final image. It is owned by the VM's pump while the stream runs.
type FinalImage struct {
	target int                  // index into sender.targets
	pages  map[uint64]finalPage // (block << 48) | page number
}

// finalPage is one page's last content.
type finalPage struct {
	fp    dedup.Fingerprint
	cost  uint32 // wire bytes of the content as it travelled
	local bool   // the target produced it from a file of its own: it crossed no link
	ref   uint32 // 1 + the content id the stream referenced; 0 for a literal
}

func NewFinalImage(target int) *FinalImage {
	return &FinalImage{target: target, pages: map[uint64]finalPage{}}
}

func pageKey(block uint16, offset uint64) uint64 { return uint64(block)<<48 | offset/dedup.PageSize }

// Zero records that a page ended as a zero (or fill) page: it costs the bound nothing.
func (f *FinalImage) Zero(block uint16, offset uint64) { delete(f.pages, pageKey(block, offset)) }

// Literal records that a page's content is now fp, sent in the stream at cost bytes.
func (f *FinalImage) Literal(block uint16, offset uint64, fp dedup.Fingerprint, cost uint32) {
	f.pages[pageKey(block, offset)] = finalPage{fp: fp, cost: cost}
}

// Ref records that a page's content is now held content id, which cost cost bytes to bring (local: none, the
// target read it from its own files).
func (f *FinalImage) Ref(block uint16, offset uint64, fp dedup.Fingerprint, id dedup.ContentID, cost uint32, local bool) {
	f.pages[pageKey(block, offset)] = finalPage{fp: fp, cost: cost, local: local, ref: uint32(id) + 1}
}

// FinalBound is the bound over a set of final images.
type FinalBound struct {
	DistinctPages int64 // distinct non-zero contents over all images
	// Multicast and Unicast are the bound in compressed bytes for each transport: each distinct content that a
	// target needed and did not have locally, once in all, or once per target that needed it.
	Multicast, Unicast int64
	// PrimeUnused is what the prime spent, in compressed bytes counted once per content, on contents that no
	// final image references: the guests overwrote every page that held them before its stream went by.
	PrimeUnused int64
}

// need is what one content costs a target set: local when every target that needed it had it locally, else the
// cheapest wire cost it travelled at.
type need struct {
	cost  uint32
	local bool
}

func (n need) merge(o need) need {
	switch {
	case o.local:
		return n
	case n.local:
		return o
	}
	return need{cost: min(n.cost, o.cost)}
}

// ComputeFinalBound folds the images into the bound. primeCosts is what each primed content cost, by content id
// (0: not primed).
func ComputeFinalBound(images []*FinalImage, primeCosts []uint32) FinalBound {
	perTarget := map[int]map[dedup.Fingerprint]need{}
	used := make([]bool, len(primeCosts))
	for _, img := range images {
		if img == nil {
			continue
		}
		t := perTarget[img.target]
		if t == nil {
			t = map[dedup.Fingerprint]need{}
			perTarget[img.target] = t
		}
		for _, p := range img.pages {
			if p.ref > 0 && int(p.ref-1) < len(used) {
				used[p.ref-1] = true
			}
			n := need{cost: p.cost, local: p.local}
			if have, ok := t[p.fp]; ok {
				n = have.merge(n)
			}
			t[p.fp] = n
		}
	}
	all := map[dedup.Fingerprint]need{}
	for _, t := range perTarget {
		for fp, n := range t {
			if have, ok := all[fp]; ok {
				n = have.merge(n)
			}
			all[fp] = n
		}
	}
	b := FinalBound{DistinctPages: int64(len(all))}
	for id, c := range primeCosts {
		if !used[id] {
			b.PrimeUnused += int64(c)
		}
	}
	for _, n := range all {
		if !n.local {
			b.Multicast += int64(n.cost)
		}
	}
	for _, t := range perTarget {
		for fp, n := range t {
			if !n.local {
				b.Unicast += int64(min(n.cost, all[fp].cost))
			}
		}
	}
	return b
}
