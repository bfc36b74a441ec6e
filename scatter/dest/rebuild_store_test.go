package dest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/bench/datapath"
	"github.com/vmscatter/vmscatter/dedup"
)

// slotStore is the stream's held contents in a slot store over a file in dir, as a receiver keeps them.
func slotStore(tb testing.TB, st *datapath.Stream) *dedup.ContentStore {
	tb.Helper()
	f, err := os.OpenFile(filepath.Join(tb.TempDir(), "s.pages"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() })
	n := int64(len(st.Held) + 1)
	store := dedup.NewSlotStore(f, n*dedup.StoreIndexBytesPerContent, n*dedup.PageSize, nil)
	for id, page := range st.Held {
		if err := store.Put(dedup.ContentID(id), page); err != nil {
			tb.Fatal(err)
		}
	}
	return store
}

// TestRebuildFromSlotStore: references resolved from a store on disk rebuild the very stream the source sent.
func TestRebuildFromSlotStore(t *testing.T) {
	mix := datapath.Mix{Name: "references", Pages: 1500, Held: 0.9}
	st, frames, _ := rebuildInput(t, mix, dedup.CodecZstd)
	var out bytes.Buffer
	rb := newRebuilder(&datapath.MemConn{W: &out}, slotStore(t, st), time.Second)
	rc, _ := sealed(t, frames)
	if err := rebuildAll(context.Background(), rb, rc); err != nil {
		t.Fatal(err)
	}
	if rb.refs != len(st.Held) || !bytes.Equal(out.Bytes(), st.QEMU) {
		t.Fatalf("%d references of %d; the rebuilt stream equals the source's: %v", rb.refs, len(st.Held), bytes.Equal(out.Bytes(), st.QEMU))
	}
}

// BenchmarkRebuildSlotStore is BenchmarkRebuild's reference-heavy stream with its contents read from a slot file
// (one pread per reference) instead of memory.
//
//	go test ./scatter/dest -run '^$' -bench 'Rebuild.*/references' -benchtime 10x
func BenchmarkRebuildSlotStore(b *testing.B) {
	mix := datapath.ReferenceHeavy
	st, frames, _ := rebuildInput(b, mix, dedup.CodecZstd)
	benchRebuild(b, st.RAMBytes(), frames, slotStore(b, st))
}
