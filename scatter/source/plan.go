package source

import (
	"context"
	"fmt"

	"github.com/vmscatter/vmscatter/grouping"
	"github.com/vmscatter/vmscatter/scatter/plan"
	"github.com/vmscatter/vmscatter/scatter/report"
)

// Plan plans a run on live VMs: the inventory, the sessions with the receivers (for their capacities) and the
// scan, as `send` would do them, then the placement. Nothing moves.
func Plan(ctx context.Context, cfg Config) (*plan.Plan, error) {
	cfg.Progress = nil
	s, err := newSender(cfg)
	if err != nil {
		return nil, err
	}
	rep := &report.Report{}
	if err := s.prepare(ctx, rep); err != nil {
		return nil, err
	}
	defer s.release()
	var targets []grouping.Target
	for _, t := range s.targets {
		if t.sc == nil {
			return nil, fmt.Errorf("receiver %s: %v", t.addr, t.err)
		}
		targets = append(targets, placeTarget(t))
	}
	var vms []grouping.VM
	for _, vm := range s.vms {
		if vm.report.Status != "" {
			return nil, fmt.Errorf("VM %s: %s", vm.spec.Name, vm.report.Error)
		}
		pin := cfg.Placement[vm.spec.Name]
		allowed, err := allowedTargets(vm, s.targets, pin)
		if err != nil {
			return nil, err
		}
		vms = append(vms, grouping.VM{Name: vm.spec.Name, MemBytes: uint64(vm.ramBytes), VCPUs: vm.vcpus, Pinned: pin, Allowed: allowed})
	}
	sm := s.scan(ctx, rep)
	if sm == nil {
		return nil, fmt.Errorf("the scan read no guest memory: %v", rep.Warnings)
	}
	p, err := plan.FromSharing(sm, vms, targets, cfg.Algorithm)
	if err != nil {
		return nil, err
	}
	p.ScanMS = rep.Totals.ScanMS
	return p, nil
}
