package source

import (
	"context"
	"slices"
	"time"

	"github.com/vmscatter/vmscatter/qemu/qmp"

	"github.com/vmscatter/vmscatter/dedup"
)

// vmHeld is what one VM may reference on its target: contents the target confirmed holding that stay alive until
// this VM's migration ends. The receiver frees a content when the last VM named in its CONTENT record finishes, so
// a VM may reference a content only if it is one of them (it held the content at the scan), or if the content was
// stored for no VM in particular (kept until the session ends).
type vmHeld struct {
	held    *dedup.HeldIndex
	mine    []dedup.ContentID // sorted: the contents this VM held at the scan
	pinned  []uint64          // bitset: contents stored for no VM in particular
	overlap *overlapWait      // the prime's overlap to this target, or nil
	// mayWait says whether a stream may still wait for the overlap: not once the source QEMU has stopped the VM to
	// switch over, when a wait would add to its downtime (nil: never wait).
	mayWait func() bool
}

func (v vmHeld) LookupFP(page []byte, fp dedup.Fingerprint) (dedup.ContentID, bool) {
	id, ok := v.lookup(page, fp)
	if ok || v.overlap == nil {
		return id, ok
	}
	// A content the overlap sends this VM's target: worth waiting for rather than sending literal.
	if oid, pending := v.overlap.ids[fp]; pending && v.mayUse(oid) && v.overlap.wait(v.mayWait) {
		return v.lookup(page, fp)
	}
	return 0, false
}

func (v vmHeld) lookup(page []byte, fp dedup.Fingerprint) (dedup.ContentID, bool) {
	id, ok := v.held.LookupFP(page, fp)
	if !ok || !v.mayUse(id) {
		return 0, false
	}
	return id, true
}

// mayUse says whether the VM may reference content id: one of its own, or one stored for no VM in particular.
func (v vmHeld) mayUse(id dedup.ContentID) bool {
	if int(id/64) < len(v.pinned) && v.pinned[id/64]&(1<<(id%64)) != 0 {
		return true
	}
	_, found := slices.BinarySearch(v.mine, id)
	return found
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
	v := vmHeld{held: t.held, mine: mine, pinned: t.pinned, overlap: t.overlap}
	if q := vm.qmp; q != nil && t.overlap != nil {
		v.mayWait = func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			st, err := q.Status(ctx)
			return err == nil && st != qmp.RunStateFinishMigrate && st != qmp.RunStatePostMigrate
		}
	}
	return v
}
