// Package plan builds the placement problem of a run and solves it: where each VM goes and the prime's batch
// schedule. `vmscatter send` and `vmscatter plan` use the one builder (Problem) and solver (Solve), so a dry run
// predicts what a run does. Images plans from RAM images on disk, without live VMs.
package plan

import (
	"context"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/grouping"
	"github.com/vmscatter/vmscatter/scatter/report"
)

// Plan is the outcome of a dry run: where each VM would go and what it would cost. `vmscatter plan --json` prints
// it as is.
type Plan struct {
	Placement     map[string]string `json:"placement"` // VM -> target
	FabricBytes   int64             `json:"fabric_bytes"`
	SourceBytes   int64             `json:"source_bytes"`
	DistinctPages int               `json:"distinct_pages"`
	Algorithm     string            `json:"algorithm"`
	Schedule      Schedule          `json:"schedule"`

	GreedyFabricBytes int64 `json:"greedy_fabric_bytes"` // the VMScatter baseline on the same input, for comparison
	Pages             int   `json:"pages"`
	ZeroPages         int   `json:"zero_pages"`
	NonZeroPages      int   `json:"nonzero_pages"`
	ScanMS            int64 `json:"scan_ms"`
	PlanMS            int64 `json:"plan_ms"`

	VMs     []string `json:"vms"`     // in input order
	Targets []string `json:"targets"` // in input order
}

// Schedule summarizes the multicast schedule.
type Schedule struct {
	Batches           int `json:"batches"`
	MembershipChanges int `json:"membership_changes"`
	Joins             int `json:"joins"`
	Leaves            int `json:"leaves"`
}

// ImageSpec names a guest RAM image (as pmemsave or dump-guest-memory in raw form writes it).
type ImageSpec struct {
	Name string
	Path string
}

// TargetSpec names a target and the memory it offers.
type TargetSpec struct {
	Name     string
	MemBytes uint64
	MaxVMs   int
}

// Problem is the placement problem of vms onto targets: VM i holds the contents of the sharing map's VM slots[i]
// (sm nil: no scan, and nothing to group by).
func Problem(sm *dedup.SharingMap, vms []grouping.VM, slots []int, targets []grouping.Target) grouping.Problem {
	p := grouping.Problem{VMs: vms, Targets: targets, Contents: make([][]uint32, len(vms))}
	if sm == nil {
		return p
	}
	p.NumContents = sm.Distinct()
	for i := range vms {
		if s := slots[i]; s >= 0 && s < len(sm.PerVM) {
			ids := make([]uint32, len(sm.PerVM[s]))
			for k, id := range sm.PerVM[s] {
				ids[k] = uint32(id)
			}
			p.Contents[i] = ids
		}
	}
	return p
}

// Solution is a solved problem: each VM's target, what the placement costs, and the prime's schedule.
type Solution struct {
	Assign    []int // VM index -> target index
	Placement report.PlacementReport
	Schedule  grouping.Schedule // empty without sharing
	Greedy    int64             // the VMScatter greedy's fabric bytes on the same input, when asked for
}

// Solve places the problem's VMs with alg ("" means ours) and builds the schedule. Without sharing (no scan) the
// VMs are spread round-robin, pins honoured, and there is no schedule. A capacity that cannot be met is an error,
// and nothing moves.
func Solve(p grouping.Problem, alg string, sharing bool) (Solution, error) {
	if !sharing {
		return Solution{Assign: roundRobin(p), Placement: report.PlacementReport{Algorithm: "round-robin"}}, nil
	}
	if alg == "" {
		alg = string(grouping.Ours)
	}
	pl, err := grouping.Place(p, grouping.Algorithm(alg))
	if err != nil {
		return Solution{}, fmt.Errorf("placement: %w (nothing was moved)", err)
	}
	sched := grouping.BuildSchedule(p, pl.Assign)
	return Solution{Assign: pl.Assign, Schedule: sched, Placement: report.PlacementReport{Algorithm: string(pl.Algorithm),
		FabricBytes: int64(pl.FabricPages) * dedup.PageSize, SourceBytes: int64(pl.SourcePages) * dedup.PageSize,
		Batches: len(sched.Batches), MembershipChanges: sched.MembershipChanges}}, nil
}

// FromSharing plans vms (VM i is the sharing map's VM i) onto targets and describes the outcome for `plan`.
func FromSharing(sm *dedup.SharingMap, vms []grouping.VM, targets []grouping.Target, alg string) (*Plan, error) {
	slots := make([]int, len(vms))
	for i := range slots {
		slots[i] = i
	}
	prob := Problem(sm, vms, slots, targets)
	start := time.Now()
	sol, err := Solve(prob, alg, true)
	if err != nil {
		return nil, err
	}
	out := &Plan{Placement: map[string]string{}, FabricBytes: sol.Placement.FabricBytes, SourceBytes: sol.Placement.SourceBytes,
		DistinctPages: sm.Distinct(), Algorithm: sol.Placement.Algorithm,
		Schedule: Schedule{Batches: len(sol.Schedule.Batches), MembershipChanges: sol.Schedule.MembershipChanges,
			Joins: sol.Schedule.Joins, Leaves: sol.Schedule.Leaves},
		Pages: sm.Pages, ZeroPages: sm.ZeroPages, NonZeroPages: sm.NonZeroPages, PlanMS: time.Since(start).Milliseconds()}
	for i, vm := range vms {
		out.Placement[vm.Name] = targets[sol.Assign[i]].Name
		out.VMs = append(out.VMs, vm.Name)
	}
	for _, t := range targets {
		out.Targets = append(out.Targets, t.Name)
	}
	if g, err := grouping.Place(prob, grouping.Greedy); err == nil {
		out.GreedyFabricBytes = int64(g.FabricPages) * dedup.PageSize
	}
	return out, nil
}

// Images plans the placement of VMs given as RAM images onto targets given by capacity. Nothing moves.
func Images(ctx context.Context, images []ImageSpec, targets []TargetSpec, alg string) (*Plan, error) {
	if len(images) == 0 || len(targets) == 0 {
		return nil, fmt.Errorf("plan needs at least one image and one target")
	}
	var regions []dedup.Region
	var vms []grouping.VM
	for i, im := range images {
		f, err := os.Open(im.Path)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", im.Name, err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return nil, err
		}
		size := st.Size() / dedup.PageSize * dedup.PageSize
		if size == 0 {
			return nil, fmt.Errorf("image %s (%s) holds less than one page", im.Name, im.Path)
		}
		regions = append(regions, dedup.Region{VM: i, Block: "image", Size: size, R: f})
		vms = append(vms, grouping.VM{Name: im.Name, MemBytes: uint64(st.Size()), VCPUs: 1})
	}
	var gts []grouping.Target
	for _, t := range targets {
		gts = append(gts, grouping.Target{Name: t.Name, MemBytes: t.MemBytes, MaxVMs: t.MaxVMs})
	}
	start := time.Now()
	sm, err := dedup.Scan(ctx, regions, dedup.ScanOptions{})
	if err != nil {
		return nil, fmt.Errorf("scan: %w", err)
	}
	scanMS := time.Since(start).Milliseconds()
	p, err := FromSharing(sm, vms, gts, alg)
	if err != nil {
		return nil, err
	}
	p.ScanMS = scanMS
	return p, nil
}

// roundRobin spreads VMs over targets in order, honouring pins and allowed targets (capacity is left to the
// receivers). A VM allowed on some targets only takes the next of those in the rotation.
func roundRobin(p grouping.Problem) []int {
	idx := map[string]int{}
	for i, t := range p.Targets {
		idx[t.Name] = i
	}
	assign := make([]int, len(p.VMs))
	next := 0
	for i, vm := range p.VMs {
		if vm.Pinned != "" {
			assign[i] = idx[vm.Pinned]
			continue
		}
		t := next % len(p.Targets)
		for k := range len(p.Targets) {
			if u := (next + k) % len(p.Targets); len(vm.Allowed) == 0 || slices.Contains(vm.Allowed, p.Targets[u].Name) {
				t = u
				break
			}
		}
		assign[i] = t
		next = t + 1
	}
	return assign
}
