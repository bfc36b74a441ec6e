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
// and a target has those files, because its destination QEMU starts from the same command line. So before the
// prime the sender tells each target which contents it can read from its own copies of its VMs' boot files, and
// with the digest of the exact bytes; the target reads them, keeps those whose bytes match, and says which did not
// (a file that differs between the hosts). Those contents then cost the network nothing. docs/control.md has the
// frames.

// seedTarget is what the sender seeds to one target.
type seedTarget struct {
	files   []string // paths, as the target opens them
	records []byte   // SEED records, in frames of at most contentFrameTarget
	frames  [][]byte
	ids     []dedup.ContentID
	entries map[dedup.ContentID]seedEntry
}

type seedEntry struct {
	fp dedup.Fingerprint
	dg dedup.Digest
}

// seed runs the seed with every target that has VMs (phase 4b). It fills each target's seeded set; a failure
// costs bytes only (the contents are primed instead) and becomes a warning.
func (s *sender) seed(ctx context.Context, sm *dedup.SharingMap, rep *report.Report) {
	// The boot files of each target's VMs, as the source sees them. The target's copies have the same paths.
	var paths []string
	fileIdx := map[string]int{}
	perTarget := make([][]int, len(s.targets)) // indices into paths
	for _, vm := range s.vms {
		if vm.target == nil || vm.report.Status != "" {
			continue
		}
		ti := s.targetIndex(vm.target)
		for _, f := range qemu.BootFiles(vm.argv) {
			if !filepath.IsAbs(f) {
				continue // relative to the QEMU's own working directory: not something a target can find
			}
			k, ok := fileIdx[f]
			if !ok {
				k = len(paths)
				fileIdx[f] = k
				paths = append(paths, f)
			}
			if !slices.Contains(perTarget[ti], k) {
				perTarget[ti] = append(perTarget[ti], k)
			}
		}
	}
	if len(paths) == 0 {
		return
	}
	readers := make([]io.ReaderAt, len(paths))
	sizes := make([]int64, len(paths))
	for i, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("seed: boot file %s: %v; its pages are primed", p, err))
			readers[i] = emptyFile{}
			continue
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil || !st.Mode().IsRegular() {
			readers[i] = emptyFile{}
			continue
		}
		readers[i], sizes[i] = f, st.Size()
	}
	t0 := time.Now()
	index, err := dedup.IndexFiles(readers, sizes, s.fingerprint())
	s.log.Debug("seed: boot files indexed", "files", len(paths), "windows", index.Len(), "ms", time.Since(t0).Milliseconds())
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
	// Send every target its seed, then collect the answers.
	salt := s.digester.Salt()
	for ti, st := range seeds {
		if st == nil {
			continue
		}
		t := s.targets[ti]
		if len(st.records) > 0 {
			st.frames = append(st.frames, st.records)
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
		if err != nil {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("seed to %s: %v", t.addr, err))
			seeds[ti] = nil
		}
	}
	for ti, st := range seeds {
		if st == nil {
			continue
		}
		t := s.targets[ti]
		var ack wire.SeedAckMsg
		if err := t.sc.ExpectWithin(ctx, wire.FrameSeedAck, &ack, 30*time.Second); err != nil {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("seed to %s: %v; its boot file pages are primed", t.addr, err))
			continue
		}
		for _, e := range ack.Errors {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("seed to %s: %s; those pages are primed", t.addr, e))
		}
		missing := map[dedup.ContentID]bool{}
		for _, id := range ack.Missing {
			missing[dedup.ContentID(id)] = true
		}
		t.seeded = make([]uint64, (sm.Distinct()+63)/64)
		for _, id := range st.ids {
			if missing[id] {
				continue
			}
			t.seeded[id/64] |= 1 << (id % 64)
			e := st.entries[id]
			t.seedHeld = append(t.seedHeld, heldEntry{id: id, fp: e.fp, dg: e.dg})
		}
		rep.Totals.SeededContents += int64(len(t.seedHeld))
		s.log.Debug("seed: acknowledged", "target", t.addr, "ms", time.Since(t0).Milliseconds())
		s.log.Info("seed done", "target", t.addr, "contents", len(t.seedHeld), "missing", len(ack.Missing))
	}
}

// heldEntry is one content a target holds, as the sender's held index records it.
type heldEntry struct {
	id dedup.ContentID
	fp dedup.Fingerprint
	dg dedup.Digest
}

// isSeeded reports whether target t read content id from its own files.
func (t *targetConn) isSeeded(id dedup.ContentID) bool {
	return int(id/64) < len(t.seeded) && t.seeded[id/64]&(1<<(id%64)) != 0
}

type emptyFile struct{}

func (emptyFile) ReadAt([]byte, int64) (int, error) { return 0, io.EOF }
