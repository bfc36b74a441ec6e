package scatter

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/vmscatter/vmscatter/dedup"
)

// A CONTENT frame, and a multicast object of the prime, holds bundles: u8 codec · u8 n (1..dedup.MaxBundlePages) ·
// n × content head · be32 data length · data, where data is the n contents' pages compressed together with codec
// (dedup.CompressPages), in the order of the heads. A content head is be32 content id · u8 k · k × be16 VM slot: the
// slots (the VMs' indices in the sender's --vms list) name the VMs on this target that will reference the content;
// the receiver's store frees the content once all of them have finished. docs/control.md has the layout.

// maxSlotsPerContent bounds the VM list of one content head.
const maxSlotsPerContent = 255

// bundleHead is one content of a bundle.
type bundleHead struct {
	id    dedup.ContentID
	slots []int
}

// bundleHeadLen is the encoded size of the bundle's fixed part and heads.
func bundleHeadLen(heads []bundleHead) int {
	n := 2 + 4
	for _, h := range heads {
		n += 5 + 2*len(h.slots)
	}
	return n
}

func appendBundle(dst []byte, codec dedup.Codec, heads []bundleHead, data []byte) []byte {
	dst = append(dst, byte(codec), byte(len(heads)))
	for _, h := range heads {
		dst = appendContentHead(dst, h.id, h.slots)
	}
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(data)))
	return append(dst, data...)
}

// appendContentHead appends a content head: be32 content id · u8 n · n × be16 slot. Seed records start with one too.
func appendContentHead(dst []byte, id dedup.ContentID, slots []int) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(id))
	dst = append(dst, byte(len(slots)))
	for _, s := range slots {
		dst = binary.BigEndian.AppendUint16(dst, uint16(s))
	}
	return dst
}

// parseContentHead parses a content head, appending its slots to slots, and returns the rest of b.
func parseContentHead(b []byte, slots []int) (dedup.ContentID, []int, []byte, error) {
	if len(b) < 5 {
		return 0, slots, nil, fmt.Errorf("%w: truncated content head", ErrFrame)
	}
	id := dedup.ContentID(binary.BigEndian.Uint32(b))
	n := int(b[4])
	b = b[5:]
	if len(b) < 2*n {
		return 0, slots, nil, fmt.Errorf("%w: truncated content head", ErrFrame)
	}
	for i := range n {
		slots = append(slots, int(binary.BigEndian.Uint16(b[2*i:])))
	}
	return id, slots, b[2*n:], nil
}

// bundle is one parsed bundle. Its slices point into the parsed buffer and the parser's scratch.
type bundle struct {
	codec dedup.Codec
	heads []bundleHead
	data  []byte
}

// parseBundles calls fn for each bundle in b. The bundle passed to fn is valid until fn returns.
func parseBundles(b []byte, fn func(*bundle) error) error {
	var bd bundle
	var slots []int // backing store of every head's slots
	for len(b) > 0 {
		if len(b) < 2 {
			return fmt.Errorf("%w: truncated bundle", ErrFrame)
		}
		bd.codec = dedup.Codec(b[0])
		n := int(b[1])
		b = b[2:]
		if !bd.codec.Valid() {
			return fmt.Errorf("%w: bundle codec %d", ErrFrame, byte(bd.codec))
		}
		if n < 1 || n > dedup.MaxBundlePages {
			return fmt.Errorf("%w: bundle of %d contents", ErrFrame, n)
		}
		bd.heads, slots = bd.heads[:0], slots[:0]
		for range n {
			var id dedup.ContentID
			var err error
			from := len(slots)
			if id, slots, b, err = parseContentHead(b, slots); err != nil {
				return err
			}
			bd.heads = append(bd.heads, bundleHead{id: id, slots: slots[from:len(slots):len(slots)]})
		}
		if len(b) < 4 {
			return fmt.Errorf("%w: truncated bundle", ErrFrame)
		}
		size := int(binary.BigEndian.Uint32(b))
		b = b[4:]
		if size > dedup.MaxEncodedBundle || size > len(b) {
			return fmt.Errorf("%w: bundle data of %d bytes (%d left)", ErrFrame, size, len(b))
		}
		bd.data, b = b[:size], b[size:]
		if err := fn(&bd); err != nil {
			return err
		}
	}
	return nil
}

// putContentRecords stores a CONTENT frame's bundles in the session's store.
func putContentRecords(store *dedup.ContentStore, b []byte) error {
	return putContentRecordsLocal(store, b, nil)
}

// putContentRecordsLocal stores bundles, keeping from each content's VM slots only those in local (sorted), when
// local is not nil: a multicast bundle names every holder, on every target.
func putContentRecordsLocal(store *dedup.ContentStore, b []byte, local []int) error {
	pages := make([]byte, dedup.MaxBundlePages*dedup.PageSize)
	var slots []int
	return parseBundles(b, func(bd *bundle) error {
		raw := pages[:len(bd.heads)*dedup.PageSize]
		if err := dedup.DecodePages(raw, bd.data, bd.codec); err != nil {
			return err
		}
		for i, h := range bd.heads {
			slots = slots[:0]
			for _, slot := range h.slots {
				if _, ok := slices.BinarySearch(local, slot); local == nil || ok {
					slots = append(slots, slot)
				}
			}
			if err := store.Put(h.id, raw[i*dedup.PageSize:(i+1)*dedup.PageSize], slots...); err != nil {
				return err
			}
		}
		return nil
	})
}

// heldLookup answers whether a target holds a page's exact content.
type heldLookup interface {
	// LookupFP returns the id of the content with page's exact bytes; fp is page's fingerprint.
	LookupFP(page []byte, fp dedup.Fingerprint) (dedup.ContentID, bool)
}

type holdsNothing struct{}

func (holdsNothing) LookupFP([]byte, dedup.Fingerprint) (dedup.ContentID, bool) { return 0, false }

// vmHeld is what one VM may reference on its target: contents the target confirmed holding that stay alive until
// this VM's migration ends. The receiver frees a content when the last VM named in its CONTENT record finishes, so
// a VM may reference a content only if it is one of them (it held the content at the scan), or if the content was
// stored for no VM in particular (kept until the session ends).
type vmHeld struct {
	held   *dedup.HeldIndex
	mine   []dedup.ContentID // sorted: the contents this VM held at the scan
	pinned []uint64          // bitset: contents stored for no VM in particular
}

func (v vmHeld) LookupFP(page []byte, fp dedup.Fingerprint) (dedup.ContentID, bool) {
	id, ok := v.held.LookupFP(page, fp)
	if !ok {
		return 0, false
	}
	if int(id/64) < len(v.pinned) && v.pinned[id/64]&(1<<(id%64)) != 0 {
		return id, true
	}
	_, found := slices.BinarySearch(v.mine, id)
	return id, found
}

// heldFor returns what a VM may reference on its target (confirmed primes only).
func (s *sender) heldFor(vm *sourceVM) heldLookup {
	t := vm.target
	if t.held == nil || s.sharing == nil {
		return holdsNothing{}
	}
	var mine []dedup.ContentID
	if i := s.vmIndex(vm); i < len(s.sharing.PerVM) {
		mine = s.sharing.PerVM[i]
	}
	return vmHeld{held: t.held, mine: mine, pinned: t.pinned}
}
