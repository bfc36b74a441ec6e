package source

import (
	"context"
	"runtime"

	mwire "github.com/vmscatter/vmscatter/multicast/wire"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/scatter/wire"
	"golang.org/x/sync/errgroup"
)

// prepareWindow is how many contents are read, digested and compressed at once, in parallel: it bounds the
// memory of the prime's pipeline (about 2 × 4 KiB each).
const prepareWindow = 1024

// preparedContent is one content ready to send: its bytes as read at prime time, and their digest.
type preparedContent struct {
	id      dedup.ContentID
	ok      bool   // false: every holder changed since the scan; its pages will travel literal
	page    []byte // in primer.pages
	dg      dedup.Digest
	holders []int // the VMs that held it at the scan, in primer.holders
}

// preparedBundle is contents compressed together, ready to send as one bundle.
type preparedBundle struct {
	contents []preparedContent
	codec    dedup.Codec
	data     []byte
}

// prepare reads, digests and compresses a window of contents, in bundles of at most maxPer. The pipeline's
// stages, each bounded by the window:
//
//  1. parallel (GOMAXPROCS workers, at most 4): read each content's bytes from a page that still has the scanned
//     fingerprint, and digest them;
//  2. sequential: group the contents still found into bundles whose encoding fits one multicast object;
//  3. parallel (the same workers): compress each bundle.
//
// The sequential queueing in one follows, in order. The bundles point into p's window buffers: they are valid until
// the next prepare.
func (p *primer) prepare(ctx context.Context, ids []uint32, maxPer int) ([]preparedBundle, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	if need := len(ids) * dedup.PageSize; cap(p.pages) < need {
		p.pages = make([]byte, need)
	}
	out := make([]preparedContent, len(ids))
	workers := min(runtime.GOMAXPROCS(0), 4)
	var g errgroup.Group
	per := (len(ids) + workers - 1) / workers
	for w := range workers {
		lo, hi := w*per, min((w+1)*per, len(ids))
		if lo >= hi {
			break
		}
		g.Go(func() error {
			fp := p.s.fingerprint()
			for i := lo; i < hi; i++ {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				c := &out[i]
				c.id, c.page = dedup.ContentID(ids[i]), p.pages[i*dedup.PageSize:(i+1)*dedup.PageSize]
				if c.ok = readCurrent(p.sm, c.id, c.page, fp); c.ok {
					c.dg = p.digester.Sum(c.page)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	var bundles []preparedBundle
	p.holders = p.holders[:0]
	headLen := 6
	for i := range out {
		c := &out[i]
		if !c.ok {
			continue
		}
		from := len(p.holders)
		p.holders = p.sm.HolderVMs(p.holders, c.id)
		c.holders = p.holders[from:len(p.holders):len(p.holders)]
		cl := 5 + 2*len(c.holders)
		if len(c.holders) > wire.MaxSlotsPerContent {
			cl = 5
		}
		last := len(bundles) - 1
		if last < 0 || len(bundles[last].contents) == maxPer ||
			headLen+cl+(len(bundles[last].contents)+1)*dedup.PageSize > mwire.MaxObject {
			bundles = append(bundles, preparedBundle{})
			last, headLen = last+1, 6
		}
		bundles[last].contents = append(bundles[last].contents, *c)
		headLen += cl
	}

	effort := p.effort.Effort()
	next := make(chan int, len(bundles))
	for i := range bundles {
		next <- i
	}
	close(next)
	for range workers {
		g.Go(func() error {
			raw := make([]byte, 0, dedup.MaxBundlePages*dedup.PageSize)
			for i := range next {
				b := &bundles[i]
				raw = raw[:0]
				for _, c := range b.contents {
					raw = append(raw, c.page...)
				}
				b.data, b.codec = dedup.CompressPagesEffort(nil, raw, p.s.codec, effort)
			}
			return nil
		})
	}
	return bundles, g.Wait()
}
