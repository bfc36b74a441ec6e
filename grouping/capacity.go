package grouping

import (
	"fmt"
	"slices"
)

// Capacity names one capacity of a target.
type Capacity string

const (
	CapMemory    Capacity = "memory"
	CapVCPUSlots Capacity = "vCPU slots"
	CapVMLimit   Capacity = "VM limit"
)

// Failure says at which stage the capacities failed.
type Failure string

const (
	// FailTotal: the VMs together need more of a capacity than all targets together have.
	FailTotal Failure = "total"
	// FailPinned: a pinned VM does not fit on its target next to the VMs pinned there before it.
	FailPinned Failure = "pinned"
	// FailPacking: the totals fit, but a VM fits on no target once the pinned and larger VMs are placed.
	FailPacking Failure = "packing"
)

// CapacityError says which capacity cannot be met and by how much. Need and Have are in bytes for memory, in
// vCPUs for vCPU slots and in VMs for the VM limit; Need-Have is the shortfall.
type CapacityError struct {
	Failure  Failure
	Capacity Capacity
	VM       string // the VM that does not fit; "" for FailTotal
	Target   string // the pinned target, or the target that came closest; "" for FailTotal
	Need     uint64 // what is needed: the total, or the VM's own demand
	Have     uint64 // what is there: the total, or what is free on Target
	// Restricted says that the VM may go to some targets only (VM.Allowed): Target is the closest of those.
	Restricted bool
}

// Shortfall is how much of the capacity is missing.
func (e *CapacityError) Shortfall() uint64 { return e.Need - e.Have }

func (e *CapacityError) Error() string {
	q := func(n uint64) string { return formatQuantity(e.Capacity, n) }
	switch e.Failure {
	case FailTotal:
		switch e.Capacity {
		case CapMemory:
			return fmt.Sprintf("grouping: total VM memory %s exceeds total target memory %s by %s", q(e.Need), q(e.Have), q(e.Shortfall()))
		case CapVCPUSlots:
			return fmt.Sprintf("grouping: total VM vCPUs %d exceed total target vCPU slots %d by %d", e.Need, e.Have, e.Shortfall())
		default:
			return fmt.Sprintf("grouping: %d VMs exceed the targets' total VM limit %d by %d", e.Need, e.Have, e.Shortfall())
		}
	case FailPinned:
		if e.Capacity == CapVMLimit {
			return fmt.Sprintf("grouping: VM %s pinned to %s but %s already holds its limit of %s", e.VM, e.Target, e.Target, vms(e.limit()))
		}
		return fmt.Sprintf("grouping: VM %s (%s) pinned to %s but %s has %s free (short by %s)", e.VM, q(e.Need), e.Target, e.Target, q(e.Have), q(e.Shortfall()))
	default:
		targets := "target"
		if e.Restricted {
			targets = "target allowed to it"
		}
		if e.Capacity == CapVMLimit {
			return fmt.Sprintf("grouping: VM %s fits on no %s: every one with room for it holds its limit of VMs (%s: %s)", e.VM, targets, e.Target, vms(e.limit()))
		}
		return fmt.Sprintf("grouping: VM %s (%s) fits on no %s once the pinned and larger VMs are placed: the most %s free is %s on %s (short by %s)",
			e.VM, q(e.Need), targets, e.Capacity, q(e.Have), e.Target, q(e.Shortfall()))
	}
}

// limit is the VM limit of Target for CapVMLimit errors, where Need is the limit+1 and Have the limit.
func (e *CapacityError) limit() uint64 { return e.Have }

func vms(n uint64) string {
	if n == 1 {
		return "1 VM"
	}
	return fmt.Sprintf("%d VMs", n)
}

func formatQuantity(c Capacity, n uint64) string {
	switch c {
	case CapMemory:
		return FormatBytes(n)
	case CapVCPUSlots:
		if n == 1 {
			return "1 vCPU"
		}
		return fmt.Sprintf("%d vCPUs", n)
	default:
		return fmt.Sprintf("%d", n)
	}
}

// FormatBytes renders a byte count for people, in the largest binary unit it reaches: exact when the unit
// divides it, else with one decimal.
func FormatBytes(n uint64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	j := 0
	for j+1 < len(units) && n >= 1<<(10*(j+1)) {
		j++
	}
	unit := uint64(1) << (10 * j)
	if n%unit == 0 {
		return fmt.Sprintf("%d %s", n/unit, units[j])
	}
	return fmt.Sprintf("%.1f %s", float64(n)/float64(unit), units[j])
}

// capacities is the capacity side of a Problem, in flat arrays.
type capacities struct {
	p       Problem
	pins    []int    // per VM: the pinned target, or -1
	allowed [][]bool // per VM: the targets it may go to, or nil for any
	vmMem   []uint64
	vmVCPUs []int
}

func newCapacities(p Problem, pins []int, allowed [][]bool) *capacities {
	c := &capacities{p: p, pins: pins, allowed: allowed, vmMem: make([]uint64, len(p.VMs)), vmVCPUs: make([]int, len(p.VMs))}
	for v, vm := range p.VMs {
		c.vmMem[v] = vm.MemBytes
		c.vmVCPUs[v] = vm.VCPUs
	}
	return c
}

// memOn is the memory VM v takes on target t: its RAM and what the target charges each VM besides.
func (c *capacities) memOn(v, t int) uint64 { return c.vmMem[v] + c.p.Targets[t].PerVMBytes }

// mayGo reports whether VM v may go to target t at all, whatever the load.
func (c *capacities) mayGo(v, t int) bool { return c.allowed[v] == nil || c.allowed[v][t] }

// sameAdmission reports whether every VM may go to targets t and u alike.
func (c *capacities) sameAdmission(t, u int) bool {
	for _, a := range c.allowed {
		if a != nil && a[t] != a[u] {
			return false
		}
	}
	return true
}

// fitsWith reports whether target t, now carrying l, can take VM add in place of VM minus (-1 for none).
func (c *capacities) fitsWith(t int, l load, add, minus int) bool {
	if !c.mayGo(add, t) {
		return false
	}
	tg := &c.p.Targets[t]
	mem, vcpus, n := l.mem+c.memOn(add, t), l.vcpus+c.vmVCPUs[add], l.vms+1
	if minus >= 0 {
		mem, vcpus, n = mem-c.memOn(minus, t), vcpus-c.vmVCPUs[minus], n-1
	}
	return mem <= tg.MemBytes && (tg.VCPUSlots == 0 || vcpus <= tg.VCPUSlots) && (tg.MaxVMs == 0 || n <= tg.MaxVMs)
}

// loads sums what the VMs of assign (entries -1 are skipped) use on each target.
func (c *capacities) loads(assign []int) []load {
	l := make([]load, len(c.p.Targets))
	for v, t := range assign {
		if t >= 0 {
			l[t].mem += c.memOn(v, t)
			l[t].vcpus += c.vmVCPUs[v]
			l[t].vms++
		}
	}
	return l
}

// freeVMs orders the VMs that are not pinned: larger memory first, then more vCPUs, then index.
func (c *capacities) freeVMs() []int {
	var free []int
	for v, t := range c.pins {
		if t < 0 {
			free = append(free, v)
		}
	}
	slices.SortStableFunc(free, func(a, b int) int {
		if c.vmMem[a] != c.vmMem[b] {
			if c.vmMem[a] > c.vmMem[b] {
				return -1
			}
			return 1
		}
		return c.vmVCPUs[b] - c.vmVCPUs[a]
	})
	return free
}

// feasiblePacking checks the capacities: the totals first, then the pins, then a bin packing of the free VMs.
// It returns an assignment that meets every capacity and pin, or a *CapacityError.
func (c *capacities) feasiblePacking() ([]int, error) {
	if err := c.checkTotals(); err != nil {
		return nil, err
	}
	assign := make([]int, len(c.p.VMs))
	for v := range assign {
		assign[v] = -1
	}
	l := make([]load, len(c.p.Targets))
	for v, t := range c.pins {
		if t < 0 {
			continue
		}
		if !c.fitsWith(t, l[t], v, -1) {
			return nil, c.pinError(v, t, l[t])
		}
		assign[v] = t
		l[t] = load{l[t].mem + c.memOn(v, t), l[t].vcpus + c.vmVCPUs[v], l[t].vms + 1}
	}
	free := c.freeVMs()
	failed := -1
	for _, byVCPU := range []bool{false, true} {
		order := free
		if byVCPU {
			order = slices.Clone(free)
			slices.SortStableFunc(order, func(a, b int) int { return c.vmVCPUs[b] - c.vmVCPUs[a] })
		}
		out := slices.Clone(assign)
		if f := c.bestFitDecreasing(out, slices.Clone(l), order); f < 0 {
			return out, nil
		} else if failed < 0 {
			failed = f
		}
	}
	// The heuristics failed; small cases get an exhaustive search before the verdict.
	if len(free) <= 16 {
		out := slices.Clone(assign)
		budget := 2_000_000
		if c.backtrack(out, slices.Clone(l), free, 0, &budget) {
			return out, nil
		}
	}
	out := slices.Clone(assign)
	ll := slices.Clone(l)
	c.bestFitDecreasing(out, ll, free[:slices.Index(free, failed)])
	return nil, c.packingError(failed, ll)
}

func (c *capacities) checkTotals() error {
	var vmMem, tMem uint64
	vmVCPUs, slots, maxVMs := 0, 0, 0
	slotsLimited, vmsLimited := true, true
	perVM := uint64(0) // what every target charges a VM at least, besides its RAM
	for i, t := range c.p.Targets {
		if i == 0 || t.PerVMBytes < perVM {
			perVM = t.PerVMBytes
		}
	}
	for v := range c.p.VMs {
		vmMem += c.vmMem[v] + perVM
		vmVCPUs += c.vmVCPUs[v]
	}
	for _, t := range c.p.Targets {
		tMem += t.MemBytes
		slots += t.VCPUSlots
		maxVMs += t.MaxVMs
		slotsLimited = slotsLimited && t.VCPUSlots > 0
		vmsLimited = vmsLimited && t.MaxVMs > 0
	}
	switch {
	case vmMem > tMem:
		return &CapacityError{Failure: FailTotal, Capacity: CapMemory, Need: vmMem, Have: tMem}
	case slotsLimited && vmVCPUs > slots:
		return &CapacityError{Failure: FailTotal, Capacity: CapVCPUSlots, Need: uint64(vmVCPUs), Have: uint64(slots)}
	case vmsLimited && len(c.p.VMs) > maxVMs:
		return &CapacityError{Failure: FailTotal, Capacity: CapVMLimit, Need: uint64(len(c.p.VMs)), Have: uint64(maxVMs)}
	}
	return nil
}

func (c *capacities) pinError(v, t int, l load) error {
	tg := c.p.Targets[t]
	e := &CapacityError{Failure: FailPinned, VM: c.p.VMs[v].Name, Target: tg.Name}
	switch {
	case l.mem+c.memOn(v, t) > tg.MemBytes:
		e.Capacity, e.Need, e.Have = CapMemory, c.memOn(v, t), tg.MemBytes-min(l.mem, tg.MemBytes)
	case tg.VCPUSlots > 0 && l.vcpus+c.vmVCPUs[v] > tg.VCPUSlots:
		e.Capacity, e.Need, e.Have = CapVCPUSlots, uint64(c.vmVCPUs[v]), uint64(tg.VCPUSlots-l.vcpus)
	default:
		e.Capacity, e.Need, e.Have = CapVMLimit, uint64(tg.MaxVMs+1), uint64(tg.MaxVMs)
	}
	return e
}

// packingError explains why VM v fits on no target (of those it may go to) under loads l: no target has its memory;
// else none of those with its memory has its vCPUs; else all those with both hold their VM limit.
func (c *capacities) packingError(v int, l []load) error {
	e := &CapacityError{Failure: FailPacking, VM: c.p.VMs[v].Name, Restricted: c.allowed[v] != nil}
	best := -1
	var memFit []int
	for t, tg := range c.p.Targets {
		if !c.mayGo(v, t) {
			continue
		}
		free := tg.MemBytes - min(l[t].mem, tg.MemBytes)
		if free >= c.memOn(v, t) {
			memFit = append(memFit, t)
		} else if best < 0 || free > c.p.Targets[best].MemBytes-l[best].mem {
			best = t
		}
	}
	if len(memFit) == 0 {
		e.Capacity, e.Need = CapMemory, c.vmMem[v]
		if best >= 0 {
			e.Target, e.Need, e.Have = c.p.Targets[best].Name, c.memOn(v, best), c.p.Targets[best].MemBytes-min(l[best].mem, c.p.Targets[best].MemBytes)
		}
		return e
	}
	best = -1
	var slotFit []int
	for _, t := range memFit {
		tg := c.p.Targets[t]
		if tg.VCPUSlots == 0 || l[t].vcpus+c.vmVCPUs[v] <= tg.VCPUSlots {
			slotFit = append(slotFit, t)
		} else if best < 0 || tg.VCPUSlots-l[t].vcpus > c.p.Targets[best].VCPUSlots-l[best].vcpus {
			best = t
		}
	}
	if len(slotFit) == 0 {
		tg := c.p.Targets[best]
		e.Capacity, e.Target, e.Need, e.Have = CapVCPUSlots, tg.Name, uint64(c.vmVCPUs[v]), uint64(tg.VCPUSlots-l[best].vcpus)
		return e
	}
	tg := c.p.Targets[slotFit[0]]
	e.Capacity, e.Target, e.Need, e.Have = CapVMLimit, tg.Name, uint64(tg.MaxVMs+1), uint64(tg.MaxVMs)
	return e
}

// bestFitDecreasing places the VMs of order, each on the target where it leaves the least memory free. It
// returns the first VM that fits nowhere, or -1.
func (c *capacities) bestFitDecreasing(assign []int, l []load, order []int) int {
	for _, v := range order {
		best := -1
		var bestFree uint64
		for t, tg := range c.p.Targets {
			if !c.fitsWith(t, l[t], v, -1) {
				continue
			}
			if free := tg.MemBytes - l[t].mem - c.memOn(v, t); best < 0 || free < bestFree {
				best, bestFree = t, free
			}
		}
		if best < 0 {
			return v
		}
		assign[v] = best
		l[best] = load{l[best].mem + c.memOn(v, best), l[best].vcpus + c.vmVCPUs[v], l[best].vms + 1}
	}
	return -1
}

// backtrack searches every placement of order[i:] within budget nodes.
func (c *capacities) backtrack(assign []int, l []load, order []int, i int, budget *int) bool {
	if i == len(order) {
		return true
	}
	if *budget--; *budget < 0 {
		return false
	}
	v := order[i]
	for t := range c.p.Targets {
		if !c.fitsWith(t, l[t], v, -1) || c.sameAsEarlier(t, l) {
			continue
		}
		old := l[t]
		assign[v], l[t] = t, load{old.mem + c.memOn(v, t), old.vcpus + c.vmVCPUs[v], old.vms + 1}
		if c.backtrack(assign, l, order, i+1, budget) {
			return true
		}
		assign[v], l[t] = -1, old
	}
	return false
}

// sameAsEarlier reports whether an earlier target has the same capacities, the same load and admits the same VMs
// as target t, so that trying t again is pointless.
func (c *capacities) sameAsEarlier(t int, l []load) bool {
	for u := range t {
		if c.p.Targets[u].MemBytes == c.p.Targets[t].MemBytes && c.p.Targets[u].VCPUSlots == c.p.Targets[t].VCPUSlots &&
			c.p.Targets[u].MaxVMs == c.p.Targets[t].MaxVMs && c.p.Targets[u].PerVMBytes == c.p.Targets[t].PerVMBytes && l[u] == l[t] && c.sameAdmission(u, t) {
			return true
		}
	}
	return false
}
