package dedup

import (
	"fmt"
	"io"
	"slices"
)

// SharingMap is the result of a Scan: each distinct non-zero content (by fingerprint), the
// pages that hold it, and the contents each VM holds. A SharingMap is read-only once built
// and then safe for concurrent use.
type SharingMap struct {
	// Regions describes the scanned regions, in the order given to Scan.
	Regions []RegionInfo
	// Contents lists the distinct non-zero contents in order of first occurrence (region
	// order, then offset). The index of a content is its ContentID.
	Contents []Content
	// PerVM[vm] lists the contents VM vm holds, sorted and unique. Its length is one more
	// than the highest VM number scanned.
	PerVM [][]ContentID
	// Pages counts the pages scanned; ZeroPages and NonZeroPages split them.
	Pages, ZeroPages, NonZeroPages int

	locations []Location // grouped by content: Contents[id].first onwards, Count of them
}

// RegionInfo describes one scanned region.
type RegionInfo struct {
	VM    int
	Block string
	Size  int64
	R     io.ReaderAt
	// Pages is the number of pages scanned: Size/PageSize, or 0 for a failed region.
	Pages, ZeroPages int
	// Err is the read failure for which the caller chose to continue without the region.
	Err *RegionError
}

// Content is one distinct non-zero content.
type Content struct {
	FP    Fingerprint
	Count uint32 // pages that hold it, across all VMs; at least 1
	first uint32
}

// Location names one page: a region of the map and the page's index within it.
type Location struct {
	Region uint32 // index into SharingMap.Regions
	Page   PageIndex
}

// Distinct returns the number of distinct non-zero contents.
func (m *SharingMap) Distinct() int { return len(m.Contents) }

// Holders returns the pages that hold content id, sorted by region and then offset. The
// slice belongs to the map and must not be modified.
func (m *SharingMap) Holders(id ContentID) []Location {
	c := m.Contents[id]
	return m.locations[c.first : c.first+c.Count : c.first+c.Count]
}

// HolderVMs appends to dst the VMs that hold content id, sorted and unique.
func (m *SharingMap) HolderVMs(dst []int, id ContentID) []int {
	start := len(dst)
	last := -1
	for _, l := range m.Holders(id) {
		if vm := m.Regions[l.Region].VM; vm != last {
			dst = append(dst, vm)
			last = vm
		}
	}
	slices.Sort(dst[start:])
	return dst[:start+len(slices.Compact(dst[start:]))]
}

// Where returns the VM, block and byte offset of a location.
func (m *SharingMap) Where(l Location) (vm int, block string, offset uint64) {
	r := m.Regions[l.Region]
	return r.VM, r.Block, l.Page.Offset()
}

// ReadPage reads the page at l into page (which must be PageSize long) through the
// region's reader. Guest memory keeps changing, so the bytes may no longer match the
// content's fingerprint; a sender digests the bytes it actually sends.
func (m *SharingMap) ReadPage(l Location, page []byte) error {
	if len(page) != PageSize {
		return fmt.Errorf("dedup: ReadPage needs a %d-byte buffer, got %d", PageSize, len(page))
	}
	r := m.Regions[l.Region]
	off := int64(l.Page.Offset())
	n, err := r.R.ReadAt(page, off)
	if n == PageSize {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return &RegionError{Region: int(l.Region), VM: r.VM, Block: r.Block, Offset: off + int64(n), Err: err}
}
