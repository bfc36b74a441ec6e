package dedup

import (
	"context"
	"encoding/binary"
	"runtime"
	"testing"
)

// synthRAM is guest RAM made up as it is read: a quarter of the pages zero, the rest one of distinct contents
// (labelled by their first 8 bytes), so that a large guest costs no memory of its own.
type synthRAM struct {
	vm       int
	distinct uint64
}

func (r synthRAM) ReadAt(p []byte, off int64) (int, error) {
	for o := 0; o < len(p); o += PageSize {
		page := p[o : o+PageSize]
		clear(page)
		n := uint64(off+int64(o)) / PageSize
		if n%4 == 0 {
			continue
		}
		// Half the contents are shared by every VM, the other half private to one.
		c := (n * 2654435761) % r.distinct
		if n%2 == 1 {
			c += uint64(r.vm+1) << 40
		}
		binary.LittleEndian.PutUint64(page, c|1<<63)
	}
	return len(p), nil
}

// TestBookkeepingBytesPerPage measures what the scan's sharing map and a target's held index keep per page, on four
// 256 MiB guests (262,144 pages), and holds them to the figures docs/store.md gives. The content store's index is
// measured by TestStoreIndexBytesPerContent, the report's final image by scatter/report's TestFinalImageBytesPerPage.
func TestBookkeepingBytesPerPage(t *testing.T) {
	if testing.Short() {
		t.Skip("scans 1 GiB of made-up RAM; skipped in -short")
	}
	const vms, size = 4, 256 << 20
	var regions []Region
	for vm := range vms {
		regions = append(regions, Region{VM: vm, Block: "pc.ram", Size: size, R: synthRAM{vm: vm, distinct: size / PageSize / 2}})
	}
	before := heapBytes()
	sm, err := Scan(context.Background(), regions, ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	scanned := heapBytes() - before
	perPage := float64(scanned) / float64(sm.Pages)
	perNonZero := float64(scanned) / float64(sm.NonZeroPages)
	t.Logf("sharing map: %d pages, %d non-zero, %d distinct: %.1f bytes per page, %.1f per non-zero page",
		sm.Pages, sm.NonZeroPages, sm.Distinct(), perPage, perNonZero)
	if perNonZero > 32 {
		t.Errorf("the sharing map keeps %.1f bytes per non-zero page, over 32", perNonZero)
	}

	var salt [32]byte
	h := NewHeldIndex(nil, NewDigester(salt))
	before = heapBytes()
	for id, c := range sm.Contents {
		h.Add(ContentID(id), c.FP, Digest{byte(id), byte(id >> 8), byte(id >> 16)})
	}
	held := heapBytes() - before
	perContent := float64(held) / float64(sm.Distinct())
	t.Logf("held index: %d contents: %.1f bytes per content", sm.Distinct(), perContent)
	if perContent > 64 {
		t.Errorf("the held index keeps %.1f bytes per content, over 64", perContent)
	}
	runtime.KeepAlive(sm)
	runtime.KeepAlive(h)
}
