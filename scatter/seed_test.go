package scatter

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vmscatter/vmscatter/dedup"
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
	r, err := openSeed(store, seedFilesMsg{Files: []string{path, "relative/path", dir, filepath.Join(dir, "gone")}, Salt: salt[:]}, false)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	if len(r.errs) != 3 {
		t.Errorf("errors %q: want one per unusable file (relative, a directory, missing)", r.errs)
	}
	var recs []byte
	recs = appendSeedRecord(recs, 1, []int{0}, 0, 512, d.Sum(window(512)))          // good, unaligned to pages
	recs = appendSeedRecord(recs, 2, []int{0}, 0, 0, d.Sum(window(4096)))           // bytes differ
	recs = appendSeedRecord(recs, 3, nil, 0, 3*4096, d.Sum(file[3*4096-512:]))      // past the end: short read
	recs = appendSeedRecord(recs, 4, []int{1}, 1, 0, d.Sum(window(0)))              // unusable file
	recs = appendSeedRecord(recs, 5, []int{0, 1}, 0, 2*4096, d.Sum(window(2*4096))) // good
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
	bad := appendSeedRecord(nil, 6, nil, 9, 0, dedup.Digest{})
	if err := r.records(bad); !errors.Is(err, ErrFrame) {
		t.Errorf("file index out of range: %v", err)
	}
	if _, err := openSeed(store, seedFilesMsg{Files: []string{path}, Salt: salt[:5]}, false); !errors.Is(err, ErrFrame) {
		t.Errorf("short salt: %v", err)
	}
}

func FuzzSeedRecords(f *testing.F) {
	var dg dedup.Digest
	f.Add(appendSeedRecord(appendSeedRecord(nil, 1, []int{0, 3}, 0, 512, dg), 7, nil, 2, 8192, dg))
	f.Add([]byte{0, 0, 0, 1, 200})
	f.Fuzz(func(t *testing.T, b []byte) {
		var again []byte
		err := parseSeedRecords(b, func(r seedRecord) error {
			if r.offset%dedup.FileWindowStep != 0 || r.offset > dedup.MaxIndexedFile {
				t.Fatalf("offset %d accepted", r.offset)
			}
			again = appendSeedRecord(again, r.id, r.slots, uint16(r.file), r.offset, r.dg)
			return nil
		})
		checkRoundTrip(t, b, again, err)
	})
}

// checkRoundTrip is the property of every parser's fuzz test: input that parses re-encodes to itself, and input
// that does not gets a typed error (ErrFrame). It reports whether b parsed.
func checkRoundTrip(t *testing.T, b, again []byte, err error) bool {
	t.Helper()
	if err != nil {
		if !errors.Is(err, ErrFrame) {
			t.Fatalf("untyped error %v", err)
		}
		return false
	}
	if !bytes.Equal(again, b) {
		t.Fatalf("round trip: %x != %x", again, b)
	}
	return true
}

func FuzzBundles(f *testing.F) {
	pages := bytes.Repeat([]byte("vmscatter bundle "), 2*4096/17+1)[:2*4096]
	data, codec := dedup.CompressPages(nil, pages, dedup.CodecZstd)
	f.Add(appendBundle(nil, codec, []bundleHead{{id: 1, slots: []int{0}}, {id: 2}}, data))
	raw, _ := dedup.CompressPages(nil, pages[:4096], dedup.CodecNone)
	f.Add(appendBundle(nil, dedup.CodecNone, []bundleHead{{id: 9, slots: []int{1, 2}}}, raw))
	f.Fuzz(func(t *testing.T, b []byte) {
		var again []byte
		err := parseBundles(b, func(bd *bundle) error {
			if len(bd.heads) < 1 || len(bd.heads) > dedup.MaxBundlePages || len(bd.data) > dedup.MaxEncodedBundle {
				t.Fatalf("bundle of %d heads, %d bytes accepted", len(bd.heads), len(bd.data))
			}
			again = appendBundle(again, bd.codec, bd.heads, bd.data)
			return nil
		})
		if !checkRoundTrip(t, b, again, err) {
			return
		}
		// Storing what parsed never panics, and fails with a typed error when the data is not what the heads say.
		store := dedup.NewContentStore(1<<24, nil)
		if err := putContentRecords(store, b); err != nil && !errors.Is(err, dedup.ErrCorruptPage) &&
			!errors.Is(err, dedup.ErrUnknownCodec) && !errors.Is(err, dedup.ErrContentConflict) {
			t.Fatalf("store: %v", err)
		}
	})
}
