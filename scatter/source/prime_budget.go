package source

import (
	"fmt"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/grouping"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// storeCapacity is how many contents a target's content store holds for the session: what it advertised, or for a
// receiver from before store_contents, its store limit in pages (it kept pages in memory). A target's seeded
// contents are in the same store.
func storeCapacity(m wire.InfoMsg) int {
	if m.StoreContents > 0 {
		return m.StoreContents
	}
	return int(max(m.StoreLimit, 0) / dedup.PageSize)
}

// fitStores cuts the schedule's batches to the targets' content stores before the prime (grouping.FitStores): a
// target is never sent more contents than its store has room for, less what its seed put there, and it keeps those
// whose references save the most. The rest of its VMs' pages travel literal. The report says, per target, what its
// store held and how many contents were left out.
func (s *sender) fitStores(sm *dedup.SharingMap, rep *report.Report) {
	caps := make([]int, len(s.targets))
	for i, t := range s.targets {
		caps[i] = grouping.Unlimited
		if t.sc != nil {
			caps[i] = max(storeCapacity(t.info)-t.seedCount(), 0)
		}
	}
	// The target of each sharing-map VM slot (-1: not migrated, or not placed).
	slotTarget := make([]int, len(sm.PerVM))
	for i := range slotTarget {
		slotTarget[i] = -1
	}
	tIndex := map[*targetConn]int{}
	for i, t := range s.targets {
		tIndex[t] = i
	}
	for i, vm := range s.vms {
		if i < len(slotTarget) && vm.target != nil {
			slotTarget[i] = tIndex[vm.target]
		}
	}
	weight := func(c uint32, t int) (pages int, held bool) {
		if s.targets[t].isSeeded(dedup.ContentID(c)) {
			return 0, true
		}
		for _, l := range sm.Holders(dedup.ContentID(c)) {
			if slotTarget[sm.Regions[l.Region].VM] == t {
				pages++
			}
		}
		return pages, false
	}
	in := make([]grouping.Batch, len(s.batches))
	for i, b := range s.batches {
		in[i] = grouping.Batch{Targets: b.targets, Contents: b.contents}
	}
	fit := grouping.FitStores(in, caps, weight)
	s.batches = s.batches[:0]
	for _, b := range fit.Batches {
		s.batches = append(s.batches, primeBatch{targets: b.Targets, contents: b.Contents})
	}
	for i, t := range s.targets {
		if t.sc == nil {
			continue
		}
		rep.Stores = append(rep.Stores, report.StoreReport{Target: t.addr, Capacity: storeCapacity(t.info),
			Seeded: t.seedCount(), Wanted: fit.Wanted[i], LeftOut: fit.LeftOut[i]})
		if fit.LeftOut[i] > 0 {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("prime to %s: its content store holds %d contents; %d of the %d it needed were left out, and their pages travel literal (raise its receive --store-limit or --store-disk to prime them)",
				t.addr, storeCapacity(t.info), fit.LeftOut[i], fit.Wanted[i]+t.seedCount()))
			s.log.Info("prime cut to the target's content store", "target", t.addr, "capacity", storeCapacity(t.info),
				"wanted", fit.Wanted[i], "left_out", fit.LeftOut[i])
		}
	}
}
