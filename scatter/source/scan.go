package source

import (
	"context"
	"fmt"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/qemu"
	"github.com/vmscatter/vmscatter/scatter/report"
)

// scan reads every VM's RAM while the VMs run and builds the sharing map (phase 2). A VM whose RAM cannot be read
// is left out with a warning: the scan is an optimization, never a correctness input.
func (s *sender) scan(ctx context.Context, rep *report.Report) *dedup.SharingMap {
	start := time.Now()
	var regions []dedup.Region
	for i, vm := range s.vms {
		if vm.report.Status != "" || (vm.qmp == nil && s.virt == nil) {
			continue
		}
		s.progress.set(vm.spec.Name, "scanning", "")
		var ram *qemu.GuestRAM
		var err error
		if s.virt != nil {
			ram, err = s.openDomainRAM(ctx, vm)
		} else {
			ram, err = qemu.OpenGuestRAM(ctx, vm.qmp, vm.pid)
		}
		if err != nil {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("VM %s: scan skipped, its pages travel literal: %v", vm.spec.Name, err))
			continue
		}
		s.rams = append(s.rams, ram) // the prime reads through it too; release closes it
		regions = append(regions, dedup.Region{VM: i, Block: ram.Block, Size: ram.Size, R: ram})
	}
	if len(regions) == 0 {
		return nil
	}
	sm, err := dedup.Scan(ctx, regions, dedup.ScanOptions{Fingerprint: s.fingerprint(), OnRegionError: func(e *dedup.RegionError) error {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("VM %s: scan of %s stopped: %v", s.vms[e.VM].spec.Name, e.Block, e.Err))
		return nil
	}})
	rep.Totals.ScanMS = time.Since(start).Milliseconds()
	if err != nil {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("scan failed, every page travels literal: %v", err))
		return nil
	}
	rep.Totals.NonZeroPages = int64(sm.NonZeroPages)
	for _, r := range sm.Regions {
		s.vms[r.VM].report.ScanNonZero += int64(r.Pages - r.ZeroPages)
	}
	rep.Totals.DistinctPages = int64(sm.Distinct())
	s.log.Info("scan done", "pages", sm.Pages, "zero", sm.ZeroPages, "distinct", sm.Distinct(), "ms", rep.Totals.ScanMS)
	return sm
}

// fingerprint is the fast page hash of the scan and of the held index: xxhash64 unless Config.Fingerprint says
// otherwise.
func (s *sender) fingerprint() dedup.FingerprintFunc {
	if s.cfg.Fingerprint != nil {
		return s.cfg.Fingerprint
	}
	return dedup.XXHash
}
