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
//
// It costs a fixed 16 bytes per page (finalPage), in chunks of finalChunk pages allocated when a page of theirs first
// ends non-zero: a block's zero stretches that never held data cost nothing, and no page costs more. The
// bookkeeping of a 16 GiB guest is at most 64 MiB (TestFinalImageBytesPerPage measures it).
type FinalImage struct {
	target int            // index into sender.targets
	blocks [][]*pageChunk // by block, by page number / finalChunk
}

// finalChunk is the pages of one allocation of a FinalImage.
const finalChunk = 4096

type pageChunk [finalChunk]finalPage

// finalPage is one page's last content, 16 bytes.
type finalPage struct {
	fp   dedup.Fingerprint
	ref  uint32 // 1 + the content id the stream referenced; 0 for a literal
	cost uint32 // wire bytes of the content as it travelled (costMask), and the flags below
}

const (
	pagePresent = 1 << 31 // the page ended non-zero
	pageLocal   = 1 << 30 // the target produced it from a file of its own: it crossed no link
	costMask    = pageLocal - 1
)

func (p finalPage) present() bool { return p.cost&pagePresent != 0 }
func (p finalPage) local() bool   { return p.cost&pageLocal != 0 }
func (p finalPage) bytes() uint32 { return p.cost & costMask }

func NewFinalImage(target int) *FinalImage {
	return &FinalImage{target: target}
}

// page returns the entry of a page, allocating its chunk when create is set; nil if absent and not created.
func (f *FinalImage) page(block uint16, offset uint64, create bool) *finalPage {
	n := offset / dedup.PageSize
	c := int(n / finalChunk)
	if int(block) >= len(f.blocks) {
		if !create {
			return nil
		}
		f.blocks = append(f.blocks, make([][]*pageChunk, int(block)+1-len(f.blocks))...)
	}
	chunks := f.blocks[block]
	if c >= len(chunks) {
		if !create {
			return nil
		}
		chunks = append(chunks, make([]*pageChunk, c+1-len(chunks))...)
		f.blocks[block] = chunks
	}
	if chunks[c] == nil {
		if !create {
			return nil
		}
		chunks[c] = new(pageChunk)
	}
	return &chunks[c][n%finalChunk]
}

// Zero records that a page ended as a zero (or fill) page: it costs the bound nothing.
func (f *FinalImage) Zero(block uint16, offset uint64) {
	if p := f.page(block, offset, false); p != nil {
		*p = finalPage{}
	}
}

// Literal records that a page's content is now fp, sent in the stream at cost bytes.
func (f *FinalImage) Literal(block uint16, offset uint64, fp dedup.Fingerprint, cost uint32) {
	*f.page(block, offset, true) = finalPage{fp: fp, cost: pagePresent | min(cost, costMask)}
}

// Ref records that a page's content is now held content id, which cost cost bytes to bring (local: none, the
// target read it from its own files).
func (f *FinalImage) Ref(block uint16, offset uint64, fp dedup.Fingerprint, id dedup.ContentID, cost uint32, local bool) {
	p := finalPage{fp: fp, ref: uint32(id) + 1, cost: pagePresent | min(cost, costMask)}
	if local {
		p.cost |= pageLocal
	}
	*f.page(block, offset, true) = p
}

// each calls fn for every page that ended non-zero.
func (f *FinalImage) each(fn func(p finalPage)) {
	for _, chunks := range f.blocks {
		for _, c := range chunks {
			if c == nil {
				continue
			}
			for _, p := range c {
				if p.present() {
					fn(p)
				}
			}
		}
	}
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
		img.each(func(p finalPage) {
			if p.ref > 0 && int(p.ref-1) < len(used) {
				used[p.ref-1] = true
			}
			n := need{cost: p.bytes(), local: p.local()}
			if have, ok := t[p.fp]; ok {
				n = have.merge(n)
			}
			t[p.fp] = n
		})
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
