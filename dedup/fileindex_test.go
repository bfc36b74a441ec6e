package dedup

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
)

func TestFileIndexFindsUnalignedCopies(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	file := make([]byte, 9*PageSize+3*FileWindowStep+100) // a tail shorter than a page
	for i := range file {
		file[i] = byte(rng.Uint32())
	}
	copy(file[2*PageSize:], make([]byte, PageSize)) // a zero window is never indexed
	x, err := IndexFiles([]io.ReaderAt{bytes.NewReader(make([]byte, 100)), bytes.NewReader(file)},
		[]int64{100, int64(len(file))}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A guest page copied from the file at a sector boundary that is not a page boundary is found, and the window
	// it names holds the same bytes.
	for _, off := range []int64{0, 3 * FileWindowStep, 5*PageSize + FileWindowStep, int64(len(file)) - PageSize - 100} {
		off -= off % FileWindowStep
		page := file[off : off+PageSize]
		w, ok := x.Lookup(XXHash(page))
		if !ok {
			t.Fatalf("window at %d not found", off)
		}
		if w.File != 1 || !bytes.Equal(file[w.Offset:w.Offset+PageSize], page) {
			t.Fatalf("window at %d: got file %d offset %d", off, w.File, w.Offset)
		}
	}
	// Not at a sector boundary: not indexed (the loaders this serves copy at sector granularity).
	if _, ok := x.Lookup(XXHash(file[100 : 100+PageSize])); ok {
		t.Error("a window off the 512-byte grid was indexed")
	}
	if _, ok := x.Lookup(XXHash(make([]byte, PageSize))); ok {
		t.Error("the zero page was indexed")
	}
}

// A file longer than one read chunk: windows that straddle chunk boundaries are found too.
func TestFileIndexAcrossChunks(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	file := make([]byte, (4<<20)+3*PageSize)
	for i := range file {
		file[i] = byte(rng.Uint32())
	}
	x, err := IndexFiles([]io.ReaderAt{bytes.NewReader(file)}, []int64{int64(len(file))}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := (len(file)-PageSize)/FileWindowStep + 1; x.Len() != want {
		t.Errorf("indexed %d windows, want %d", x.Len(), want)
	}
	off := (4 << 20) - FileWindowStep
	if w, ok := x.Lookup(XXHash(file[off : off+PageSize])); !ok || w.Offset != int64(off) {
		t.Errorf("straddling window: %v %v", w, ok)
	}
}
