package source

import (
	"testing"

	"github.com/vmscatter/vmscatter/grouping"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// TestPlaceTarget: a configured capacity is taken as the guest RAM offered; an available-memory one is cut by the
// store's budget and the headroom, and charges each VM QEMU's overhead; vCPU slots follow the host's CPUs.
func TestPlaceTarget(t *testing.T) {
	const gib = 1 << 30
	got := placeTarget(&targetConn{addr: "a", info: wire.InfoMsg{MemAvailable: 64 * gib, CPUs: 8, StoreLimit: gib, MaxVMs: 3}})
	want := grouping.Target{Name: "a", MemBytes: 64*gib - gib - (256<<20 + 2*gib), VCPUSlots: 32, MaxVMs: 3,
		PerVMBytes: QEMUOverheadBytes}
	if got != want {
		t.Fatalf("available memory: %+v, want %+v", got, want)
	}
	got = placeTarget(&targetConn{addr: "b", info: wire.InfoMsg{MemAvailable: 64 * gib, CPUs: 2, StoreLimit: gib, Capacity: 10 * gib}})
	if want := (grouping.Target{Name: "b", MemBytes: 10 * gib, VCPUSlots: 8}); got != want {
		t.Fatalf("configured capacity: %+v, want %+v", got, want)
	}
	// A host with less available than it must keep offers nothing, never a wrapped-around figure.
	got = placeTarget(&targetConn{addr: "c", info: wire.InfoMsg{MemAvailable: 512 << 20, StoreLimit: gib}})
	if got.MemBytes != 0 {
		t.Fatalf("short host offers %d bytes", got.MemBytes)
	}
}
