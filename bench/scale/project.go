package scale

import (
	"fmt"
	"math"

	"github.com/vmscatter/vmscatter/grouping"
)

// Method is what one way of moving the fleet costs. Bytes are on the wire (WireOverhead included).
type Method struct {
	SourceBytes uint64  `json:"source_bytes"` // leaving the source host
	TargetBytes uint64  `json:"target_bytes"` // entering the targets, summed
	Seconds     float64 `json:"seconds"`      // from the start until the last VM runs at its target
	// The parts, for vmscatter: the prime (each distinct content once per target set, or once per target) and
	// the per-VM streams (references, zero and literal records, device state).
	PrimeBytes     uint64  `json:"prime_bytes,omitempty"`
	StreamBytes    uint64  `json:"stream_bytes,omitempty"`
	ScanSeconds    float64 `json:"scan_seconds,omitempty"`
	PrimeSeconds   float64 `json:"prime_seconds,omitempty"`
	MigrateSeconds float64 `json:"migrate_seconds,omitempty"`
	StalePages     int64   `json:"stale_pages,omitempty"` // pages dirtied between the scan and their VM's migration
}

// PlacementFigures are vmscatter's figures under one placement algorithm.
type PlacementFigures struct {
	Algorithm         grouping.Algorithm `json:"algorithm"`
	FabricPages       int                `json:"fabric_pages"` // Σ over targets of the distinct contents there
	FabricBytes       uint64             `json:"fabric_bytes"` // the same, compressed
	MembershipChanges int                `json:"membership_changes"`
	Batches           int                `json:"batches"`
	// LookaheadOneStallSeconds is what joins would add to the prime if the sender told a target to join only
	// when the batch before the one it needs starts: Σ over batches of max(0, JoinSeconds - the previous batch's
	// transfer time). The projection assumes joins issued JoinSeconds ahead of their batch (no stall); this
	// figure says how much that matters.
	LookaheadOneStallSeconds float64 `json:"lookahead_one_stall_seconds"`
	Multicast                Method  `json:"multicast"`
	Unicast                  Method  `json:"unicast"`
}

// Projection is the projected cost of moving a fleet to a number of targets.
type Projection struct {
	VMs            int        `json:"vms"`
	Targets        int        `json:"targets"`
	TargetMemBytes uint64     `json:"target_mem_bytes"` // each target's capacity
	Fleet          FleetStats `json:"fleet"`
	// Native is QEMU's own migration of every VM straight to the target "ours" chose.
	Native Method `json:"qemu_native"`
	// LowerBound leaves the source as each distinct non-zero content once, compressed, and enters the targets
	// as each such content once per target that needs it under "ours"; it ignores dirty pages, records and
	// fixed costs.
	LowerBound Method           `json:"lower_bound"`
	Ours       PlacementFigures `json:"ours"`
	Greedy     PlacementFigures `json:"greedy"`
	// Memory is what each host needs under "ours" (docs/store.md's rules).
	Memory HostMemory `json:"memory"`
}

// Project computes the projection of moving fleet f to the given number of targets under model m. It does no
// I/O. It fails with ErrBadModel, or with grouping's errors (e.g. a *grouping.CapacityError).
func Project(m Model, f *Fleet, targets int) (Projection, error) {
	if err := m.validate(); err != nil {
		return Projection{}, err
	}
	if f == nil || len(f.VMs) == 0 {
		return Projection{}, fmt.Errorf("%w: empty fleet", ErrBadVariation)
	}
	if targets <= 0 || targets > len(f.VMs) {
		return Projection{}, fmt.Errorf("%w: %d targets for %d VMs", ErrBadModel, targets, len(f.VMs))
	}
	p := Projection{VMs: len(f.VMs), Targets: targets, Fleet: f.Stats()}
	prob := problem(m, f, targets)
	p.TargetMemBytes = prob.Targets[0].MemBytes
	c := costs{m: m, f: f, stats: p.Fleet, seen: make([]int32, len(f.Sizes))}
	var err error
	if p.Ours, err = c.placement(prob, grouping.Ours); err != nil {
		return Projection{}, err
	}
	if p.Greedy, err = c.placement(prob, grouping.Greedy); err != nil {
		return Projection{}, err
	}
	p.Native = c.native(c.ours, targets)
	p.LowerBound = Method{
		SourceBytes: m.wire(p.Fleet.DistinctBytes),
		TargetBytes: m.wire(p.Ours.FabricBytes),
		PrimeBytes:  m.wire(p.Fleet.DistinctBytes),
	}
	p.LowerBound.Seconds = m.linkSeconds(p.LowerBound.SourceBytes, wireAll(m, c.oursFabric))
	p.Memory = c.hostMemory(c.ours, targets, 1)
	return p, nil
}

// problem turns the fleet into a placement problem: one vCPU per VM, targets of equal memory, each VM charged its
// RAM and QEMU's overhead (QEMUOverheadBytes) as placement charges it on a target that offers its available memory.
func problem(m Model, f *Fleet, targets int) grouping.Problem {
	prob := grouping.Problem{NumContents: len(f.Sizes)}
	var total, largest uint64
	for _, vm := range f.VMs {
		prob.VMs = append(prob.VMs, grouping.VM{Name: vm.Name, MemBytes: vm.MemBytes, VCPUs: 1})
		prob.Contents = append(prob.Contents, vm.Contents)
		total += vm.MemBytes
		largest = max(largest, vm.MemBytes)
	}
	n := len(f.VMs)
	perTarget := (n + targets - 1) / targets
	capBytes := uint64(math.Ceil(float64(perTarget) * (float64(total)/float64(n) + QEMUOverheadBytes) * m.CapacitySlack))
	capBytes = max(capBytes, largest+QEMUOverheadBytes)
	capBytes = (capBytes + PageSize - 1) / PageSize * PageSize
	for t := range targets {
		prob.Targets = append(prob.Targets, grouping.Target{Name: fmt.Sprintf("t%03d", t), MemBytes: capBytes,
			PerVMBytes: QEMUOverheadBytes})
	}
	return prob
}

// costs computes the methods' figures for one fleet and model.
type costs struct {
	m          Model
	f          *Fleet
	stats      FleetStats
	seen       []int32 // per content: the last target (+1) that counted it
	ours       []int   // ours's assignment, for QEMU native
	oursFabric []uint64
}

func (c *costs) placement(prob grouping.Problem, alg grouping.Algorithm) (PlacementFigures, error) {
	pl, err := grouping.Place(prob, alg)
	if err != nil {
		return PlacementFigures{}, fmt.Errorf("scale: placing %d VMs on %d targets (%s): %w", len(prob.VMs), len(prob.Targets), alg, err)
	}
	pf := PlacementFigures{Algorithm: alg, FabricPages: pl.FabricPages}
	fabric := c.fabric(pl.Assign, len(prob.Targets))
	for _, b := range fabric {
		pf.FabricBytes += b
	}
	used := map[int]bool{}
	for _, t := range pl.Assign {
		used[t] = true
	}
	pf.MembershipChanges = 2 * len(used)
	if c.m.Schedule {
		s := grouping.BuildSchedule(prob, pl.Assign)
		pf.MembershipChanges, pf.Batches = s.MembershipChanges, len(s.Batches)
		prev := 0.0 // the previous batch's transfer time; the first batch waits for its joins
		for _, b := range s.Batches {
			pf.LookaheadOneStallSeconds += math.Max(0, c.m.JoinSeconds-prev)
			var bytes uint64
			for _, id := range b.Contents {
				bytes += uint64(c.f.Sizes[id])
			}
			prev = float64(c.m.wire(bytes)) * 8 / math.Min(c.m.UplinkBps, c.m.downlink())
		}
	}
	if alg == grouping.Ours {
		c.ours, c.oursFabric = pl.Assign, fabric
	}
	pf.Multicast = c.scatter(pl.Assign, fabric, true)
	pf.Unicast = c.scatter(pl.Assign, fabric, false)
	return pf, nil
}

// fabric is, per target, the compressed bytes of the distinct contents its VMs hold.
func (c *costs) fabric(assign []int, targets int) []uint64 {
	byTarget := make([][]int, targets)
	for v, t := range assign {
		byTarget[t] = append(byTarget[t], v)
	}
	clear(c.seen)
	out := make([]uint64, targets)
	for t, vms := range byTarget {
		for _, v := range vms {
			for _, id := range c.f.VMs[v].Contents {
				if c.seen[id] != int32(t+1) {
					c.seen[id] = int32(t + 1)
					out[t] += uint64(c.f.Sizes[id])
				}
			}
		}
	}
	return out
}

// native is QEMU's own migration: every page of every VM, raw, to its target.
func (c *costs) native(assign []int, targets int) Method {
	perTarget := make([]uint64, targets)
	var src uint64
	for v, vm := range c.f.VMs {
		b := c.m.wire(uint64(vm.NonZeroPages+vm.DirtyPages)*nativePageRecord + uint64(vm.ZeroPages)*nativeZeroRecord + c.m.DeviceStateBytes)
		src += b
		perTarget[assign[v]] += b
	}
	secs := float64(waves(len(c.f.VMs), c.m.NativeConcurrency))*c.m.StartSeconds + c.m.linkSeconds(src, perTarget)
	return Method{SourceBytes: src, TargetBytes: src, Seconds: secs, StreamBytes: src, MigrateSeconds: secs}
}

// scatter is vmscatter: scan, prime (multicast: each distinct content once, into every target that needs it;
// unicast: once per such target), then the per-VM streams. Over multicast, the sender issues each join
// JoinSeconds before its batch, so only the first join is on the critical path.
func (c *costs) scatter(assign []int, fabric []uint64, multicast bool) Method {
	m := c.m
	var out Method
	ram := float64(c.stats.RAMBytes)
	cores := float64(m.SourceCores)
	out.ScanSeconds = ram / (m.ScanBytesPerSec * cores)

	fabricWire := wireAll(m, fabric)
	var fabricTotal uint64
	for _, b := range fabricWire {
		fabricTotal += b
	}
	compress := float64(c.stats.Distinct) * PageSize / (m.CompressBytesPerSec * cores)
	out.PrimeBytes = fabricTotal
	join := 0.0
	if multicast {
		out.PrimeBytes, join = m.wire(c.stats.DistinctBytes), m.JoinSeconds
	}
	out.PrimeSeconds = math.Max(m.linkSeconds(out.PrimeBytes, fabricWire), compress) + join

	wait := out.ScanSeconds + out.PrimeSeconds
	perTarget := make([]uint64, len(fabric))
	for v, vm := range c.f.VMs {
		stale := min(vm.DirtyPages, int(math.Round(m.DirtyPagesPerSec*wait)))
		out.StalePages += int64(stale)
		var staleBytes uint64
		if vm.DirtyPages > 0 {
			staleBytes = uint64(math.Round(float64(vm.DirtyBytes) * float64(stale) / float64(vm.DirtyPages)))
		}
		b := m.wire(uint64(vm.NonZeroPages-stale)*refRecord + uint64(vm.ZeroPages)*zeroRecord +
			uint64(stale+vm.DirtyPages)*literalRecordHdr + staleBytes + vm.DirtyBytes + m.DeviceStateBytes)
		out.StreamBytes += b
		perTarget[assign[v]] += b
	}
	process := ram / (m.StreamBytesPerSec * cores)
	out.MigrateSeconds = float64(waves(len(c.f.VMs), m.ScatterConcurrency))*m.StartSeconds +
		math.Max(m.linkSeconds(out.StreamBytes, perTarget), process)

	out.SourceBytes = out.PrimeBytes + out.StreamBytes
	out.TargetBytes = fabricTotal + out.StreamBytes
	out.Seconds = out.ScanSeconds + out.PrimeSeconds + out.MigrateSeconds
	return out
}

func wireAll(m Model, b []uint64) []uint64 {
	out := make([]uint64, len(b))
	for i, x := range b {
		out[i] = m.wire(x)
	}
	return out
}
