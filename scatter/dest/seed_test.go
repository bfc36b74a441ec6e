package dest

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// The receiver's side of a seed: it stores exactly the windows whose bytes match the sender's digest, and reports
// every other record as missing, whatever is wrong with it.
func TestSeedReaderStoresOnlyMatchingWindows(t *testing.T) {
	dir := t.TempDir()
	file := make([]byte, 3*4096+512)
	rng := rand.New(rand.NewPCG(1, 1))
	for i := range file {
		file[i] = byte(rng.Uint32())
	}
	path := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(path, file, 0o644); err != nil {
		t.Fatal(err)
	}
	var salt [32]byte
	salt[0] = 9
	d := dedup.NewDigester(salt)
	window := func(off int) []byte { return file[off : off+4096] }
	store := dedup.NewContentStore(1<<20, nil)
	r, err := openSeed(store, wire.SeedFilesMsg{Files: []string{path, "relative/path", dir, filepath.Join(dir, "gone")}, Salt: salt[:]}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	if len(r.errs) != 3 {
		t.Errorf("errors %q: want one per unusable file (relative, a directory, missing)", r.errs)
	}
	var recs []byte
	recs = wire.AppendSeedRecord(recs, 1, []int{0}, 0, 512, d.Sum(window(512)))          // good, unaligned to pages
	recs = wire.AppendSeedRecord(recs, 2, []int{0}, 0, 0, d.Sum(window(4096)))           // bytes differ
	recs = wire.AppendSeedRecord(recs, 3, nil, 0, 3*4096, d.Sum(file[3*4096-512:]))      // past the end: short read
	recs = wire.AppendSeedRecord(recs, 4, []int{1}, 1, 0, d.Sum(window(0)))              // unusable file
	recs = wire.AppendSeedRecord(recs, 5, []int{0, 1}, 0, 2*4096, d.Sum(window(2*4096))) // good
	if err := r.records(recs); err != nil {
		t.Fatal(err)
	}
	if r.held != 2 || !slices.Equal(r.missing, []uint32{2, 3, 4}) {
		t.Errorf("held %d, missing %v; want 2 held, 2 3 4 missing", r.held, r.missing)
	}
	if got, err := store.Get(t.Context(), 1, 0); err != nil || !bytes.Equal(got, window(512)) {
		t.Errorf("content 1: %v", err)
	}
	if _, err := store.Get(t.Context(), 2, 0); err == nil {
		t.Error("content 2 stored although its bytes differ")
	}
	// A record naming a file outside the list is a protocol error, not a miss.
	bad := wire.AppendSeedRecord(nil, 6, nil, 9, 0, dedup.Digest{})
	if err := r.records(bad); !errors.Is(err, wire.ErrFrame) {
		t.Errorf("file index out of range: %v", err)
	}
	if _, err := openSeed(store, wire.SeedFilesMsg{Files: []string{path}, Salt: salt[:5]}, nil); !errors.Is(err, wire.ErrFrame) {
		t.Errorf("short salt: %v", err)
	}
}

// FuzzPutContentRecords stores arbitrary CONTENT payloads: it never panics, and fails with a typed error.
func FuzzPutContentRecords(f *testing.F) {
	pages := bytes.Repeat([]byte("vmscatter bundle "), 2*4096/17+1)[:2*4096]
	data, codec := dedup.CompressPages(nil, pages, dedup.CodecZstd)
	f.Add(wire.AppendBundle(nil, codec, []wire.BundleHead{{ID: 1, Slots: []int{0}}, {ID: 2}}, data))
	f.Fuzz(func(t *testing.T, b []byte) {
		store := dedup.NewContentStore(1<<24, nil)
		if err := putContentRecords(store, b); err != nil && !errors.Is(err, wire.ErrFrame) && !errors.Is(err, dedup.ErrCorruptPage) &&
			!errors.Is(err, dedup.ErrUnknownCodec) && !errors.Is(err, dedup.ErrContentConflict) {
			t.Fatalf("store: %v", err)
		}
	})
}
