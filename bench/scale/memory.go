package scale

import (
	"fmt"
	"math"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/grouping"
)

// The per-page and per-VM costs of a run, as docs/store.md measures them. scale_test.go holds them to the code's.
const (
	// QEMUOverheadBytes is what placement charges each VM on a target besides its RAM (scatter/source's).
	QEMUOverheadBytes = 128 << 20
	// Headroom: what a target keeps free beyond what placement counts, 256 MiB and 1/32 of its available memory.
	headroomFixed = 256 << 20
	headroomShare = 32
	// The sender's bookkeeping, retained: the sharing map per non-zero page, the report's final image per page, the
	// held index per content a target holds, and per distinct content the prime's digest and cost.
	sharingMapBytesPerPage = 16
	finalImageBytesPerPage = 16
	heldIndexBytesPerEntry = 54
	primeBytesPerContent   = 20
	// senderWorkingBytes is the sender's working memory besides: the prime's pipeline (1024 contents, two copies)
	// and a multicast chunk held for repairs (8 MiB), the streams' buffers, the runtime.
	senderWorkingBytes = 128 << 20
)

// HostMemory is the memory each host needs to hold a run, by the store and capacity rules of docs/store.md: the
// source for the sender's bookkeeping, each target for its VMs, their QEMUs, its content store's index and the
// headroom placement keeps. The store's pages are on the target's data dir (StoreDiskBytes), not in memory.
type HostMemory struct {
	SourceBytes uint64 `json:"source_bytes"` // the sender: sharing map, final images, held indexes, prime, working memory
	// The busiest target (the most memory needed), and its parts.
	TargetBytes         uint64 `json:"target_bytes"`          // MemAvailable it needs for placement to accept its VMs
	TargetVMs           int    `json:"target_vms"`            // VMs placed there
	TargetGuestBytes    uint64 `json:"target_guest_bytes"`    // their RAM
	TargetQEMUBytes     uint64 `json:"target_qemu_bytes"`     // their QEMUs' own memory (QEMUOverheadBytes each)
	TargetStoreContents int64  `json:"target_store_contents"` // distinct contents its VMs hold: what its store keeps
	TargetStoreBytes    uint64 `json:"target_store_bytes"`    // its store's index: the --store-limit it needs
	TargetStoreDisk     uint64 `json:"target_store_disk"`     // its store's slot file: the --store-disk it needs
	TargetHeadroomBytes uint64 `json:"target_headroom_bytes"`
}

// hostMemory computes the hosts' memory for the fleet placed by assign on targets, with every figure that counts
// pages or contents multiplied by factor (1: as the fleet is; 128: the fleet's VMs 128 times larger, their extra
// pages fresh contents, as Generate's scale factors make them).
func (c *costs) hostMemory(assign []int, targets int, factor uint64) HostMemory {
	var hm HostMemory
	byTarget := make([][]int, targets)
	for v, t := range assign {
		byTarget[t] = append(byTarget[t], v)
	}
	contents := make([]int64, targets)
	ram := make([]uint64, targets)
	clear(c.seen)
	for t, vms := range byTarget { // a target's VMs in a row: seen[id] == t+1 means counted for t
		for _, v := range vms {
			ram[t] += c.f.VMs[v].MemBytes
			for _, id := range c.f.VMs[v].Contents {
				if c.seen[id] != int32(t+1) {
					c.seen[id] = int32(t + 1)
					contents[t]++
				}
			}
		}
	}
	var fabricPages int64
	for t := range targets {
		fabricPages += contents[t]
		guest := ram[t] * factor
		store := uint64(contents[t]) * factor * dedup.StoreIndexBytesPerContent
		qemu := uint64(len(byTarget[t])) * QEMUOverheadBytes
		need := guest + qemu + store
		// MemAvailable a such that a − store − (256 MiB + a/32) ≥ guests and QEMUs.
		avail := uint64(math.Ceil(float64(need+headroomFixed) * headroomShare / (headroomShare - 1)))
		if avail > hm.TargetBytes {
			hm = HostMemory{TargetBytes: avail, TargetVMs: len(byTarget[t]), TargetGuestBytes: guest, TargetQEMUBytes: qemu,
				TargetStoreContents: contents[t] * int64(factor), TargetStoreBytes: store,
				TargetStoreDisk: uint64(contents[t]) * factor * PageSize, TargetHeadroomBytes: avail - need}
		}
	}
	s := c.stats
	hm.SourceBytes = factor*(uint64(s.NonZeroPages)*sharingMapBytesPerPage+uint64(s.Pages)*finalImageBytesPerPage+
		uint64(fabricPages)*heldIndexBytesPerEntry+uint64(s.Distinct)*primeBytesPerContent) + senderWorkingBytes
	return hm
}

// MemoryAt projects the memory each host needs when the fleet's VMs are factor times larger (their extra pages fresh
// contents), placed as "ours" placed the fleet: the way to state it for VMs of many GiB without drawing fleets of
// that size. Projection.Memory is MemoryAt(1).
func MemoryAt(m Model, f *Fleet, targets int, factor uint64) (HostMemory, error) {
	if factor == 0 {
		return HostMemory{}, fmt.Errorf("%w: memory factor 0", ErrBadModel)
	}
	if err := m.validate(); err != nil {
		return HostMemory{}, err
	}
	if f == nil || len(f.VMs) == 0 || targets <= 0 || targets > len(f.VMs) {
		return HostMemory{}, fmt.Errorf("%w: %d targets for the fleet", ErrBadModel, targets)
	}
	pl, err := grouping.Place(problem(m, f, targets), grouping.Ours)
	if err != nil {
		return HostMemory{}, fmt.Errorf("scale: placing %d VMs on %d targets: %w", len(f.VMs), targets, err)
	}
	c := costs{m: m, f: f, stats: f.Stats(), seen: make([]int32, len(f.Sizes))}
	return c.hostMemory(pl.Assign, targets, factor), nil
}

// String renders the figures for people.
func (hm HostMemory) String() string {
	g := func(n uint64) string { return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30)) }
	return fmt.Sprintf("source %s; busiest target %s (%d VMs: RAM %s, QEMU %s, store index %s for %d contents, headroom %s), store file %s",
		g(hm.SourceBytes), g(hm.TargetBytes), hm.TargetVMs, g(hm.TargetGuestBytes), g(hm.TargetQEMUBytes),
		g(hm.TargetStoreBytes), hm.TargetStoreContents, g(hm.TargetHeadroomBytes), g(hm.TargetStoreDisk))
}

// BigVMMemory states the memory each host needs to move vms VMs of vmBytes each to each of targets, from catalog c's
// images made vmBytes / (their size) times larger (MemoryAt), under DefaultVariation. It returns one line per
// target count.
func BigVMMemory(m Model, c *Catalog, vms int, vmBytes uint64, targets []int) ([]string, error) {
	if len(c.Images) == 0 || len(c.Images[0].Pages) == 0 {
		return nil, fmt.Errorf("%w: empty catalog", ErrBadVariation)
	}
	base := uint64(len(c.Images[0].Pages)) * PageSize
	factor := max(vmBytes/base, 1)
	f, err := Generate(c, DefaultVariation(vms))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, t := range targets {
		hm, err := MemoryAt(m, f, t, factor)
		if err != nil {
			return nil, err
		}
		out = append(out, fmt.Sprintf("%d VMs × %.0f GiB to %d targets: %v", vms, float64(factor*base)/(1<<30), t, hm))
	}
	return out, nil
}
