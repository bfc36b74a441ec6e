// Package grouping decides where each VM of a scatter goes and in what order the shared contents are multicast.
//
// It is phases 3 and 4 of vmscatter (see DESIGN.md): pure logic over a sharing map, with no I/O, no sockets and
// no clock. The input is a Problem: the VMs with their memory and vCPUs, the targets with their capacities, and
// for every VM the sorted, de-duplicated list of the dense content ids (in [0, NumContents)) it holds. The dedup
// package produces that list; this package does not import it.
//
// The objective is the fabric cost: the sum over targets of the number of distinct contents held by the VMs
// placed there. Each distinct content crosses the source link once (multicast) whatever the placement, so the
// placement only changes the fabric side. Place offers three algorithms: the VMScatter greedy baseline, "ours"
// (MinHash neighbours plus local search, never worse than greedy) and an exact branch and bound for small cases.
// BuildSchedule turns a placement into multicast batches, ordered so that each target joins and leaves the
// group as rarely as possible.
//
// Everything here is deterministic: the same Problem gives the same Placement and Schedule. Nothing is shared
// across goroutines; a Problem may be read by concurrent calls as long as nobody writes to it.
package grouping

import (
	"errors"
	"fmt"
)

// PageSize is the size of one content (a guest page) in bytes.
const PageSize = 4096

// MaxVMs bounds the number of VMs of one Problem (per-target counters are 16 bits wide).
const MaxVMs = 1<<16 - 1

// MaxMemBytes bounds the memory of one VM or target (1 PiB), so that sums cannot overflow.
const MaxMemBytes = 1 << 50

// VM is one virtual machine to place.
type VM struct {
	Name     string
	MemBytes uint64
	VCPUs    int
	Pinned   string // name of the target the user pinned this VM to, or "" for free placement
	// Allowed names the only targets this VM may go to (the caller leaves out the targets that cannot run it); nil
	// or empty means any target. A pin must be one of them.
	Allowed []string
}

// Target is one destination host.
type Target struct {
	Name      string
	MemBytes  uint64 // memory available to migrated VMs
	VCPUSlots int    // vCPUs it accepts; 0 = unlimited
	MaxVMs    int    // VMs it accepts; 0 = unlimited
	// PerVMBytes is the memory each VM placed here takes besides its RAM (its QEMU process's own), counted against
	// MemBytes; 0 when MemBytes already means guest RAM alone.
	PerVMBytes uint64
}

// Problem is one placement problem. Contents[i] is the sorted, de-duplicated list of the content ids that VM i
// holds (zero pages excluded), each in [0, NumContents).
type Problem struct {
	VMs         []VM
	Targets     []Target
	Contents    [][]uint32
	NumContents int
}

// Algorithm names a placement algorithm.
type Algorithm string

const (
	// Greedy is the VMScatter (VEE 2013) baseline: fill the target with the most free memory first, picking
	// VMs by how many pages they share with the VMs already there.
	Greedy Algorithm = "greedy"
	// Ours starts from greedy and from MinHash-clustered packings, and improves them by local search (moves
	// and swaps). It is never worse than Greedy.
	Ours Algorithm = "ours"
	// Exact is a branch and bound, for at most ExactMaxVMs VMs and ExactMaxTargets targets.
	Exact Algorithm = "exact"
)

// Algorithms lists the algorithms Place accepts.
var Algorithms = []Algorithm{Greedy, Ours, Exact}

// Placement is the answer of Place.
type Placement struct {
	Assign      []int // VM index -> target index
	FabricPages int   // Σ over targets of the distinct contents of the VMs placed there
	SourcePages int   // distinct contents held by any VM: each crosses the source link once
	Algorithm   Algorithm
}

// FabricBytes is FabricPages in bytes.
func (p Placement) FabricBytes() uint64 { return uint64(p.FabricPages) * PageSize }

// SourceBytes is SourcePages in bytes.
func (p Placement) SourceBytes() uint64 { return uint64(p.SourcePages) * PageSize }

// ErrInvalidProblem wraps every error about a malformed Problem (not a capacity shortfall).
var ErrInvalidProblem = errors.New("grouping: invalid problem")

// ErrUnknownAlgorithm is returned by Place for an algorithm it does not know.
var ErrUnknownAlgorithm = errors.New("grouping: unknown algorithm")

// ErrTooLargeForExact is returned by Place(Exact) beyond ExactMaxVMs VMs or ExactMaxTargets targets.
var ErrTooLargeForExact = errors.New("grouping: problem too large for the exact algorithm")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidProblem, fmt.Sprintf(format, args...))
}

// validate checks the shape of p and returns the target index of every VM's pin (-1 when free) and, for every VM
// restricted to some targets, which targets it may go to (nil: any).
func (p Problem) validate() (pins []int, allowed [][]bool, err error) {
	if len(p.VMs) > MaxVMs {
		return nil, nil, invalid("%d VMs, at most %d", len(p.VMs), MaxVMs)
	}
	if len(p.Contents) != len(p.VMs) {
		return nil, nil, invalid("%d content lists for %d VMs", len(p.Contents), len(p.VMs))
	}
	if p.NumContents < 0 {
		return nil, nil, invalid("NumContents %d is negative", p.NumContents)
	}
	byName := make(map[string]int, len(p.Targets))
	for t, tg := range p.Targets {
		if tg.Name == "" {
			return nil, nil, invalid("target %d has no name", t)
		}
		if _, dup := byName[tg.Name]; dup {
			return nil, nil, invalid("two targets named %q", tg.Name)
		}
		if tg.MemBytes > MaxMemBytes || tg.PerVMBytes > MaxMemBytes {
			return nil, nil, invalid("target %s has more than 1 PiB of memory", tg.Name)
		}
		if tg.VCPUSlots < 0 || tg.MaxVMs < 0 {
			return nil, nil, invalid("target %s has a negative capacity", tg.Name)
		}
		byName[tg.Name] = t
	}
	pins = make([]int, len(p.VMs))
	allowed = make([][]bool, len(p.VMs))
	for i, vm := range p.VMs {
		if vm.MemBytes > MaxMemBytes {
			return nil, nil, invalid("VM %s has more than 1 PiB of memory", vm.Name)
		}
		if vm.VCPUs < 0 {
			return nil, nil, invalid("VM %s has %d vCPUs", vm.Name, vm.VCPUs)
		}
		pins[i] = -1
		if vm.Pinned != "" {
			t, ok := byName[vm.Pinned]
			if !ok {
				return nil, nil, invalid("VM %s is pinned to unknown target %q", vm.Name, vm.Pinned)
			}
			pins[i] = t
		}
		if len(vm.Allowed) > 0 {
			allowed[i] = make([]bool, len(p.Targets))
			for _, name := range vm.Allowed {
				t, ok := byName[name]
				if !ok {
					return nil, nil, invalid("VM %s is allowed on unknown target %q", vm.Name, name)
				}
				allowed[i][t] = true
			}
			if pins[i] >= 0 && !allowed[i][pins[i]] {
				return nil, nil, invalid("VM %s is pinned to %s, which is not among its allowed targets", vm.Name, vm.Pinned)
			}
		}
		prev := -1
		for _, c := range p.Contents[i] {
			if int64(c) >= int64(p.NumContents) {
				return nil, nil, invalid("VM %s holds content %d, beyond NumContents %d", vm.Name, c, p.NumContents)
			}
			if int64(c) <= int64(prev) {
				return nil, nil, invalid("contents of VM %s are not sorted and de-duplicated at %d", vm.Name, c)
			}
			prev = int(c)
		}
	}
	return pins, allowed, nil
}

// Place assigns every VM of p to a target with the given algorithm, within every capacity, pin and allowed set. It returns
// a *CapacityError when the capacities cannot be met, an error wrapping ErrInvalidProblem for a malformed
// Problem, ErrUnknownAlgorithm, or ErrTooLargeForExact.
func Place(p Problem, alg Algorithm) (Placement, error) {
	switch alg {
	case Greedy, Ours, Exact:
	default:
		return Placement{}, fmt.Errorf("%w: %q", ErrUnknownAlgorithm, alg)
	}
	pins, allowed, err := p.validate()
	if err != nil {
		return Placement{}, err
	}
	if alg == Exact && (len(p.VMs) > ExactMaxVMs || len(p.Targets) > ExactMaxTargets) {
		return Placement{}, fmt.Errorf("%w: %d VMs and %d targets, at most %d and %d",
			ErrTooLargeForExact, len(p.VMs), len(p.Targets), ExactMaxVMs, ExactMaxTargets)
	}
	caps := newCapacities(p, pins, allowed)
	packing, err := caps.feasiblePacking()
	if err != nil {
		return Placement{}, err
	}
	m := newModel(p)
	var assign []int
	switch alg {
	case Greedy:
		assign = greedy(m, caps, packing)
	case Ours:
		assign = ours(m, caps, packing)
	case Exact:
		assign = exact(m, caps, ours(m, caps, packing))
	}
	return Placement{
		Assign:      assign,
		FabricPages: m.fabric(assign),
		SourcePages: m.source,
		Algorithm:   alg,
	}, nil
}

// Evaluate returns the fabric pages of an assignment (VM index -> target index): the sum over targets of the
// number of distinct contents of the VMs placed there. It ignores capacities. VMs assigned outside
// [0, len(p.Targets)) and content ids outside [0, NumContents) are not counted.
func Evaluate(p Problem, assign []int) (fabricPages int) {
	byTarget := make([][]int, len(p.Targets))
	for v, t := range assign {
		if v < len(p.Contents) && t >= 0 && t < len(p.Targets) {
			byTarget[t] = append(byTarget[t], v)
		}
	}
	seen := make([]int32, max(p.NumContents, 0)) // last target (+1) that counted the content
	for t, vms := range byTarget {
		for _, v := range vms {
			for _, c := range p.Contents[v] {
				if int(c) < len(seen) && seen[c] != int32(t+1) {
					seen[c] = int32(t + 1)
					fabricPages++
				}
			}
		}
	}
	return fabricPages
}
