package source

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/qemu"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// The seed (between placement and the prime): a guest's RAM holds copies of the files its QEMU booted it from (a
// directly booted kernel lies in it twice, once where QEMU loaded it and once where its decompressor moved it),
// and a target has those files, because its destination QEMU starts from the same command line. So as the prime
// starts the sender tells each target which contents it can read from its own copies of its VMs' boot files, and
// with the digest of the exact bytes; the target reads them, keeps those whose bytes match, and says which did not
// (a file that differs between the hosts). Those contents then cost the network nothing. The prime does not wait
// for the answer: it leaves the seed's contents out and primes, at its end, those a target could not read.
// docs/control.md has the frames.

// seedTarget is what the sender seeds to one target.
type seedTarget struct {
	files   []string // paths, as the target opens them
	records []byte   // SEED records, in frames of at most contentFrameTarget
	frames  [][]byte
	ids     []dedup.ContentID
	entries map[dedup.ContentID]seedEntry
	sent    time.Time
}

type seedEntry struct {
	fp dedup.Fingerprint
	dg dedup.Digest
}

// bootIndex is the seed's index of the VMs' boot files as the source sees them (the targets' copies have the same
// paths). Built while the scan runs (indexBootFiles): it needs the inventory's command lines, not the scan.
type bootIndex struct {
	paths    []string
	fileIdx  map[string]int // path -> index in paths
	readers  []io.ReaderAt
	files    []*os.File // to close once the seed has read them
	index    *dedup.FileIndex
	err      error
	warnings []string
}

// close closes the boot files; the run does it once the seed is over.
func (b *bootIndex) close() {
	for _, f := range b.files {
		f.Close()
	}
	b.files = nil
}

// indexBootFiles indexes the boot files of every inventoried VM. It reads only what the inventory wrote (each VM's
// command line), so it may run beside the scan and placement.
func (s *sender) indexBootFiles() *bootIndex {
	b := &bootIndex{fileIdx: map[string]int{}}
	for _, vm := range s.vms {
		for _, f := range qemu.BootFiles(vm.argv) {
			if !filepath.IsAbs(f) {
				continue // relative to the QEMU's own working directory: not something a target can find
			}
			if _, ok := b.fileIdx[f]; !ok {
				b.fileIdx[f] = len(b.paths)
				b.paths = append(b.paths, f)
			}
		}
	}
	if len(b.paths) == 0 {
		return b
	}
	b.readers = make([]io.ReaderAt, len(b.paths))
	sizes := make([]int64, len(b.paths))
	for i, p := range b.paths {
		b.readers[i] = emptyFile{}
		f, err := os.Open(p)
		if err != nil {
			b.warnings = append(b.warnings, fmt.Sprintf("seed: boot file %s: %v; its pages are primed", p, err))
			continue
		}
		b.files = append(b.files, f)
		st, err := f.Stat()
		if err != nil || !st.Mode().IsRegular() {
			continue
		}
		b.readers[i], sizes[i] = f, st.Size()
	}
	t0 := time.Now()
	b.index, b.err = dedup.IndexFiles(b.readers, sizes, s.fingerprint())
	s.log.Debug("seed: boot files indexed", "files", len(b.paths), "ms", time.Since(t0).Milliseconds())
	return b
}

// seedBuild prepares the seed of every target that has VMs (phase 4b), from boot, the index of the VMs' boot files:
// one record per content and target that needs it and has the file it is in. It marks those contents seeded at
// once (targetConn.seeded), so that the prime leaves them out; the targets' answers come during the prime
// (primer.settleSeeds), and a content a target could not read from its files is primed to it then. A failure costs
// bytes only (the contents are primed instead) and becomes a warning.
func (s *sender) seedBuild(sm *dedup.SharingMap, rep *report.Report, boot *bootIndex) {
	// The boot files of each target's VMs.
	paths, readers := boot.paths, boot.readers
	perTarget := make([][]int, len(s.targets)) // indices into paths
	used := false
	for _, vm := range s.vms {
		if vm.target == nil || vm.report.Status != "" {
			continue
		}
		ti := s.targetIndex(vm.target)
		for _, f := range qemu.BootFiles(vm.argv) {
			k, ok := boot.fileIdx[f]
			if !ok {
				continue
			}
			used = true
			if !slices.Contains(perTarget[ti], k) {
				perTarget[ti] = append(perTarget[ti], k)
			}
		}
	}
	if !used {
		return
	}
	rep.Warnings = append(rep.Warnings, boot.warnings...)
	t0 := time.Now()
	index, err := boot.index, boot.err
	if err != nil {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("seed: %v; boot file pages are primed", err))
		return
	}

	// One record per content and target that needs it and has the file it is in.
	seeds := make([]*seedTarget, len(s.targets))
	page := make([]byte, dedup.PageSize)
	var holders []int
	for id := range sm.Contents {
		cid := dedup.ContentID(id)
		w, ok := index.Lookup(sm.Contents[id].FP)
		if !ok {
			continue
		}
		if _, err := readers[w.File].ReadAt(page, w.Offset); err != nil {
			continue
		}
		dg := s.digester.Sum(page)
		holders = sm.HolderVMs(holders[:0], cid)
		for ti := range s.targets {
			fi := slices.Index(perTarget[ti], w.File)
			if fi < 0 {
				continue
			}
			var slots []int
			for _, vmi := range holders {
				if s.vms[vmi].target == s.targets[ti] {
					slots = append(slots, vmi)
				}
			}
			if len(slots) == 0 || len(slots) > wire.MaxSlotsPerContent {
				continue // not needed there, or too many holders to name: primed as usual
			}
			st := seeds[ti]
			if st == nil {
				st = &seedTarget{entries: map[dedup.ContentID]seedEntry{}}
				for _, k := range perTarget[ti] {
					st.files = append(st.files, paths[k])
				}
				seeds[ti] = st
			}
			st.records = wire.AppendSeedRecord(st.records, cid, slots, uint16(fi), w.Offset, dg)
			if len(st.records) >= contentFrameTarget {
				st.frames, st.records = append(st.frames, st.records), nil
			}
			st.ids = append(st.ids, cid)
			st.entries[cid] = seedEntry{fp: sm.Contents[id].FP, dg: dg}
		}
	}

	s.log.Debug("seed: records built", "ms", time.Since(t0).Milliseconds())
	for ti, st := range seeds {
		if st == nil {
			continue
		}
		t := s.targets[ti]
		t.seedPending = st
		t.seeded = make([]uint64, (sm.Distinct()+63)/64)
		for _, id := range st.ids {
			t.seeded[id/64] |= 1 << (id % 64)
		}
	}
}

// seedSend sends every target its seed (built by seedBuild). The prime does it once the multicast groups are
// joined: the target answers at SEED_DONE, and the answer, read at the prime's end (settleSeeds), must not come
// between a JOIN and its JOINED.
func (p *primer) seedSend(rep *report.Report) {
	salt := p.s.digester.Salt()
	for _, t := range p.s.targets {
		st := t.seedPending
		if st == nil {
			continue
		}
		if len(st.records) > 0 {
			st.frames, st.records = append(st.frames, st.records), nil
		}
		err := t.sc.SendJSON(wire.FrameSeedFiles, wire.SeedFilesMsg{Files: st.files, Salt: salt[:]})
		for _, fr := range st.frames {
			if err == nil {
				err = t.sc.Send(wire.FrameSeed, fr, false)
			}
		}
		if err == nil {
			err = t.sc.SendJSON(wire.FrameSeedDone, wire.SeedDoneMsg{Records: len(st.ids)})
		}
		st.sent = time.Now()
		if err != nil {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("seed to %s: %v", t.addr, err))
			p.unseed(t, false) // before the prime's loop: it primes them as it goes
		}
	}
}

// settleSeeds reads every target's answer to its seed (in the prime's end, before PRIME_ACK, which its receiver
// sends after it): what it read from its files enters its held index; what it could not read is primed to it
// (primeLate).
func (p *primer) settleSeeds(ctx context.Context, rep *report.Report) {
	for ti, t := range p.s.targets {
		st := t.seedPending
		if st == nil {
			continue
		}
		var ack wire.SeedAckMsg
		if err := t.sc.ExpectWithin(ctx, wire.FrameSeedAck, &ack, 30*time.Second); err != nil {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("seed to %s: %v; its boot file pages are primed", t.addr, err))
			p.unseed(t, true)
			continue
		}
		t.seedPending = nil
		for _, e := range ack.Errors {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("seed to %s: %s; those pages are primed", t.addr, e))
		}
		missing := map[dedup.ContentID]bool{}
		for _, id := range ack.Missing {
			missing[dedup.ContentID(id)] = true
		}
		for _, id := range st.ids {
			if missing[id] {
				t.seeded[id/64] &^= 1 << (id % 64)
				p.late[ti] = append(p.late[ti], id)
				continue
			}
			e := st.entries[id]
			t.seedHeld = append(t.seedHeld, heldEntry{id: id, fp: e.fp, dg: e.dg})
			p.held[ti].Add(id, e.fp, e.dg) // what the seed brought is held as the prime's contents are
		}
		rep.Totals.SeededContents += int64(len(t.seedHeld))
		for i := range rep.Stores {
			if rep.Stores[i].Target == t.addr {
				rep.Stores[i].Seeded = len(t.seedHeld)
			}
		}
		p.s.log.Debug("seed: acknowledged", "target", t.addr, "ms", time.Since(st.sent).Milliseconds())
		p.s.log.Info("seed done", "target", t.addr, "contents", len(t.seedHeld), "missing", len(ack.Missing))
	}
}

// unseed gives up on t's seed: every content it was to read from its files is primed to it instead, by the
// prime's loop if it has not run yet, else (late) at its end.
func (p *primer) unseed(t *targetConn, late bool) {
	st := t.seedPending
	t.seedPending = nil
	ti := p.s.targetIndex(t)
	for _, id := range st.ids {
		t.seeded[id/64] &^= 1 << (id % 64)
		if late {
			p.late[ti] = append(p.late[ti], id)
		}
	}
}

// primeLate primes to each target, alone, the contents the prime left out for its seed and the seed did not bring.
func (p *primer) primeLate(ctx context.Context) error {
	for ti, ids := range p.late {
		if len(ids) == 0 {
			continue
		}
		raw := make([]uint32, len(ids))
		for i, id := range ids {
			raw[i] = uint32(id)
		}
		bundles, err := p.prepare(ctx, raw, dedup.MaxBundlePages)
		if err != nil {
			return err
		}
		for i := range bundles {
			if err := p.one(ctx, &bundles[i], []int{ti}, nil); err != nil {
				return err
			}
		}
		p.late[ti] = nil
	}
	return nil
}

// heldEntry is one content a target holds, as the sender's held index records it.
type heldEntry struct {
	id dedup.ContentID
	fp dedup.Fingerprint
	dg dedup.Digest
}

// seedCount is how many contents t reads from its own files: those it was asked to until it answers.
func (t *targetConn) seedCount() int {
	if t.seedPending != nil {
		return len(t.seedPending.ids)
	}
	return len(t.seedHeld)
}

// isSeeded reports whether target t read content id from its own files (or was asked to, until it answers).
func (t *targetConn) isSeeded(id dedup.ContentID) bool {
	return int(id/64) < len(t.seeded) && t.seeded[id/64]&(1<<(id%64)) != 0
}

type emptyFile struct{}

func (emptyFile) ReadAt([]byte, int64) (int, error) { return 0, io.EOF }
