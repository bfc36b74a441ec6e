package dest

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// putFunc stores one content's page for the VM slots that need it (dedup.ContentStore.Put, or a check before it).
type putFunc func(id dedup.ContentID, page []byte, slots ...int) error

// putContentRecords stores a CONTENT frame's bundles in the session's store. They came over the authenticated
// control connection, from the sender itself: they are stored as they are. A content the store has no room for (a
// sender that planned past the store's capacity, or a full disk) is appended to refused, not stored: the receiver
// reports it missing at PRIME_DONE, and the sender sends its pages literal.
func putContentRecords(store *dedup.ContentStore, b []byte, refused *[]uint32) error {
	return putBundles(b, nil, func(id dedup.ContentID, page []byte, slots ...int) error {
		err := store.Put(id, page, slots...)
		if errors.Is(err, dedup.ErrStoreFull) {
			*refused = append(*refused, uint32(id))
			return nil
		}
		return err
	})
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

// storeDir is where the session stores keep their slot files, under the data directory.
const storeDir = "store"

// storeDiskShare is the share of the data directory's free space a session's slot file may take when receive
// --store-disk is not given: half of it, leaving the rest to the destinations' own files and to other sessions.
const storeDiskShare = 2

// openStore returns the content store of a new session: its pages in a slot file under DATA-DIR/store/, its index
// in memory within the store limit, the file within the disk limit (Config.StoreDisk, else storeDiskShare of the
// free space). The file is unlinked as soon as it is open, so that nothing of it outlives the session or a crash;
// closing it (the returned func, after the store's Close) gives its space back. A data directory where no file can
// be made gives a store of no capacity: the sender then primes nothing here, and this target's pages travel literal.
func (r *Receiver) openStore(id wire.SessionID) (*dedup.ContentStore, func()) {
	dir := filepath.Join(r.cfg.DataDir, storeDir)
	f, err := func() (*os.File, error) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		name := filepath.Join(dir, id.String()+".pages")
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return nil, err
		}
		if err := os.Remove(name); err != nil {
			f.Close()
			return nil, err
		}
		return f, nil
	}()
	if err != nil {
		r.log.Warn("no content store: its file cannot be made; this session's pages travel literal", "dir", dir, "err", err)
		return dedup.NewContentStore(0, nil), func() {}
	}
	disk := r.cfg.StoreDisk
	if disk <= 0 {
		disk = freeBytes(dir) / storeDiskShare
	}
	s := dedup.NewSlotStore(f, r.cfg.StoreLimit, disk, nil)
	r.log.Info("content store", "session", id, "contents", s.Capacity(), "memory", r.cfg.StoreLimit, "disk", disk)
	return s, func() { f.Close() }
}

// cleanStores removes the slot files a receiver that died between making and unlinking one left behind.
func cleanStores(dataDir string) {
	names, _ := filepath.Glob(filepath.Join(dataDir, storeDir, "*.pages"))
	for _, n := range names {
		_ = os.Remove(n)
	}
}

// freeBytes is the space unprivileged users may still take on dir's file system (0 if it cannot be read).
func freeBytes(dir string) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0
	}
	return int64(st.Bavail) * st.Bsize
}
