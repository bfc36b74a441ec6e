package dest

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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
	roots, err := resolveRoots([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	open := func(p string) (*os.File, error) { return openBootFile(p, roots) }
	r, err := openSeed(store, wire.SeedFilesMsg{Files: []string{path, "relative/path", dir, filepath.Join(dir, "gone")}, Salt: salt[:]}, open)
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
	if _, err := openSeed(store, wire.SeedFilesMsg{Files: []string{path}, Salt: salt[:5]}, open); !errors.Is(err, wire.ErrFrame) {
		t.Errorf("short salt: %v", err)
	}
}

// The receiver opens a seed file only when it is a regular file under an allowed root, reached without a symbolic
// link; a FIFO, a device, a symlink, anything under /dev, /proc or /sys, and anything outside the roots are refused
// without blocking, and /dev paths are refused before any open.
func TestOpenBootFileRefuses(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(good, make([]byte, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Symlink(dir, sub); err != nil { // a directory link below the root
		t.Fatal(err)
	}
	devLink := filepath.Join(dir, "devroot")
	if err := os.Symlink("/dev", devLink); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "initrd.img")
	if err := os.WriteFile(outside, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	roots, err := resolveRoots([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	everything, err := resolveRoots([]string{"/", devLink})
	if err != nil {
		t.Fatal(err)
	}
	f, err := openBootFile(good, roots)
	if err != nil {
		t.Fatalf("a regular file under the root: %v", err)
	}
	f.Close()
	for _, tc := range []struct {
		path  string
		roots []allowedRoot
		want  string
	}{
		{fifo, roots, "FIFO"},
		{link, roots, "symbolic link"},
		{filepath.Join(sub, "vmlinuz"), roots, "symbolic link"},
		{outside, roots, "outside the allowed paths"},
		{dir + "/../" + filepath.Base(outside), roots, "clean absolute"},
		{"/dev/watchdog", everything, "never opened"},
		{"/dev/zero", roots, "never opened"},
		{"/proc/self/environ", everything, "never opened"},
		{"/sys/kernel/notes", everything, "never opened"},
		{filepath.Join(devLink, "watchdog"), everything, "never opened"},
		{filepath.Join(dir, "missing"), roots, "no such file"},
	} {
		f, err := openBootFile(tc.path, tc.roots)
		if err == nil {
			f.Close()
			t.Errorf("%s: opened", tc.path)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.path, err, tc.want)
		}
	}
}

// blockingFile is a seed file whose reads never return until released: a hung network mount.
type blockingFile struct{ release chan struct{} }

func (b blockingFile) ReadAt(p []byte, off int64) (int, error) { <-b.release; return 0, io.EOF }
func (b blockingFile) Close() error                            { return nil }

// A read that does not return in time makes its file's records missing, and the other files are still read.
func TestSeedReadHasADeadline(t *testing.T) {
	dir := t.TempDir()
	page := bytes.Repeat([]byte{7}, 4096)
	path := filepath.Join(dir, "kernel")
	if err := os.WriteFile(path, page, 0o644); err != nil {
		t.Fatal(err)
	}
	var salt [32]byte
	d := dedup.NewDigester(salt)
	store := dedup.NewContentStore(1<<20, nil)
	r, err := openSeed(store, wire.SeedFilesMsg{Files: []string{"hung", path}, Salt: salt[:]}, func(p string) (*os.File, error) {
		return os.Open(path)
	})
	if err != nil {
		t.Fatal(err)
	}
	hung := blockingFile{release: make(chan struct{})}
	defer close(hung.release)
	r.files[0] = hung
	r.readTimeout = 50 * time.Millisecond
	var recs []byte
	recs = wire.AppendSeedRecord(recs, 1, nil, 0, 0, d.Sum(page))
	recs = wire.AppendSeedRecord(recs, 2, nil, 0, 0, d.Sum(page)) // the hung file again: not read a second time
	recs = wire.AppendSeedRecord(recs, 3, nil, 1, 0, d.Sum(page))
	if err := r.records(recs); err != nil {
		t.Fatal(err)
	}
	defer r.close()
	if r.held != 1 || !slices.Equal(r.missing, []uint32{1, 2}) {
		t.Errorf("held %d, missing %v; want content 3 held, 1 and 2 missing", r.held, r.missing)
	}
	if len(r.errs) != 1 || !strings.Contains(r.errs[0], "did not finish") {
		t.Errorf("errors %q", r.errs)
	}
}

// FuzzPutContentRecords stores arbitrary CONTENT payloads: it never panics, and fails with a typed error.
func FuzzPutContentRecords(f *testing.F) {
	pages := bytes.Repeat([]byte("vmscatter bundle "), 2*4096/17+1)[:2*4096]
	data, codec := dedup.CompressPages(nil, pages, dedup.CodecZstd)
	f.Add(wire.AppendBundle(nil, codec, []wire.BundleHead{{ID: 1, Slots: []int{0}}, {ID: 2}}, data))
	f.Fuzz(func(t *testing.T, b []byte) {
		store := dedup.NewContentStore(1<<24, nil)
		if err := putContentRecords(store, b, new([]uint32)); err != nil && !errors.Is(err, wire.ErrFrame) && !errors.Is(err, dedup.ErrCorruptPage) &&
			!errors.Is(err, dedup.ErrUnknownCodec) && !errors.Is(err, dedup.ErrContentConflict) {
			t.Fatalf("store: %v", err)
		}
	})
}
