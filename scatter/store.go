package scatter

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/vmscatter/vmscatter/dedup"
)

// A CONTENT frame holds records of: be32 content id · u8 n · n × be16 VM slot · a page record of kind literal.
// The VM slots (the VMs' indices in the sender's --vms list) name the VMs on this target that will reference the
// content; the receiver's store frees the content once all of them have finished.

// maxSlotsPerContent bounds the VM list of one content record.
const maxSlotsPerContent = 255

func appendContentRecord(dst []byte, id dedup.ContentID, slots []int, rec dedup.PageRecord) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(id))
	dst = append(dst, byte(len(slots)))
	for _, s := range slots {
		dst = binary.BigEndian.AppendUint16(dst, uint16(s))
	}
	return dedup.AppendRecord(dst, rec)
}

// putContentRecords stores a CONTENT frame's records in the session's store.
func putContentRecords(store *dedup.ContentStore, b []byte) error {
	return putContentRecordsLocal(store, b, nil)
}

// putContentRecordsLocal stores content records, keeping from each record's VM slots only those in local (sorted),
// when local is not nil: a multicast record names every holder, on every target.
func putContentRecordsLocal(store *dedup.ContentStore, b []byte, local []int) error {
	page := make([]byte, dedup.PageSize)
	var slots []int
	for len(b) > 0 {
		if len(b) < 5 {
			return fmt.Errorf("%w: truncated content record", ErrFrame)
		}
		id := dedup.ContentID(binary.BigEndian.Uint32(b))
		n := int(b[4])
		b = b[5:]
		if len(b) < 2*n {
			return fmt.Errorf("%w: truncated content record", ErrFrame)
		}
		slots = slots[:0]
		for i := range n {
			slot := int(binary.BigEndian.Uint16(b[2*i:]))
			if _, ok := slices.BinarySearch(local, slot); local == nil || ok {
				slots = append(slots, slot)
			}
		}
		b = b[2*n:]
		rec, used, err := dedup.ParseRecord(b)
		if err != nil {
			return err
		}
		b = b[used:]
		if rec.Kind != dedup.RecordLiteral {
			return fmt.Errorf("%w: content record of kind %v", ErrFrame, rec.Kind)
		}
		if err := rec.Codec.Decode(page, rec.Data); err != nil {
			return err
		}
		if err := store.Put(id, page, slots...); err != nil {
			return err
		}
	}
	return nil
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
