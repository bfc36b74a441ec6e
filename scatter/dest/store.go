package dest

import (
	"slices"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// putContentRecords stores a CONTENT frame's bundles in the session's store.
func putContentRecords(store *dedup.ContentStore, b []byte) error {
	return putContentRecordsLocal(store, b, nil)
}

// putContentRecordsLocal stores bundles, keeping from each content's VM slots only those in local (sorted), when
// local is not nil: a multicast bundle names every holder, on every target.
func putContentRecordsLocal(store *dedup.ContentStore, b []byte, local []int) error {
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
			if err := store.Put(h.ID, raw[i*dedup.PageSize:(i+1)*dedup.PageSize], slots...); err != nil {
				return err
			}
		}
		return nil
	})
}
