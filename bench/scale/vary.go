package scale

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// Variation says how to draw a fleet of synthetic VMs from a catalog's images. The zero value of a field means
// zero (no private pages, no dirty pages, uniform families): DefaultVariation gives the documented defaults.
type Variation struct {
	VMs int `json:"vms"`
	// Each VM draws its private share uniformly in [PrivateMin, PrivateMax]; each of its non-zero pages is then
	// independently replaced, with that probability, by a content no other VM holds.
	PrivateMin float64 `json:"private_min"`
	PrivateMax float64 `json:"private_max"`
	// Dirty is the share of a VM's non-zero pages in its writable working set: the pages it dirties while it
	// migrates (sent a second time by both methods) and the pool from which pages go stale between the scan and
	// its migration (see Model.DirtyPagesPerSec).
	Dirty float64 `json:"dirty"`
	// DirtyRatio is the compressed size of a dirtied page as a share of PageSize; 0 draws each from the sizes of
	// the base image's non-zero pages.
	DirtyRatio float64 `json:"dirty_ratio"`
	// RoundRobin gives VM i the image i mod K; otherwise images are drawn with weight 1/(k+1)^FamilySkew
	// (0 is uniform, 1 is Zipf).
	RoundRobin bool    `json:"round_robin"`
	FamilySkew float64 `json:"family_skew"`
	// ScaleFactors are the memory sizes a VM may have, in multiples of its base image; nil means 1 (every VM
	// the size of its base). Factor f is drawn with weight f^-ScaleSkew.
	ScaleFactors []int   `json:"scale_factors,omitempty"`
	ScaleSkew    float64 `json:"scale_skew"`
	Seed         uint64  `json:"seed"`
}

// DefaultVariation is the documented default for n VMs (docs/scale.md): private share 5–30% per VM, a 2% dirty
// working set compressed like the base's pages, Zipf popularity of the images, fixed memory size, seed 1.
func DefaultVariation(n int) Variation {
	return Variation{VMs: n, PrivateMin: 0.05, PrivateMax: 0.30, Dirty: 0.02, FamilySkew: 1, Seed: 1}
}

// ErrBadVariation reports a variation Generate refuses.
var ErrBadVariation = errors.New("scale: bad variation")

func (v Variation) validate() error {
	in01 := func(x float64) bool { return x >= 0 && x <= 1 }
	switch {
	case v.VMs <= 0 || v.VMs > maxVMs:
		return fmt.Errorf("%w: %d VMs, want 1 to %d", ErrBadVariation, v.VMs, maxVMs)
	case !in01(v.PrivateMin) || !in01(v.PrivateMax) || v.PrivateMin > v.PrivateMax:
		return fmt.Errorf("%w: private share [%g, %g]", ErrBadVariation, v.PrivateMin, v.PrivateMax)
	case !in01(v.Dirty) || !in01(v.DirtyRatio):
		return fmt.Errorf("%w: dirty %g, dirty ratio %g", ErrBadVariation, v.Dirty, v.DirtyRatio)
	case v.FamilySkew < 0 || v.ScaleSkew < 0 || math.IsNaN(v.FamilySkew) || math.IsNaN(v.ScaleSkew):
		return fmt.Errorf("%w: negative skew", ErrBadVariation)
	}
	for _, f := range v.ScaleFactors {
		if f < 1 || f > maxScale {
			return fmt.Errorf("%w: scale factor %d, want 1 to %d", ErrBadVariation, f, maxScale)
		}
	}
	return nil
}

const (
	maxVMs   = 1 << 14 // far beyond the sweep; bounds the fleet's memory with maxScale
	maxScale = 64
)

// SyntheticVM is one VM of a fleet, as fingerprints and counts.
type SyntheticVM struct {
	Name         string  `json:"name"`
	Family       int     `json:"family"` // index of its base image
	Scale        int     `json:"scale"`  // memory in multiples of the base image
	MemBytes     uint64  `json:"mem_bytes"`
	Pages        int     `json:"pages"`
	ZeroPages    int     `json:"zero_pages"`
	NonZeroPages int     `json:"nonzero_pages"`
	PrivateShare float64 `json:"private_share"` // the share it drew
	PrivatePages int     `json:"private_pages"` // pages replaced by private contents
	DirtyPages   int     `json:"dirty_pages"`
	DirtyBytes   uint64  `json:"dirty_bytes"` // its dirty pages compressed, summed
	// Contents is the sorted, de-duplicated list of the fleet content ids its non-zero pages hold.
	Contents []uint32 `json:"-"`
}

// Fleet is a set of synthetic VMs over one id space: Sizes[id] is the compressed size of content id. A Fleet is
// read-only once generated.
type Fleet struct {
	VMs       []SyntheticVM
	Sizes     []uint16
	Variation Variation
}

// Generate draws v.VMs synthetic VMs from the catalog's images. It is deterministic for v.Seed. The catalog's
// content ids stay the same in the fleet; private and scaled-up contents get fresh ids after them.
//
// A VM of scale f holds its base's pages followed by (f-1) times as many extension pages of its family: an
// extension page is zero with the base's zero share, and otherwise a content of its own that every VM of the same
// family and at least that scale also holds (a bigger instance of the same image caches the same files), with a
// size drawn from the base's sizes. The private share then applies to all its non-zero pages.
func Generate(c *Catalog, v Variation) (*Fleet, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	if err := v.validate(); err != nil {
		return nil, err
	}
	f := &Fleet{Sizes: slices.Clone(c.Sizes), Variation: v}
	f.Variation.ScaleFactors = slices.Clone(v.ScaleFactors)
	fams := make([]family, len(c.Images))
	for k, im := range c.Images {
		fams[k] = newFamily(im, c.Sizes, rand.New(rand.NewPCG(v.Seed, 1<<32|uint64(k))))
	}
	famCum := cumulative(len(c.Images), func(k int) float64 { return math.Pow(float64(k+1), -v.FamilySkew) })
	factors := v.ScaleFactors
	if len(factors) == 0 {
		factors = []int{1}
	}
	scaleCum := cumulative(len(factors), func(i int) float64 { return math.Pow(float64(factors[i]), -v.ScaleSkew) })

	ids := make([]uint32, 0, len(c.Images[0].Pages))
	for i := range v.VMs {
		// Each VM has its own stream, so VM i is the same whatever the fleet's size and whatever the other VMs
		// drew: a smaller fleet is a prefix of a larger one with the same seed.
		rng := rand.New(rand.NewPCG(v.Seed, uint64(i)))
		k := i % len(c.Images)
		if !v.RoundRobin {
			k = draw(rng, famCum)
		}
		fam := &fams[k]
		scale := factors[draw(rng, scaleCum)]
		fam.extend(f, (scale-1)*len(fam.base.Pages))
		vm := SyntheticVM{
			Name:         fmt.Sprintf("vm%04d", i),
			Family:       k,
			Scale:        scale,
			PrivateShare: v.PrivateMin + (v.PrivateMax-v.PrivateMin)*rng.Float64(),
		}
		ids = ids[:0]
		add := func(id uint32) {
			vm.Pages++
			if id == Zero {
				vm.ZeroPages++
				return
			}
			vm.NonZeroPages++
			if vm.PrivateShare > 0 && rng.Float64() < vm.PrivateShare {
				vm.PrivatePages++
				f.Sizes = append(f.Sizes, fam.drawSize(rng))
				id = uint32(len(f.Sizes) - 1)
			}
			ids = append(ids, id)
		}
		for _, id := range fam.base.Pages {
			add(id)
		}
		for _, id := range fam.ext[:(scale-1)*len(fam.base.Pages)] {
			add(id)
		}
		vm.MemBytes = uint64(vm.Pages) * PageSize
		vm.DirtyPages = int(math.Round(v.Dirty * float64(vm.NonZeroPages)))
		for range vm.DirtyPages {
			if v.DirtyRatio > 0 {
				vm.DirtyBytes += uint64(math.Max(1, math.Round(v.DirtyRatio*PageSize)))
			} else {
				vm.DirtyBytes += uint64(fam.drawSize(rng))
			}
		}
		slices.Sort(ids)
		vm.Contents = slices.Clone(slices.Compact(ids))
		f.VMs = append(f.VMs, vm)
		if uint64(len(f.Sizes)) >= uint64(Zero) {
			return nil, fmt.Errorf("%w: more than 2^32-1 contents", ErrBadVariation)
		}
	}
	return f, nil
}

// family is one base image and its extension pages, grown as bigger VMs need them.
type family struct {
	base      Image
	sizes     []uint16 // compressed sizes of the base's non-zero pages, one per page (duplicates included)
	zeroShare float64
	ext       []uint32
	rng       *rand.Rand // draws the extension, in page order whatever the order of the VMs that need it
}

func newFamily(im Image, sizes []uint16, rng *rand.Rand) family {
	f := family{base: im, rng: rng}
	for _, id := range im.Pages {
		if id != Zero {
			f.sizes = append(f.sizes, sizes[id])
		}
	}
	f.zeroShare = 1 - float64(len(f.sizes))/float64(len(im.Pages))
	return f
}

// drawSize draws a compressed size from the base's non-zero pages.
func (f *family) drawSize(rng *rand.Rand) uint16 { return f.sizes[rng.IntN(len(f.sizes))] }

// extend grows the family's extension to n pages, with fresh contents in fl.
func (f *family) extend(fl *Fleet, n int) {
	for len(f.ext) < n {
		if f.rng.Float64() < f.zeroShare {
			f.ext = append(f.ext, Zero)
			continue
		}
		fl.Sizes = append(fl.Sizes, f.drawSize(f.rng))
		f.ext = append(f.ext, uint32(len(fl.Sizes)-1))
	}
}

// cumulative returns the running sums of w(0..n-1).
func cumulative(n int, w func(int) float64) []float64 {
	cum := make([]float64, n)
	total := 0.0
	for i := range cum {
		total += w(i)
		cum[i] = total
	}
	return cum
}

// draw picks an index with probability proportional to its weight, given the running sums.
func draw(rng *rand.Rand, cum []float64) int {
	x := rng.Float64() * cum[len(cum)-1]
	i, _ := slices.BinarySearch(cum, x)
	return min(i, len(cum)-1)
}

// Stats summarises a fleet.
func (f *Fleet) Stats() FleetStats {
	s := FleetStats{VMs: len(f.VMs)}
	seen := make([]bool, len(f.Sizes))
	for _, vm := range f.VMs {
		s.RAMBytes += vm.MemBytes
		s.Pages += int64(vm.Pages)
		s.ZeroPages += int64(vm.ZeroPages)
		s.NonZeroPages += int64(vm.NonZeroPages)
		s.PrivatePages += int64(vm.PrivatePages)
		s.DirtyPages += int64(vm.DirtyPages)
		for _, id := range vm.Contents {
			if !seen[id] {
				seen[id] = true
				s.Distinct++
				s.DistinctBytes += uint64(f.Sizes[id])
			}
		}
	}
	if s.NonZeroPages > 0 {
		s.DuplicateShare = 1 - float64(s.Distinct)/float64(s.NonZeroPages)
		s.PrivateShare = float64(s.PrivatePages) / float64(s.NonZeroPages)
	}
	return s
}

// FleetStats are the totals of a fleet.
type FleetStats struct {
	VMs            int     `json:"vms"`
	RAMBytes       uint64  `json:"ram_bytes"`
	Pages          int64   `json:"pages"`
	ZeroPages      int64   `json:"zero_pages"`
	NonZeroPages   int64   `json:"nonzero_pages"`
	PrivatePages   int64   `json:"private_pages"`
	DirtyPages     int64   `json:"dirty_pages"`
	Distinct       int64   `json:"distinct"`
	DistinctBytes  uint64  `json:"distinct_bytes"` // Σ compressed size of the distinct contents
	DuplicateShare float64 `json:"duplicate_share"`
	PrivateShare   float64 `json:"private_share"`
}
