package dest

import (
	"bytes"
	"errors"
	"log/slog"
	"slices"
	"sync"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// maxParked bounds the contents a receiver keeps while their digests have not come yet (64 MiB of pages). The
// sender sends a group's DIGESTS before its data, over TCP, so contents wait only when the control connection's
// goroutine lags the group's; beyond the bound they are dropped, which costs only their references.
const maxParked = 16384

// groupVerifier stores the contents the session's multicast groups deliver only if their bytes match the digests
// the sender gave over this receiver's own control connection (DIGESTS), under the session's salt (JOIN). A group's
// key is shared by its members, so a member could forge packets that the others' receivers accept; the digest,
// which only the sender sends and only over the authenticated connection, is what makes a multicast content the
// sender's. A content that does not match, or for which no digest came by the end of the prime, is dropped: not
// stored, counted, logged at a bounded rate, and named in PRIME_ACK's missing so that the sender never references
// it. Safe for concurrent use (every group's receiver goroutine, and the control connection's).
type groupVerifier struct {
	store *dedup.ContentStore
	log   *slog.Logger
	warn  *refusalLog

	mu      sync.Mutex
	d       *dedup.Digester                  // nil until the first JOIN
	digests map[dedup.ContentID]dedup.Digest // given, content not stored yet
	parked  map[dedup.ContentID]parkedContent
	dropped map[dedup.ContentID]struct{}
	drops   int // contents dropped in all
}

// parkedContent is a content delivered before its digest.
type parkedContent struct {
	page  []byte
	slots []int
}

func newGroupVerifier(store *dedup.ContentStore, log *slog.Logger) *groupVerifier {
	return &groupVerifier{store: store, log: log, warn: newRefusalLog(log), digests: map[dedup.ContentID]dedup.Digest{},
		parked: map[dedup.ContentID]parkedContent{}, dropped: map[dedup.ContentID]struct{}{}}
}

// setSalt takes the session's digest salt from a JOIN; every JOIN of a session must carry the same.
func (v *groupVerifier) setSalt(salt []byte) error {
	if len(salt) != 32 {
		return errors.New("digest salt must be 32 bytes")
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.d == nil {
		v.d = dedup.NewDigester([32]byte(salt))
		return nil
	}
	if s := v.d.Salt(); !bytes.Equal(s[:], salt) {
		return errors.New("digest salt differs from the session's")
	}
	return nil
}

// addDigests records a DIGESTS frame's digests, and stores (or drops) the parked contents they are for.
func (v *groupVerifier) addDigests(b []byte) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.d == nil {
		return errors.New("DIGESTS before JOIN")
	}
	return wire.ParseDigestRecords(b, func(id dedup.ContentID, dg dedup.Digest) error {
		v.digests[id] = dg
		if pc, ok := v.parked[id]; ok {
			delete(v.parked, id)
			if err := v.check(id, pc.page, pc.slots); err != nil {
				v.drop(id, err.Error()) // the store refused it (full, released): not held, like any drop
			}
		}
		return nil
	})
}

// put is a group's delivery of one content: stored if it matches its digest, parked if its digest has not come.
func (v *groupVerifier) put(id dedup.ContentID, page []byte, slots ...int) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.digests[id]; ok || v.d == nil {
		return v.check(id, page, slots)
	}
	if _, dup := v.parked[id]; dup || len(v.parked) >= maxParked {
		v.drop(id, "no digest for the content, and no room to keep it until one comes")
		return nil
	}
	v.parked[id] = parkedContent{page: bytes.Clone(page), slots: slices.Clone(slots)}
	return nil
}

// check stores page under id if it matches id's digest, else drops it. v.mu is held.
func (v *groupVerifier) check(id dedup.ContentID, page []byte, slots []int) error {
	dg, ok := v.digests[id]
	switch {
	case !ok || v.d == nil:
		v.drop(id, "no digest for the content")
		return nil
	case !v.d.Verify(page, dg):
		v.drop(id, "content does not match its digest") // the digest stays: the sender's own bytes may still come
		return nil
	}
	delete(v.digests, id)
	err := v.store.Put(id, page, slots...)
	if errors.Is(err, dedup.ErrStoreFull) {
		v.drop(id, "no room in the content store")
		return nil
	}
	return err
}

// drop counts and logs a content not stored. v.mu is held.
func (v *groupVerifier) drop(id dedup.ContentID, why string) {
	v.dropped[id] = struct{}{}
	v.drops++
	v.warn.warn("multicast content dropped", "content", id, "why", why)
}

// settle ends a prime: contents still waiting for a digest are dropped, and it returns every dropped content that
// the store does not hold (a content dropped here may have come right later, from the group or by unicast).
func (v *groupVerifier) settle() (missing []uint32, drops int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for id := range v.parked {
		v.drop(id, "no digest came for the content")
	}
	clear(v.parked)
	for id := range v.dropped {
		if !v.store.Has(id) {
			missing = append(missing, uint32(id))
		}
	}
	slices.Sort(missing)
	return missing, v.drops
}
