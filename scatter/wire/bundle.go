package wire

import (
	"encoding/binary"
	"fmt"

	"github.com/vmscatter/vmscatter/dedup"
)

// A CONTENT frame, and a multicast object of the prime, holds bundles: u8 codec · u8 n (1..dedup.MaxBundlePages) ·
// n × content head · be32 data length · data, where data is the n contents' pages compressed together with codec
// (dedup.CompressPages), in the order of the heads. A content head is be32 content id · u8 k · k × be16 VM slot: the
// slots (the VMs' indices in the sender's --vms list) name the VMs on this target that will reference the content;
// the receiver's store frees the content once all of them have finished. docs/control.md has the layout.

// MaxSlotsPerContent bounds the VM list of one content head.
const MaxSlotsPerContent = 255

// BundleHead is one content of a Bundle.
type BundleHead struct {
	ID    dedup.ContentID
	Slots []int
}

// AppendBundle appends a bundle: its codec, its heads and its compressed data.
func AppendBundle(dst []byte, codec dedup.Codec, heads []BundleHead, data []byte) []byte {
	dst = append(dst, byte(codec), byte(len(heads)))
	for _, h := range heads {
		dst = AppendContentHead(dst, h.ID, h.Slots)
	}
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(data)))
	return append(dst, data...)
}

// AppendContentHead appends a content head: be32 content id · u8 n · n × be16 slot. Seed records start with one too.
func AppendContentHead(dst []byte, id dedup.ContentID, slots []int) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(id))
	dst = append(dst, byte(len(slots)))
	for _, s := range slots {
		dst = binary.BigEndian.AppendUint16(dst, uint16(s))
	}
	return dst
}

// ParseContentHead parses a content head, appending its slots to slots, and returns the rest of b.
func ParseContentHead(b []byte, slots []int) (dedup.ContentID, []int, []byte, error) {
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

// Bundle is one parsed Bundle. Its slices point into the parsed buffer and the parser's scratch.
type Bundle struct {
	Codec dedup.Codec
	Heads []BundleHead
	Data  []byte
}

// ParseBundles calls fn for each Bundle in b. The Bundle passed to fn is valid until fn returns.
func ParseBundles(b []byte, fn func(*Bundle) error) error {
	var bd Bundle
	var slots []int // backing store of every head's slots
	for len(b) > 0 {
		if len(b) < 2 {
			return fmt.Errorf("%w: truncated Bundle", ErrFrame)
		}
		bd.Codec = dedup.Codec(b[0])
		n := int(b[1])
		b = b[2:]
		if !bd.Codec.Valid() {
			return fmt.Errorf("%w: Bundle codec %d", ErrFrame, byte(bd.Codec))
		}
		if n < 1 || n > dedup.MaxBundlePages {
			return fmt.Errorf("%w: Bundle of %d contents", ErrFrame, n)
		}
		bd.Heads, slots = bd.Heads[:0], slots[:0]
		for range n {
			var id dedup.ContentID
			var err error
			from := len(slots)
			if id, slots, b, err = ParseContentHead(b, slots); err != nil {
				return err
			}
			bd.Heads = append(bd.Heads, BundleHead{ID: id, Slots: slots[from:len(slots):len(slots)]})
		}
		if len(b) < 4 {
			return fmt.Errorf("%w: truncated Bundle", ErrFrame)
		}
		size := int(binary.BigEndian.Uint32(b))
		b = b[4:]
		if size > dedup.MaxEncodedBundle || size > len(b) {
			return fmt.Errorf("%w: Bundle data of %d bytes (%d left)", ErrFrame, size, len(b))
		}
		bd.Data, b = b[:size], b[size:]
		if err := fn(&bd); err != nil {
			return err
		}
	}
	return nil
}
