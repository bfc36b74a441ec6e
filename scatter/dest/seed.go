package dest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// seedReader is a receiver's side of one seed, owned by the control connection's goroutine.
type seedReader struct {
	store   *dedup.ContentStore
	d       *dedup.Digester
	files   []*os.File // nil where the file could not be used
	errs    []string
	held    int
	missing []uint32
	page    []byte
}

// openSeed starts a seed. A file that cannot be used is reported in the answer, and its records count as missing.
func openSeed(store *dedup.ContentStore, m wire.SeedFilesMsg, open func(string) (*os.File, error)) (*seedReader, error) {
	if open == nil {
		open = openSeedFile
	}
	if len(m.Salt) != 32 {
		return nil, fmt.Errorf("%w: seed salt of %d bytes", wire.ErrFrame, len(m.Salt))
	}
	if len(m.Files) > wire.MaxSeedFiles {
		return nil, fmt.Errorf("%w: %d seed files (at most %d)", wire.ErrFrame, len(m.Files), wire.MaxSeedFiles)
	}
	r := &seedReader{store: store, d: dedup.NewDigester([32]byte(m.Salt)), page: make([]byte, dedup.PageSize)}
	for _, p := range m.Files {
		f, err := open(p)
		if err != nil {
			r.errs = append(r.errs, err.Error())
		}
		r.files = append(r.files, f)
	}
	return r, nil
}

// openSeedFile opens one boot file for reading. The sender is authenticated and may start any QEMU command line
// here, so reading the files such a command line boots from gives it nothing more; still, only absolute paths of
// regular files are read, and only into the content store, whose bytes reach a guest only when their digest matches
// what the sender read at the source.
func openSeedFile(p string) (*os.File, error) {
	if !filepath.IsAbs(p) {
		return nil, fmt.Errorf("boot file %q: not an absolute path", p)
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("boot file %s: %w", p, err)
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("boot file %s: not a regular file", p)
	}
	return f, nil
}

// records reads and stores the contents of one SEED frame.
func (r *seedReader) records(b []byte) error {
	return wire.ParseSeedRecords(b, func(rec wire.SeedRecord) error {
		if rec.File >= len(r.files) {
			return fmt.Errorf("%w: seed record names file %d of %d", wire.ErrFrame, rec.File, len(r.files))
		}
		f := r.files[rec.File]
		if f == nil {
			r.missing = append(r.missing, uint32(rec.ID))
			return nil
		}
		if n, _ := f.ReadAt(r.page, rec.Offset); n != len(r.page) || r.d.Sum(r.page) != rec.Digest {
			// Shorter here, or other bytes than the sender read at the source: the prime brings it.
			r.missing = append(r.missing, uint32(rec.ID))
			return nil
		}
		err := r.store.Put(rec.ID, r.page, rec.Slots...)
		switch {
		case err == nil:
			r.held++
		case errors.Is(err, dedup.ErrStoreFull):
			r.missing = append(r.missing, uint32(rec.ID))
		default:
			return err
		}
		return nil
	})
}

func (r *seedReader) close() {
	for _, f := range r.files {
		if f != nil {
			f.Close()
		}
	}
}
