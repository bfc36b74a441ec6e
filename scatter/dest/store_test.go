package dest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// TestSessionStore: a session's store keeps its pages in a file under DATA-DIR/store that is unlinked at once (and a
// leftover one is removed when the receiver starts), holds what its budgets allow, and a CONTENT frame beyond that
// has its extra contents refused (reported missing), not the session ended.
func TestSessionStore(t *testing.T) {
	dir := t.TempDir()
	left := filepath.Join(dir, storeDir, "0123.pages")
	if err := os.MkdirAll(filepath.Dir(left), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(left, []byte("a crashed receiver's"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := NewReceiver(Config{DataDir: dir, Key: testKey, StoreLimit: 100 * dedup.StoreIndexBytesPerContent, StoreDisk: 2 * dedup.PageSize})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(left); !os.IsNotExist(err) {
		t.Fatalf("a leftover slot file survived the start: %v", err)
	}
	store, closeFile := r.openStore(wire.SessionID{1})
	defer closeFile()
	defer store.Close()
	if got := store.Capacity(); got != 2 {
		t.Fatalf("capacity %d, want 2 (the disk budget binds)", got)
	}
	if names, _ := filepath.Glob(filepath.Join(dir, storeDir, "*")); len(names) != 0 {
		t.Fatalf("the slot file is visible: %v", names)
	}

	pages := make([]byte, 3*dedup.PageSize)
	for i := range 3 {
		copy(pages[i*dedup.PageSize:], bytes.Repeat([]byte{byte(i + 1)}, dedup.PageSize))
	}
	data, codec := dedup.CompressPages(nil, pages, dedup.CodecZstd)
	frame := wire.AppendBundle(nil, codec, []wire.BundleHead{{ID: 1, Slots: []int{0}}, {ID: 2, Slots: []int{0}}, {ID: 3, Slots: []int{1}}}, data)
	var refused []uint32
	if err := putContentRecords(store, frame, &refused); err != nil {
		t.Fatalf("a full store ended the frame: %v", err)
	}
	if len(refused) != 1 || refused[0] != 3 {
		t.Fatalf("refused %v, want [3]", refused)
	}
	for id := range dedup.ContentID(2) {
		got, err := store.Get(context.Background(), id+1, 0)
		if err != nil || !bytes.Equal(got, pages[int(id)*dedup.PageSize:int(id+1)*dedup.PageSize]) {
			t.Fatalf("content %d: %v", id+1, err)
		}
	}
}
