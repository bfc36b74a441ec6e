package dedup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
)

// Region is one RAM block of one VM, readable through R at offsets 0 to Size.
type Region struct {
	VM    int    // the caller's VM number, 0 <= VM < MaxVMs
	Block string // the RAM block's id, e.g. "pc.ram"
	Size  int64  // bytes; a multiple of PageSize
	R     io.ReaderAt
}

// MaxVMs bounds Region.VM, so that PerVM stays a small dense slice.
const MaxVMs = 1 << 16

// maxRegionPages bounds a region so that a PageIndex can name each of its pages.
const maxRegionPages = 1<<32 - 1

// DefaultChunkSize is how much of a region one scan worker reads at a time.
const DefaultChunkSize = 2 << 20

// ScanOptions tunes Scan. The zero value is ready to use.
type ScanOptions struct {
	// Workers bounds the concurrent readers; 0 means runtime.GOMAXPROCS(0).
	Workers int
	// ChunkSize is the bytes one worker reads at a time, a multiple of PageSize;
	// 0 means DefaultChunkSize.
	ChunkSize int64
	// Fingerprint fingerprints pages; nil means XXHash.
	Fingerprint FingerprintFunc
	// OnRegionError decides what a failed read of a region does. It runs on the scan's
	// merging goroutine, one call per failed region. If it returns nil the scan continues
	// without that region: the region contributes no pages to the map and its
	// RegionInfo.Err records the failure. If it returns an error, or if OnRegionError is
	// nil, Scan stops and returns that error (the *RegionError itself when nil).
	OnRegionError func(*RegionError) error
}

// RegionError reports a region whose read failed or came up short.
type RegionError struct {
	Region int    // index in the regions given to Scan
	VM     int    // Region.VM
	Block  string // Region.Block
	Offset int64  // where the failing read started
	Err    error  // the reader's error; io.ErrUnexpectedEOF for a short read
}

func (e *RegionError) Error() string {
	return fmt.Sprintf("dedup: scan VM %d block %q at offset %#x: %v", e.VM, e.Block, e.Offset, e.Err)
}

func (e *RegionError) Unwrap() error { return e.Err }

// ErrBadRegion reports a region that Scan refuses before reading anything.
var ErrBadRegion = errors.New("dedup: bad region")

// zeroMark marks a zero page in the per-region content arrays built by Scan.
const zeroMark = ^uint32(0)

// Scan reads every page of every region, skips zero pages, fingerprints the others and
// returns the SharingMap. Pages with equal fingerprints count as one content: the map is a
// plan, not proof, and the exactness check happens when pages are sent (see HeldIndex).
//
// The pipeline, with its bounds:
//
//  1. producer (one goroutine): cuts the regions into chunks of ChunkSize in region order,
//     takes a chunk record from a free list of 4×Workers records (blocks when the merger
//     lags), queues it on the ordered channel, and starts a worker through an errgroup
//     with SetLimit(Workers).
//  2. workers (at most Workers): each takes one of Workers read buffers, reads its chunk
//     with one ReadAt, records zero flags and fingerprints, returns the buffer, and marks
//     the chunk done.
//  3. merger (one goroutine): takes chunks in order, waits for each, assigns content ids
//     in order of first occurrence through an open-addressing table, and returns the
//     chunk record to the free list.
//
// Memory is Workers×ChunkSize of buffers, 4×Workers chunk records, 4 bytes per page for the
// page-to-content arrays, about 20 bytes per distinct content for the table, and the map
// itself (8 bytes per non-zero page for its locations). Content ids and holder lists do not
// depend on timing: the same memory gives the same map.
func Scan(ctx context.Context, regions []Region, opt ScanOptions) (*SharingMap, error) {
	workers := opt.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	chunkSize := opt.ChunkSize
	if chunkSize == 0 {
		chunkSize = DefaultChunkSize
	}
	if chunkSize < PageSize || chunkSize%PageSize != 0 || chunkSize > 1<<30 {
		return nil, fmt.Errorf("dedup: scan chunk size %d is not a multiple of %d up to 1 GiB", chunkSize, PageSize)
	}
	fp := opt.Fingerprint
	if fp == nil {
		fp = XXHash
	}
	s := &scanner{
		regions: regions,
		fp:      fp,
		onErr:   opt.OnRegionError,
		pages:   make([][]uint32, len(regions)),
		failed:  make([]atomic.Bool, len(regions)),
		errs:    make([]*RegionError, len(regions)),
	}
	var total int64
	for i, r := range regions {
		switch {
		case r.VM < 0 || r.VM >= MaxVMs:
			return nil, fmt.Errorf("%w: region %d: VM %d out of range [0,%d)", ErrBadRegion, i, r.VM, MaxVMs)
		case r.Size < 0 || r.Size%PageSize != 0 || r.Size/PageSize > maxRegionPages:
			return nil, fmt.Errorf("%w: region %d (VM %d block %q): size %d is not a multiple of %d below 16 TiB",
				ErrBadRegion, i, r.VM, r.Block, r.Size, PageSize)
		case r.R == nil && r.Size > 0:
			return nil, fmt.Errorf("%w: region %d (VM %d block %q): no reader", ErrBadRegion, i, r.VM, r.Block)
		}
		total += r.Size / PageSize
	}
	if total >= maxRegionPages {
		return nil, fmt.Errorf("%w: %d pages in all, more than one scan can number", ErrBadRegion, total)
	}
	s.index = newFPTable(int(min(total/4, 1<<20)))
	for i, r := range regions {
		s.pages[i] = make([]uint32, r.Size/PageSize)
	}

	chunkPages := int(chunkSize / PageSize)
	window := 4 * workers
	free := make(chan *scanChunk, window)
	for range window {
		free <- &scanChunk{fps: make([]Fingerprint, chunkPages), zero: make([]bool, chunkPages)}
	}
	bufs := make(chan []byte, workers)
	for range workers {
		bufs <- make([]byte, chunkSize)
	}
	order := make(chan *scanChunk, window)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.produce(gctx, chunkPages, workers, free, bufs, order) })
	g.Go(func() error { return s.merge(gctx, free, order) })
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return s.build(), nil
}

type scanChunk struct {
	region int
	first  PageIndex
	n      int
	fps    []Fingerprint
	zero   []bool
	err    *RegionError
	done   chan struct{}
}

type scanner struct {
	regions []Region
	fp      FingerprintFunc
	onErr   func(*RegionError) error

	// Owned by the merger until the pipeline ends.
	index    *fpTable
	contents []Fingerprint
	pages    [][]uint32 // per region, per page: content number or zeroMark
	errs     []*RegionError

	failed []atomic.Bool // set by the merger, read by the producer and workers to skip work
}

func (s *scanner) produce(ctx context.Context, chunkPages, workers int, free chan *scanChunk, bufs chan []byte, order chan<- *scanChunk) error {
	w, wctx := errgroup.WithContext(ctx)
	w.SetLimit(workers)
	defer close(order)
	for ri, r := range s.regions {
		npages := int(r.Size / PageSize)
		for first := 0; first < npages; first += chunkPages {
			if s.failed[ri].Load() {
				break
			}
			var c *scanChunk
			select {
			case c = <-free:
			case <-ctx.Done():
				return errors.Join(ctx.Err(), w.Wait())
			}
			c.region, c.first, c.n, c.err = ri, PageIndex(first), min(chunkPages, npages-first), nil
			c.done = make(chan struct{})
			order <- c // never blocks: order holds as many chunks as the free list
			w.Go(func() error {
				defer close(c.done)
				if s.failed[c.region].Load() {
					return nil
				}
				var buf []byte
				select {
				case buf = <-bufs:
				case <-wctx.Done():
					return wctx.Err()
				}
				s.read(c, buf)
				bufs <- buf
				return nil
			})
		}
	}
	return w.Wait()
}

// read fills c from its region, using buf for the bytes.
func (s *scanner) read(c *scanChunk, buf []byte) {
	r := s.regions[c.region]
	off := int64(c.first.Offset())
	b := buf[:c.n*PageSize]
	n, err := r.R.ReadAt(b, off)
	if n == len(b) {
		err = nil // io.ReaderAt may report io.EOF with a full read at the end
	} else if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		c.err = &RegionError{Region: c.region, VM: r.VM, Block: r.Block, Offset: off + int64(n), Err: err}
		return
	}
	for i := range c.n {
		p := b[i*PageSize : (i+1)*PageSize]
		c.zero[i] = IsZero(p)
		if !c.zero[i] {
			c.fps[i] = s.fp(p)
		}
	}
}

func (s *scanner) merge(ctx context.Context, free chan<- *scanChunk, order <-chan *scanChunk) error {
	for c := range order {
		select {
		case <-c.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := s.mergeChunk(c); err != nil {
			return err
		}
		free <- c
	}
	return nil
}

func (s *scanner) mergeChunk(c *scanChunk) error {
	if s.failed[c.region].Load() {
		return nil
	}
	if c.err != nil {
		if s.onErr == nil {
			return c.err
		}
		if err := s.onErr(c.err); err != nil {
			return err
		}
		s.errs[c.region] = c.err
		s.failed[c.region].Store(true)
		return nil
	}
	dst := s.pages[c.region][c.first : int(c.first)+c.n]
	for i := range c.n {
		if c.zero[i] {
			dst[i] = zeroMark
			continue
		}
		id, inserted := s.index.getOrInsert(c.fps[i], uint32(len(s.contents)))
		if inserted {
			s.contents = append(s.contents, c.fps[i])
		}
		dst[i] = id
	}
	return nil
}

// build turns the per-page content numbers into the map. It runs after the pipeline.
func (s *scanner) build() *SharingMap {
	m := &SharingMap{Regions: make([]RegionInfo, len(s.regions))}
	count := make([]uint32, len(s.contents))
	nvms := 0
	for ri, r := range s.regions {
		info := RegionInfo{VM: r.VM, Block: r.Block, Size: r.Size, R: r.R}
		if s.failed[ri].Load() {
			info.Err = s.errs[ri]
			s.pages[ri] = nil
		}
		for _, id := range s.pages[ri] {
			if id == zeroMark {
				info.ZeroPages++
				continue
			}
			count[id]++
		}
		info.Pages = len(s.pages[ri])
		m.Pages += info.Pages
		m.ZeroPages += info.ZeroPages
		m.Regions[ri] = info
		nvms = max(nvms, r.VM+1)
	}
	m.NonZeroPages = m.Pages - m.ZeroPages

	// Failed regions may leave contents that no page holds any more: renumber the rest,
	// keeping the order of first occurrence.
	renum := make([]uint32, len(s.contents))
	n := uint32(0)
	for id, c := range count {
		if c == 0 {
			renum[id] = zeroMark
			continue
		}
		renum[id] = n
		count[n] = c
		s.contents[n] = s.contents[id]
		n++
	}
	count, s.contents = count[:n], s.contents[:n]

	m.Contents = make([]Content, n)
	next := uint32(0)
	for id := range m.Contents {
		m.Contents[id] = Content{FP: s.contents[id], Count: count[id], first: next}
		next += count[id]
	}
	m.locations = make([]Location, m.NonZeroPages)
	cursor := count // reuse: cursor[id] counts the locations placed so far
	clear(cursor)
	for ri, pages := range s.pages {
		for p, id := range pages {
			if id == zeroMark {
				continue
			}
			id = renum[id]
			pages[p] = id
			c := &m.Contents[id]
			m.locations[c.first+cursor[id]] = Location{Region: uint32(ri), Page: PageIndex(p)}
			cursor[id]++
		}
	}

	// PerVM: walk regions VM by VM; seen[id] holds the last VM (plus one) that listed id.
	m.PerVM = make([][]ContentID, nvms)
	seen := cursor
	clear(seen)
	byVM := make([][]int, nvms)
	for ri, r := range s.regions {
		byVM[r.VM] = append(byVM[r.VM], ri)
	}
	for vm, rs := range byVM {
		var ids []ContentID
		for _, ri := range rs {
			for _, id := range s.pages[ri] {
				if id != zeroMark && seen[id] != uint32(vm)+1 {
					seen[id] = uint32(vm) + 1
					ids = append(ids, ContentID(id))
				}
			}
		}
		slices.Sort(ids)
		m.PerVM[vm] = slices.Clip(ids)
	}
	return m
}
