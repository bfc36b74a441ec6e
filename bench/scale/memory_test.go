package scale

import (
	"strings"
	"testing"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/scatter/source"
)

// TestMemoryConstantsMatchTheCode: the model charges what the sender and receiver charge.
func TestMemoryConstantsMatchTheCode(t *testing.T) {
	if QEMUOverheadBytes != source.QEMUOverheadBytes {
		t.Errorf("QEMUOverheadBytes %d, the sender's %d", QEMUOverheadBytes, source.QEMUOverheadBytes)
	}
	if dedup.StoreIndexBytesPerContent != 160 {
		t.Errorf("docs/store.md and docs/scale.md give 160 bytes per content; the store says %d", dedup.StoreIndexBytesPerContent)
	}
}

// TestHostMemory holds the memory figures to a hand count on a two-VM fleet, one target.
func TestHostMemory(t *testing.T) {
	f := &Fleet{Sizes: make([]uint16, 10), VMs: []SyntheticVM{
		{Name: "a", MemBytes: 1 << 30, Pages: 262144, NonZeroPages: 4, Contents: []uint32{1, 2, 3}},
		{Name: "b", MemBytes: 1 << 30, Pages: 262144, NonZeroPages: 3, Contents: []uint32{2, 3, 4}},
	}}
	c := costs{f: f, stats: f.Stats(), seen: make([]int32, len(f.Sizes))}
	hm := c.hostMemory([]int{0, 0}, 1, 2)
	const store = 4 * 2 * 160 // four contents, twice as many at factor 2
	need := uint64(2*2<<30) + 2*QEMUOverheadBytes + store
	if hm.TargetVMs != 2 || hm.TargetStoreContents != 8 || hm.TargetStoreBytes != store || hm.TargetGuestBytes != 4<<30 ||
		hm.TargetStoreDisk != 8*4096 || hm.TargetBytes != need+hm.TargetHeadroomBytes {
		t.Fatalf("%+v", hm)
	}
	// The headroom is what the sender keeps back from what the target has available.
	if avail := hm.TargetBytes; avail-avail/32-256<<20-store < need-store {
		t.Fatalf("a target with %d available would not take %d", avail, need)
	}
	if hm.TargetHeadroomBytes < 256<<20 {
		t.Fatalf("headroom %d", hm.TargetHeadroomBytes)
	}
}

// TestMemory40x16GiB states what each host needs to move 40 VMs of 16 GiB, from the synthetic catalog's 32 MiB
// images made 512 times larger, or from -scale.images: docs/scale.md gives the figures from the real images.
func TestMemory40x16GiB(t *testing.T) {
	if testing.Short() {
		t.Skip("places 40 VMs twice; skipped in -short")
	}
	c, what := SyntheticCatalog(1, 4, 8192), "synthetic: 4 images × 8192 pages"
	if *images != "" {
		c, what = loadCatalog(t)
	}
	t.Log(what)
	lines, err := BigVMMemory(DefaultModel(), c, 40, 16<<30, []int{4, 10})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lines {
		t.Log(l)
		if !strings.Contains(l, "40 VMs × 16 GiB") || !strings.Contains(l, "store index") {
			t.Errorf("line %q", l)
		}
	}
}
