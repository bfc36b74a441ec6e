package scale

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/vmscatter/vmscatter/dedup"
)

// PageSize is the size of a guest page in bytes.
const PageSize = dedup.PageSize

// Zero marks a zero page in a fingerprint vector.
const Zero = ^uint32(0)

// Image is one base RAM image as a fingerprint vector: Pages[i] is the catalog content id of page i, or Zero.
type Image struct {
	Name  string
	Pages []uint32
}

// Catalog is what the simulator keeps of a set of base images: their fingerprint vectors over dense content
// ids, and per content its compressed size. It holds no page bytes. A Catalog is read-only once built.
type Catalog struct {
	Images []Image
	// Sizes[id] is what content id costs on the wire as the sender sends it, between 1 and PageSize: its share of a
	// zstd bundle of 15 contents in id order (the prime's unit), or a seed record when it is a copy of a boot file
	// the targets read themselves (LoadOptions.BootFiles).
	Sizes []uint16
	// Seeded counts the contents that are copies of boot files.
	Seeded int
}

// CatalogStats summarises a catalog.
type CatalogStats struct {
	Images          int     `json:"images"`
	Pages           int     `json:"pages"`
	ZeroPages       int     `json:"zero_pages"`
	NonZeroPages    int     `json:"nonzero_pages"`
	Distinct        int     `json:"distinct"`         // distinct non-zero contents across all images
	DuplicateShare  float64 `json:"duplicate_share"`  // 1 - Distinct/NonZeroPages
	CompressedRatio float64 `json:"compressed_ratio"` // Σ compressed size / (Distinct·PageSize)
}

// Stats counts the pages and contents of c.
func (c *Catalog) Stats() CatalogStats {
	s := CatalogStats{Images: len(c.Images), Distinct: len(c.Sizes)}
	for _, im := range c.Images {
		s.Pages += len(im.Pages)
		for _, id := range im.Pages {
			if id == Zero {
				s.ZeroPages++
			}
		}
	}
	s.NonZeroPages = s.Pages - s.ZeroPages
	var comp uint64
	for _, z := range c.Sizes {
		comp += uint64(z)
	}
	if s.NonZeroPages > 0 {
		s.DuplicateShare = 1 - float64(s.Distinct)/float64(s.NonZeroPages)
	}
	if s.Distinct > 0 {
		s.CompressedRatio = float64(comp) / float64(s.Distinct*PageSize)
	}
	return s
}

// validate checks the catalog's shape: every page is Zero or a known id, and every size in [1, PageSize].
func (c *Catalog) validate() error {
	if len(c.Images) == 0 {
		return fmt.Errorf("%w: no images", ErrBadCatalog)
	}
	if uint64(len(c.Sizes)) >= uint64(Zero) {
		return fmt.Errorf("%w: %d contents", ErrBadCatalog, len(c.Sizes))
	}
	for i, z := range c.Sizes {
		if z == 0 || z > PageSize {
			return fmt.Errorf("%w: content %d has compressed size %d", ErrBadCatalog, i, z)
		}
	}
	for _, im := range c.Images {
		nonZero := 0
		for p, id := range im.Pages {
			if id == Zero {
				continue
			}
			nonZero++
			if int64(id) >= int64(len(c.Sizes)) {
				return fmt.Errorf("%w: image %s page %d holds content %d of %d", ErrBadCatalog, im.Name, p, id, len(c.Sizes))
			}
		}
		if nonZero == 0 {
			return fmt.Errorf("%w: image %s has no non-zero page", ErrBadCatalog, im.Name)
		}
	}
	return nil
}

// ErrBadCatalog reports a catalog the generator cannot use.
var ErrBadCatalog = errors.New("scale: bad catalog")

// ImageSource is one base image to read: Size bytes through R.
type ImageSource struct {
	Name string
	Size int64 // bytes; a trailing partial page is ignored
	R    io.ReaderAt
}

// LoadOptions say how LoadImages prices contents.
type LoadOptions struct {
	// BootFiles are the files the images' guests booted from (their -kernel and -initrd): contents that are copies
	// of them cost a seed record only, as the targets read them from their own copies.
	BootFiles []string
}

// seedRecordCost is a seed record on the wire: content head with one slot, file, offset, digest.
const seedRecordCost = 5 + 2 + 2 + 8 + 32

// LoadImages reads every image once with dedup.Scan (xxhash64 fingerprints, zero pages skipped), then reads the
// distinct contents once more, in id order, to compress them in bundles as the prime does. Memory is 4 bytes per
// page plus the scan's map; no page bytes are kept.
func LoadImages(ctx context.Context, images []ImageSource) (*Catalog, error) {
	return LoadImagesWith(ctx, images, LoadOptions{})
}

// LoadImagesWith is LoadImages with options.
func LoadImagesWith(ctx context.Context, images []ImageSource, o LoadOptions) (*Catalog, error) {
	regions := make([]dedup.Region, len(images))
	for i, im := range images {
		regions[i] = dedup.Region{VM: i, Block: "pc.ram", Size: im.Size / PageSize * PageSize, R: im.R}
	}
	m, err := dedup.Scan(ctx, regions, dedup.ScanOptions{})
	if err != nil {
		return nil, fmt.Errorf("scale: scanning images: %w", err)
	}
	c := &Catalog{Images: make([]Image, len(images)), Sizes: make([]uint16, m.Distinct())}
	for i, im := range images {
		pages := make([]uint32, regions[i].Size/PageSize)
		for p := range pages {
			pages[p] = Zero
		}
		c.Images[i] = Image{Name: im.Name, Pages: pages}
	}
	boot, closeBoot, err := indexBootFiles(o.BootFiles)
	if err != nil {
		return nil, err
	}
	defer closeBoot()
	page := make([]byte, PageSize)
	var bundle []byte
	var members []int
	flush := func() {
		if len(members) == 0 {
			return
		}
		data, _ := dedup.CompressPages(nil, bundle, dedup.CodecZstd)
		share := uint16(max(1, len(data)/len(members)))
		for _, id := range members {
			c.Sizes[id] = share
		}
		bundle, members = bundle[:0], members[:0]
	}
	for id := range m.Contents {
		hs := m.Holders(dedup.ContentID(id))
		for _, l := range hs {
			c.Images[l.Region].Pages[l.Page] = uint32(id)
		}
		if id%4096 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if boot != nil {
			if _, ok := boot.Lookup(m.Contents[id].FP); ok {
				c.Sizes[id] = seedRecordCost
				c.Seeded++
				continue
			}
		}
		if err := m.ReadPage(hs[0], page); err != nil {
			return nil, fmt.Errorf("scale: reading content %d: %w", id, err)
		}
		bundle = append(bundle, page...)
		if members = append(members, id); len(members) == dedup.MaxBundlePages {
			flush()
		}
	}
	flush()
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// indexBootFiles opens and indexes boot files; nil index for none.
func indexBootFiles(paths []string) (*dedup.FileIndex, func(), error) {
	if len(paths) == 0 {
		return nil, func() {}, nil
	}
	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	var rs []io.ReaderAt
	var sizes []int64
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("scale: boot file: %w", err)
		}
		files = append(files, f)
		st, err := f.Stat()
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("scale: boot file: %w", err)
		}
		rs, sizes = append(rs, f), append(sizes, st.Size())
	}
	x, err := dedup.IndexFiles(rs, sizes, nil)
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	return x, closeAll, nil
}

// LoadImageFilesWith opens raw RAM image files (pmemsave output) and loads them with LoadImages, with options.
func LoadImageFilesWith(ctx context.Context, paths []string, o LoadOptions) (*Catalog, error) {
	var srcs []ImageSource
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("scale: %w", err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return nil, fmt.Errorf("scale: %w", err)
		}
		srcs = append(srcs, ImageSource{Name: filepath.Base(p), Size: st.Size(), R: f})
	}
	return LoadImagesWith(ctx, srcs, o)
}

// Statistics of SyntheticCatalog, chosen after the measurements in DESIGN.md (128 MiB fixture guests: 32% zero
// pages, 58% of non-zero pages duplicated across four guests; s2 compresses memory pages to about 0.29).
const (
	synthZeroShare   = 0.32 // pages that are zero
	synthCommonShare = 0.50 // non-zero pages drawn from the pool common to every image (kernel, firmware, libc)
	synthMutate      = 0.10 // of the common slots, the share an image holds in a version of its own
	synthInnerDup    = 0.02 // of an image's own pages, the share that repeat an earlier own page
)

// SyntheticCatalog draws a catalog of images without reading any bytes, for tests and for sweeps when no
// capture is at hand. Each image has the given number of pages; page i of every image is:
//
//   - zero with probability 0.32;
//   - else, if slot i is common (half of the slots, drawn once for all images), the slot's common content (the
//     same in every image), except that with probability 0.1 the image holds its own version of it;
//   - else a content of the image's own, of which 2% repeat an earlier own page of the same image.
//
// Compressed sizes follow SyntheticSize: a mean near 0.3 of a page, as s2 measured on guest memory.
func SyntheticCatalog(seed uint64, images, pages int) *Catalog {
	rng := rand.New(rand.NewPCG(seed, 0xca7a1065))
	c := &Catalog{}
	common := make([]uint32, pages)
	for i := range common {
		common[i] = Zero
	}
	fresh := func() uint32 {
		c.Sizes = append(c.Sizes, SyntheticSize(rng))
		return uint32(len(c.Sizes) - 1)
	}
	// Per slot: common (the same content in every image that has the slot non-zero) or each image's own.
	isCommon := make([]bool, pages)
	for i := range isCommon {
		isCommon[i] = rng.Float64() < synthCommonShare
	}
	for k := range images {
		im := Image{Name: fmt.Sprintf("synthetic%02d", k), Pages: make([]uint32, pages)}
		var own []uint32
		for i := range im.Pages {
			switch {
			case rng.Float64() < synthZeroShare:
				im.Pages[i] = Zero
			case isCommon[i] && rng.Float64() >= synthMutate:
				if common[i] == Zero {
					common[i] = fresh()
				}
				im.Pages[i] = common[i]
			case len(own) > 0 && rng.Float64() < synthInnerDup:
				im.Pages[i] = own[rng.IntN(len(own))]
			default:
				im.Pages[i] = fresh()
				own = append(own, im.Pages[i])
			}
		}
		c.Images = append(c.Images, im)
	}
	return c
}

// SyntheticSize draws the s2-compressed size of a synthetic page: 30% compress well (64–511 bytes: page tables,
// sparse structures), 55% moderately (512–1,799 bytes: code, text, heap), 15% not at all (4,096: compressed or
// random data). The mean is about 0.33 of a page.
func SyntheticSize(rng *rand.Rand) uint16 {
	switch x := rng.Float64(); {
	case x < 0.30:
		return uint16(64 + rng.IntN(448))
	case x < 0.85:
		return uint16(512 + rng.IntN(1288))
	default:
		return PageSize
	}
}
