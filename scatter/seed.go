package scatter

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/qemu"
)

// The seed (between placement and the prime): a guest's RAM holds copies of the files its QEMU booted it from (a
// directly booted kernel lies in it twice, once where QEMU loaded it and once where its decompressor moved it),
// and a target has those files, because its destination QEMU starts from the same command line. So before the
// prime the sender tells each target which contents it can read from its own copies of its VMs' boot files, and
// with the digest of the exact bytes; the target reads them, keeps those whose bytes match, and says which did not
// (a file that differs between the hosts). Those contents then cost the network nothing. docs/control.md has the
// frames.

// seedRecordLen is the fixed part of a SEED record after its content-record head: file index, offset, digest.
const seedRecordLen = 2 + 8 + len(dedup.Digest{})

// maxSeedFiles bounds the files of one SEED_FILES frame.
const maxSeedFiles = 64

// seedFilesMsg opens a seed: the files its records name, by index, and the salt of the session's digests.
type seedFilesMsg struct {
	Files []string `json:"files"`
	Salt  []byte   `json:"salt"` // 32 bytes
}

// seedDoneMsg closes a seed.
type seedDoneMsg struct {
	Records int `json:"records"`
}

// seedAckMsg is the receiver's answer: how many records it holds, which it does not, and why.
type seedAckMsg struct {
	Held    int      `json:"held"`
	Missing []uint32 `json:"missing,omitempty"` // content ids it could not read or whose bytes differ
	Errors  []string `json:"errors,omitempty"`  // per file that could not be used
}

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
func (s *sender) seed(ctx context.Context, sm *dedup.SharingMap, rep *Report) {
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
			if len(slots) == 0 || len(slots) > maxSlotsPerContent {
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
			st.records = appendSeedRecord(st.records, cid, slots, uint16(fi), w.Offset, dg)
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
		err := sendJSON(t.sc, frameSeedFiles, seedFilesMsg{Files: st.files, Salt: salt[:]})
		for _, fr := range st.frames {
			if err == nil {
				err = t.sc.Send(frameSeed, fr, false)
			}
		}
		if err == nil {
			err = sendJSON(t.sc, frameSeedDone, seedDoneMsg{Records: len(st.ids)})
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
		var ack seedAckMsg
		if err := expectWithin(ctx, t.sc, frameSeedAck, &ack, 30*time.Second); err != nil {
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

// A SEED record: the content-record head (be32 content id · u8 n · n × be16 VM slot), then be16 file index (into
// the SEED_FILES list) · be64 offset · 16-byte digest (dedup.Digester) of the PageSize bytes at that offset.
func appendSeedRecord(dst []byte, id dedup.ContentID, slots []int, file uint16, off int64, dg dedup.Digest) []byte {
	dst = appendContentHead(dst, id, slots)
	dst = binary.BigEndian.AppendUint16(dst, file)
	dst = binary.BigEndian.AppendUint64(dst, uint64(off))
	return append(dst, dg[:]...)
}

// seedRecord is one parsed SEED record.
type seedRecord struct {
	id     dedup.ContentID
	slots  []int
	file   int
	offset int64
	dg     dedup.Digest
}

// parseSeedRecords calls fn for each record of a SEED frame.
func parseSeedRecords(b []byte, fn func(seedRecord) error) error {
	var r seedRecord
	for len(b) > 0 {
		var err error
		r.id, r.slots, b, err = parseContentHead(b, r.slots[:0])
		if err != nil {
			return err
		}
		if len(b) < seedRecordLen {
			return fmt.Errorf("%w: truncated seed record", ErrFrame)
		}
		r.file = int(binary.BigEndian.Uint16(b))
		off := binary.BigEndian.Uint64(b[2:])
		if off > dedup.MaxIndexedFile || off%dedup.FileWindowStep != 0 {
			return fmt.Errorf("%w: seed record offset %d", ErrFrame, off)
		}
		r.offset = int64(off)
		copy(r.dg[:], b[10:seedRecordLen])
		b = b[seedRecordLen:]
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// seedReader is a receiver's side of one seed, owned by the control connection's goroutine.
type seedReader struct {
	store   *dedup.ContentStore
	d       *dedup.Digester
	files   []*os.File // nil where the file could not be used
	errs    []string
	held    int
	missing []uint32
	page    []byte
	differs bool // tests: every file differs from the sender's
}

// openSeed starts a seed. A file that cannot be used is reported in the answer, and its records count as missing.
func openSeed(store *dedup.ContentStore, m seedFilesMsg, differs bool) (*seedReader, error) {
	if len(m.Salt) != 32 {
		return nil, fmt.Errorf("%w: seed salt of %d bytes", ErrFrame, len(m.Salt))
	}
	if len(m.Files) > maxSeedFiles {
		return nil, fmt.Errorf("%w: %d seed files (at most %d)", ErrFrame, len(m.Files), maxSeedFiles)
	}
	r := &seedReader{store: store, d: dedup.NewDigester([32]byte(m.Salt)), page: make([]byte, dedup.PageSize), differs: differs}
	for _, p := range m.Files {
		f, err := openSeedFile(p)
		if err != nil {
			r.errs = append(r.errs, err.Error())
		}
		r.files = append(r.files, f)
	}
	return r, nil
}

// openSeedFile opens one boot file for reading. The sender is authenticated and may start any QEMU command line
// here, so reading the files such a command line boots from gives it nothing more; still, only absolute paths of
// regular files are read, and only into the content store, whose bytes reach a guest only when their digest matches
// what the sender read at the source.
func openSeedFile(p string) (*os.File, error) {
	if !filepath.IsAbs(p) {
		return nil, fmt.Errorf("boot file %q: not an absolute path", p)
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("boot file %s: %w", p, err)
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("boot file %s: not a regular file", p)
	}
	return f, nil
}

// records reads and stores the contents of one SEED frame.
func (r *seedReader) records(b []byte) error {
	return parseSeedRecords(b, func(rec seedRecord) error {
		if rec.file >= len(r.files) {
			return fmt.Errorf("%w: seed record names file %d of %d", ErrFrame, rec.file, len(r.files))
		}
		f := r.files[rec.file]
		if f == nil {
			r.missing = append(r.missing, uint32(rec.id))
			return nil
		}
		if n, _ := f.ReadAt(r.page, rec.offset); n != len(r.page) || r.differs || r.d.Sum(r.page) != rec.dg {
			// Shorter here, or other bytes than the sender read at the source: the prime brings it.
			r.missing = append(r.missing, uint32(rec.id))
			return nil
		}
		err := r.store.Put(rec.id, r.page, rec.slots...)
		switch {
		case err == nil:
			r.held++
		case errors.Is(err, dedup.ErrStoreFull):
			r.missing = append(r.missing, uint32(rec.id))
		default:
			return err
		}
		return nil
	})
}

func (r *seedReader) close() {
	for _, f := range r.files {
		if f != nil {
			f.Close()
		}
	}
}
