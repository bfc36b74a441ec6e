package dedup

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
)

// storeMaker returns a store that holds pages contents.
type storeMaker func(t *testing.T, pages int, d *Digester) *ContentStore

// storeModes runs f on the in-memory store and on the slot store over a real file: the one
// suite for both.
func storeModes(t *testing.T, f func(t *testing.T, mk storeMaker)) {
	t.Run("memory", func(t *testing.T) {
		f(t, func(t *testing.T, pages int, d *Digester) *ContentStore {
			return NewContentStore(int64(pages)*PageSize, d)
		})
	})
	t.Run("file", func(t *testing.T) {
		f(t, func(t *testing.T, pages int, d *Digester) *ContentStore {
			return newFileStore(t, int64(pages)*StoreIndexBytesPerContent, int64(pages)*PageSize, d)
		})
	})
}

func newFileStore(t *testing.T, mem, disk int64, d *Digester) *ContentStore {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(t.TempDir(), "s.pages"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return NewSlotStore(f, mem, disk, d)
}

func TestSlotStoreCapacity(t *testing.T) {
	for _, c := range []struct {
		mem, disk int64
		want      int
	}{
		{10 * StoreIndexBytesPerContent, 100 * PageSize, 10}, // the memory budget binds
		{100 * StoreIndexBytesPerContent, 7 * PageSize, 7},   // the disk budget binds
		{1 << 30, 1 << 30, (1 << 30) / PageSize},
		{0, 1 << 30, 0},
	} {
		if got := StoreCapacity(c.mem, c.disk); got != c.want {
			t.Errorf("StoreCapacity(%d, %d) = %d, want %d", c.mem, c.disk, got, c.want)
		}
	}
}

// TestSlotStoreReusesSlots: a freed content's slot takes the next one, so the file never
// spans more than the contents held at once.
func TestSlotStoreReusesSlots(t *testing.T) {
	s := newFileStore(t, 4*StoreIndexBytesPerContent, 4*PageSize, nil)
	for round := range 10 {
		for i := range 4 {
			id := ContentID(round*4 + i)
			if err := s.Put(id, pageOf(int(id)+1), round); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if err := s.Put(ContentID(1000+round), pageOf(5000), round); !errors.Is(err, ErrStoreFull) {
			t.Fatalf("round %d: a fifth content: err = %v", round, err)
		}
		for i := range 4 {
			id := ContentID(round*4 + i)
			got, err := s.Get(context.Background(), id, 0)
			if err != nil || !bytes.Equal(got, pageOf(int(id)+1)) {
				t.Fatalf("round %d content %d: wrong bytes or %v", round, id, err)
			}
		}
		if n := s.ReleaseVM(round); n != 4 {
			t.Fatalf("round %d freed %d", round, n)
		}
	}
	if st := s.Stats(); st.FileSize != 4*PageSize || st.Contents != 0 || st.Released != 40 {
		t.Fatalf("stats %+v", st)
	}
}

// failingFile fails writes beyond a size, as a full disk does.
type failingFile struct {
	*os.File
	max int64
}

func (f failingFile) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.max {
		return 0, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
	}
	return f.File.WriteAt(p, off)
}

// TestSlotStoreDiskFull: a write the disk refuses is a StoreFullError naming the cause;
// nothing is stored under the id, and the store goes on working.
func TestSlotStoreDiskFull(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "s.pages"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := NewSlotStore(failingFile{f, 2 * PageSize}, 1<<20, 1<<20, nil)
	for id := range ContentID(2) {
		if err := s.Put(id, pageOf(int(id)+1), 0); err != nil {
			t.Fatal(err)
		}
	}
	err = s.Put(2, pageOf(3), 0)
	var full *StoreFullError
	if !errors.As(err, &full) || !errors.Is(err, syscall.ENOSPC) || full.ID != 2 {
		t.Fatalf("err = %v, want a StoreFullError with ENOSPC", err)
	}
	if s.Has(2) {
		t.Fatal("a content the disk refused is held")
	}
	if _, err := s.Get(context.Background(), 2, 0); !errors.Is(err, ErrContentMissing) {
		t.Fatalf("Get: err = %v", err)
	}
	s.ReleaseVM(0)
	if err := s.Put(2, pageOf(3), 1); err != nil { // a freed slot is within the disk
		t.Fatal(err)
	}
	if got, err := s.Get(context.Background(), 2, 0); err != nil || !bytes.Equal(got, pageOf(3)) {
		t.Fatalf("after the disk had room: %v", err)
	}
}

// TestSlotStoreReadersPinSlots races Gets of shared contents against ReleaseVM and Puts
// that reuse freed slots: a Get returns its id's bytes or fails, never another id's.
func TestSlotStoreReadersPinSlots(t *testing.T) {
	s := newFileStore(t, 64*StoreIndexBytesPerContent, 64*PageSize, nil)
	ctx := context.Background()
	const rounds = 200
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for r := range 2 {
		wg.Go(func() {
			buf := make([]byte, PageSize)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := ContentID((i*7 + r) % (rounds * 8))
				if err := s.GetInto(ctx, id, 0, buf); err == nil && !bytes.Equal(buf, pageOf(int(id)+1)) {
					t.Errorf("content %d: another content's bytes", id)
					return
				}
			}
		})
	}
	for round := range rounds {
		for i := range 8 {
			id := ContentID(round*8 + i)
			if err := s.Put(id, pageOf(int(id)+1), round); err != nil {
				t.Fatal(err)
			}
		}
		if round >= 2 {
			s.ReleaseVM(round - 2)
		}
	}
	close(stop)
	wg.Wait()
	if st := s.Stats(); st.FileSize > 64*PageSize {
		t.Fatalf("the file grew past the disk budget: %+v", st)
	}
}

// TestStoreIndexBytesPerContent measures the slot store's memory per content, with one and
// with two VMs naming each content, and holds it to StoreIndexBytesPerContent, the figure
// receivers advertise their capacity by.
func TestStoreIndexBytesPerContent(t *testing.T) {
	if testing.Short() {
		t.Skip("measures 200,000 contents; skipped in -short")
	}
	for _, n := range []int{140_000, 200_000} {
		for _, vms := range []int{1, 2} {
			f, err := os.Create(filepath.Join(t.TempDir(), "s.pages"))
			if err != nil {
				t.Fatal(err)
			}
			s := NewSlotStore(discardFile{f}, 1<<40, 1<<40, nil)
			page := pageOf(1)
			before := heapBytes()
			for id := range ContentID(n) {
				holders := []int{int(id) % 3, 3 + int(id)%5}[:vms]
				if err := s.Put(id, page, holders...); err != nil {
					t.Fatal(err)
				}
			}
			during := heapBytes()
			for vm := range 8 {
				s.ReleaseVM(vm) // every id now sits in the released set
			}
			after := heapBytes()
			perHeld := float64(during-before) / float64(n)
			perReleased := float64(after-before) / float64(n)
			t.Logf("%d contents, %d VM(s) per content: %.0f bytes per held content, %.0f per released id", n, vms, perHeld, perReleased)
			if perHeld > StoreIndexBytesPerContent || perReleased > StoreIndexBytesPerContent {
				t.Errorf("%d VM(s): %.0f bytes per content held, %.0f per released, over StoreIndexBytesPerContent (%d)",
					vms, perHeld, perReleased, StoreIndexBytesPerContent)
			}
			runtime.KeepAlive(s)
			f.Close()
		}
	}
}

// discardFile reads zeros and writes nothing: the measurement is of the index alone.
type discardFile struct{ *os.File }

func (discardFile) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }
func (discardFile) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	return len(p), nil
}

func heapBytes() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}
