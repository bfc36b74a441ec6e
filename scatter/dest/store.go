package dest

import (
	"slices"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// putFunc stores one content's page for the VM slots that need it (dedup.ContentStore.Put, or a check before it).
type putFunc func(id dedup.ContentID, page []byte, slots ...int) error

// putContentRecords stores a CONTENT frame's bundles in the session's store. They came over the authenticated
// control connection, from the sender itself: they are stored as they are.
func putContentRecords(store *dedup.ContentStore, b []byte) error {
	return putBundles(b, nil, store.Put)
}

// putBundles decodes bundles and hands each content to put, keeping from each content's VM slots only those in
// local (sorted), when local is not nil: a multicast bundle names every holder, on every target. The page put is
// given is valid only during the call.
func putBundles(b []byte, local []int, put putFunc) error {
	pages := make([]byte, dedup.MaxBundlePages*dedup.PageSize)
	var slots []int
	return wire.ParseBundles(b, func(bd *wire.Bundle) error {
		raw := pages[:len(bd.Heads)*dedup.PageSize]
		if err := dedup.DecodePages(raw, bd.Data, bd.Codec); err != nil {
			return err
		}
		for i, h := range bd.Heads {
			slots = slots[:0]
			for _, slot := range h.Slots {
				if _, ok := slices.BinarySearch(local, slot); local == nil || ok {
					slots = append(slots, slot)
				}
			}
			if err := put(h.ID, raw[i*dedup.PageSize:(i+1)*dedup.PageSize], slots...); err != nil {
				return err
			}
		}
		return nil
	})
}
