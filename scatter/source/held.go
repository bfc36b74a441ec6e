package source

import (
	"slices"

	"github.com/vmscatter/vmscatter/dedup"
)

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
func (s *sender) heldFor(vm *sourceVM) dedup.Holder {
	t := vm.target
	if t.held == nil || s.sharing == nil {
		return nil
	}
	var mine []dedup.ContentID
	if i := s.vmIndex(vm); i < len(s.sharing.PerVM) {
		mine = s.sharing.PerVM[i]
	}
	return vmHeld{held: t.held, mine: mine, pinned: t.pinned}
}
