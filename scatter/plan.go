package scatter

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/grouping"
)

// Plan is the outcome of a dry run: where each VM would go and what it would cost. `vmscatter plan --json` prints
// it as is.
type Plan struct {
	Placement     map[string]string `json:"placement"` // VM -> target
	FabricBytes   int64             `json:"fabric_bytes"`
	SourceBytes   int64             `json:"source_bytes"`
	DistinctPages int               `json:"distinct_pages"`
	Algorithm     string            `json:"algorithm"`
	Schedule      PlanSchedule      `json:"schedule"`

	GreedyFabricBytes int64 `json:"greedy_fabric_bytes"` // the VMScatter baseline on the same input, for comparison
	Pages             int   `json:"pages"`
	ZeroPages         int   `json:"zero_pages"`
	NonZeroPages      int   `json:"nonzero_pages"`
	ScanMS            int64 `json:"scan_ms"`
	PlanMS            int64 `json:"plan_ms"`

	VMs     []string `json:"vms"`     // in input order
	Targets []string `json:"targets"` // in input order
}

// PlanSchedule summarizes the multicast schedule.
type PlanSchedule struct {
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

// PlanImages plans the placement of VMs given as RAM images onto targets given by capacity. Nothing moves.
func PlanImages(ctx context.Context, images []ImageSpec, targets []TargetSpec, alg string) (*Plan, error) {
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
	p, err := planProblem(sm, vms, gts, alg)
	if err != nil {
		return nil, err
	}
	p.ScanMS = scanMS
	return p, nil
}

// planProblem places the VMs of a sharing map (VM i of the map is vms[i]) and builds the schedule.
func planProblem(sm *dedup.SharingMap, vms []grouping.VM, targets []grouping.Target, alg string) (*Plan, error) {
	if alg == "" {
		alg = string(grouping.Ours)
	}
	prob := grouping.Problem{VMs: vms, Targets: targets, NumContents: sm.Distinct(), Contents: make([][]uint32, len(vms))}
	for i := range vms {
		if i < len(sm.PerVM) {
			ids := make([]uint32, len(sm.PerVM[i]))
			for k, id := range sm.PerVM[i] {
				ids[k] = uint32(id)
			}
			prob.Contents[i] = ids
		}
	}
	start := time.Now()
	pl, err := grouping.Place(prob, grouping.Algorithm(alg))
	if err != nil {
		return nil, fmt.Errorf("placement: %w (nothing was moved)", err)
	}
	sched := grouping.BuildSchedule(prob, pl.Assign)
	planMS := time.Since(start).Milliseconds()
	out := &Plan{Placement: map[string]string{}, FabricBytes: int64(pl.FabricPages) * dedup.PageSize,
		SourceBytes: int64(pl.SourcePages) * dedup.PageSize, DistinctPages: sm.Distinct(), Algorithm: string(pl.Algorithm),
		Schedule: PlanSchedule{Batches: len(sched.Batches), MembershipChanges: sched.MembershipChanges,
			Joins: sched.Joins, Leaves: sched.Leaves},
		Pages: sm.Pages, ZeroPages: sm.ZeroPages, NonZeroPages: sm.NonZeroPages, PlanMS: planMS}
	for i, vm := range vms {
		out.Placement[vm.Name] = targets[pl.Assign[i]].Name
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

// PlanLive plans a run on live VMs: the inventory, the sessions with the receivers (for their capacities) and the
// scan, as `send` would do them, then the placement. Nothing moves.
func PlanLive(ctx context.Context, cfg SendConfig) (*Plan, error) {
	cfg.Progress = nil
	s, err := newSender(cfg)
	if err != nil {
		return nil, err
	}
	rep := &Report{}
	if err := s.prepare(ctx, rep); err != nil {
		return nil, err
	}
	defer s.release()
	var vms []grouping.VM
	for _, vm := range s.vms {
		if vm.report.Status != "" {
			return nil, fmt.Errorf("VM %s: %s", vm.spec.Name, vm.report.Error)
		}
		vms = append(vms, grouping.VM{Name: vm.spec.Name, MemBytes: uint64(vm.ramBytes), VCPUs: 1, Pinned: cfg.Placement[vm.spec.Name]})
	}
	var targets []grouping.Target
	for _, t := range s.targets {
		if t.sc == nil {
			return nil, fmt.Errorf("receiver %s: %v", t.addr, t.err)
		}
		targets = append(targets, grouping.Target{Name: t.addr, MemBytes: t.info.capacity(), MaxVMs: t.info.MaxVMs})
	}
	sm := s.scan(ctx, rep)
	if sm == nil {
		return nil, fmt.Errorf("the scan read no guest memory: %v", rep.Warnings)
	}
	p, err := planProblem(sm, vms, targets, cfg.Algorithm)
	if err != nil {
		return nil, err
	}
	p.ScanMS = rep.Totals.ScanMS
	return p, nil
}
