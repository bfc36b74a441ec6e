package scatter

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/kvm"
)

// scan reads every VM's RAM while the VMs run and builds the sharing map (phase 2). A VM whose RAM cannot be read
// is left out with a warning: the scan is an optimization, never a correctness input.
func (s *sender) scan(ctx context.Context, rep *Report) *dedup.SharingMap {
	start := time.Now()
	var regions []dedup.Region
	for i, vm := range s.vms {
		if vm.report.Status != "" || vm.qmp == nil {
			continue
		}
		s.progress.set(vm.spec.Name, "scanning", "")
		ram, err := kvm.OpenGuestRAM(ctx, vm.qmp, vm.pid)
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
	sm, err := dedup.Scan(ctx, regions, dedup.ScanOptions{OnRegionError: func(e *dedup.RegionError) error {
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

// contentFrameTarget is the size at which a CONTENT frame is sent.
const contentFrameTarget = 256 << 10

// prime sends every distinct content once to each target that needs it (phase 5), over the control connections,
// and records what each target confirmed holding. Each content's bytes are read once, at prime time, from a page
// that still has the scanned fingerprint; the salted digest is taken over exactly the bytes sent, so a later
// reference is exact whatever the guest did in between.
func (s *sender) prime(ctx context.Context, sm *dedup.SharingMap, rep *Report) error {
	var salt [32]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return err
	}
	digester := dedup.NewDigester(salt)
	tindex := map[*targetConn]int{}
	for i, t := range s.targets {
		tindex[t] = i
	}
	// needs[c] is the bitmask of targets (by index) whose VMs hold content c.
	needs := make([][]uint64, len(s.targets))
	for i := range needs {
		needs[i] = make([]uint64, (sm.Distinct()+63)/64)
	}
	for vmi, ids := range sm.PerVM {
		vm := s.vms[vmi]
		if vm.report.Status != "" || vm.target == nil || vm.target.sc == nil {
			continue
		}
		ti := tindex[vm.target]
		for _, id := range ids {
			needs[ti][id/64] |= 1 << (id % 64)
		}
	}
	held := make([]*dedup.HeldIndex, len(s.targets))
	pinned := make([][]uint64, len(s.targets))
	frames := make([][]byte, len(s.targets))
	sent := make([]int, len(s.targets))
	for i := range held {
		held[i] = dedup.NewHeldIndex(dedup.XXHash, digester)
		pinned[i] = make([]uint64, (sm.Distinct()+63)/64)
	}
	flush := func(ti int) error {
		if len(frames[ti]) == 0 {
			return nil
		}
		err := s.targets[ti].sc.Send(frameContent, frames[ti], false)
		frames[ti] = frames[ti][:0]
		return err
	}
	page := make([]byte, dedup.PageSize)
	var lit []byte
	var holders, slots []int
	var lowerBound, lowerCompressed int64
	lastProgress := time.Now()
	for id := range sm.Contents {
		cid := dedup.ContentID(id)
		var want []int
		for ti := range s.targets {
			if needs[ti][id/64]&(1<<(id%64)) != 0 {
				want = append(want, ti)
			}
		}
		if len(want) == 0 {
			continue
		}
		lowerBound += int64(len(want)) * dedup.PageSize
		if !readCurrent(sm, cid, page) {
			continue // every holder changed since the scan; its pages will travel literal
		}
		dg := digester.Sum(page)
		var codec dedup.Codec
		lit, codec = s.codec.Compress(lit[:0], page)
		holders = sm.HolderVMs(holders[:0], cid)
		lowerCompressed += int64(len(want) * len(lit))
		for _, ti := range want {
			slots = slots[:0]
			for _, vmi := range holders {
				if vm := s.vms[vmi]; vm.target == s.targets[ti] {
					slots = append(slots, vmi)
				}
			}
			if len(slots) > maxSlotsPerContent {
				// Too many to name: the receiver keeps it for the whole session, and every VM may use it.
				slots = slots[:0]
				pinned[ti][id/64] |= 1 << (id % 64)
			}
			rec := dedup.PageRecord{Kind: dedup.RecordLiteral, Codec: codec, Data: lit}
			frames[ti] = appendContentRecord(frames[ti], cid, slots, rec)
			held[ti].Add(cid, sm.Contents[id].FP, dg)
			sent[ti]++
			if len(frames[ti]) >= contentFrameTarget {
				if err := flush(ti); err != nil {
					return fmt.Errorf("prime to %s: %w", s.targets[ti].addr, err)
				}
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Since(lastProgress) > time.Second {
			s.progress.set("(prime)", "priming", fmt.Sprintf("%d of %d contents", id, sm.Distinct()))
			lastProgress = time.Now()
		}
	}
	rep.Totals.LowerBoundBytes = lowerBound
	rep.Totals.LowerBoundCompressedBytes = lowerCompressed
	for ti, t := range s.targets {
		if t.sc == nil || sent[ti] == 0 {
			continue
		}
		if err := flush(ti); err != nil {
			return fmt.Errorf("prime to %s: %w", t.addr, err)
		}
		if err := sendJSON(t.sc, framePrimeDone, primeDoneMsg{Contents: sent[ti]}); err != nil {
			return fmt.Errorf("prime to %s: %w", t.addr, err)
		}
	}
	for ti, t := range s.targets {
		if t.sc == nil || sent[ti] == 0 {
			continue
		}
		var ack primeAckMsg
		if err := expect(t.sc, framePrimeAck, &ack); err != nil {
			// The target holds nothing we can count on: its VMs' pages travel literal.
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("prime to %s failed, its VMs' pages travel literal: %v", t.addr, err))
			continue
		}
		t.held, t.pinned = held[ti], pinned[ti]
		rep.Totals.PrimeBytes += t.sc.BytesOut()
		s.log.Info("prime done", "target", t.addr, "contents", ack.Held, "bytes", ack.Bytes)
	}
	return nil
}

// readCurrent reads content id's bytes from the first holder whose page still has the scanned fingerprint.
func readCurrent(sm *dedup.SharingMap, id dedup.ContentID, page []byte) bool {
	want := sm.Contents[id].FP
	for i, l := range sm.Holders(id) {
		if i >= 4 {
			return false
		}
		var rerr *dedup.RegionError
		if err := sm.ReadPage(l, page); err != nil && !errors.As(err, &rerr) {
			return false
		} else if err != nil {
			continue
		}
		if dedup.XXHash(page) == want && !dedup.IsZero(page) {
			return true
		}
	}
	return false
}
