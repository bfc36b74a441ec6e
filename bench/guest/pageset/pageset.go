// Package pageset lays out the guest workload's working set: 4 KiB pages that each carry their own index,
// generation and checksum, filled with content derived from a seed, so that a running guest can verify its whole
// memory and a host can compute exactly what any page of that guest holds.
//
// Byte layout of one page (little endian):
//
//	[0:4]       magic "VMSp"
//	[4:8]       flags: bit 0 set when the page is private (its content mixes in the guest's salt)
//	[8:16]      page index inside the working set
//	[16:24]     generation: 0 after Fill, +1 on every Dirty
//	[24:4088]   body: 508 words from splitmix64, seeded by (seed, index, generation, salt when private or dirtied)
//	[4088:4096] xxhash64 of bytes [0:4088]
//
// Generation-0 pages that are not private depend only on the seed and the index: two guests with the same seed hold
// them byte for byte. Dirtied pages mix in the salt, so with distinct salts they are unique to their guest.
//
// A Set is not safe for concurrent use.
package pageset

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cespare/xxhash/v2"
)

// PageSize is the size of one page of the working set, equal to the x86 guest page size.
const PageSize = 4096

const (
	offFlags = 4
	offIndex = 8
	offGen   = 16
	offBody  = 24
	offSum   = PageSize - 8

	flagPrivate = 1
)

var magic = [4]byte{'V', 'M', 'S', 'p'}

// Params fixes the content of every page.
type Params struct {
	Seed uint64 // shared content derives from it
	Salt uint64 // private and dirtied content derive from it too; distinct per guest for unique pages
	// Private is the fraction of pages, in [0,1], whose generation-0 content mixes in the salt. Which pages are
	// private depends on the seed and the index only.
	Private float64
}

// Validate reports whether p is usable.
func (p Params) Validate() error {
	if !(p.Private >= 0 && p.Private <= 1) { // also rejects NaN
		return fmt.Errorf("pageset: private fraction %v outside [0,1]", p.Private)
	}
	return nil
}

// IsPrivate reports whether page i is private under p.
func (p Params) IsPrivate(i int) bool {
	if p.Private <= 0 {
		return false
	}
	return float64(mix(p.Seed^0x5052495641544521, uint64(i))%1_000_000) < p.Private*1_000_000
}

// WritePage fills page (PageSize bytes) with the content of page i at generation gen.
func WritePage(page []byte, p Params, i int, gen uint64) {
	page = page[:PageSize]
	copy(page, magic[:])
	private := p.IsPrivate(i)
	var flags uint32
	if private {
		flags |= flagPrivate
	}
	binary.LittleEndian.PutUint32(page[offFlags:], flags)
	binary.LittleEndian.PutUint64(page[offIndex:], uint64(i))
	binary.LittleEndian.PutUint64(page[offGen:], gen)
	state := mix(p.Seed, uint64(i))
	state = mix(state, gen)
	if private || gen > 0 {
		state = mix(state, p.Salt)
	}
	for off := offBody; off < offSum; off += 8 {
		state += 0x9e3779b97f4a7c15
		binary.LittleEndian.PutUint64(page[off:], finalize(state))
	}
	binary.LittleEndian.PutUint64(page[offSum:], xxhash.Sum64(page[:offSum]))
}

// mix combines two words into one (splitmix64 finalizer over their combination).
func mix(a, b uint64) uint64 {
	return finalize(a*0x9e3779b97f4a7c15 ^ (b + 0x632be59bd9b4e019))
}

func finalize(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// ErrLength reports a memory region that is not a positive whole number of pages.
var ErrLength = errors.New("pageset: region is not a positive multiple of the page size")

// PageError describes a page that does not hold what the set expects.
type PageError struct {
	Page   int
	Reason string // "magic", "index", "gen" or "sum"
	Got    uint64
	Want   uint64
}

func (e *PageError) Error() string {
	return fmt.Sprintf("page=%d reason=%s got=%#x want=%#x", e.Page, e.Reason, e.Got, e.Want)
}

// CheckPage verifies that page holds a well-formed page i at generation gen. It returns a *PageError on mismatch.
func CheckPage(page []byte, i int, gen uint64) error {
	page = page[:PageSize]
	if m := binary.LittleEndian.Uint32(page); m != binary.LittleEndian.Uint32(magic[:]) {
		return &PageError{Page: i, Reason: "magic", Got: uint64(m), Want: uint64(binary.LittleEndian.Uint32(magic[:]))}
	}
	if got := binary.LittleEndian.Uint64(page[offIndex:]); got != uint64(i) {
		return &PageError{Page: i, Reason: "index", Got: got, Want: uint64(i)}
	}
	if got := binary.LittleEndian.Uint64(page[offGen:]); got != gen {
		return &PageError{Page: i, Reason: "gen", Got: got, Want: gen}
	}
	if got, want := binary.LittleEndian.Uint64(page[offSum:]), xxhash.Sum64(page[:offSum]); got != want {
		return &PageError{Page: i, Reason: "sum", Got: got, Want: want}
	}
	return nil
}

// Set is a working set laid over a memory region.
type Set struct {
	mem  []byte
	gens []uint64
	p    Params
}

// New lays a set over mem, whose length must be a positive multiple of PageSize. It does not write: call Fill.
func New(mem []byte, p Params) (*Set, error) {
	if len(mem) == 0 || len(mem)%PageSize != 0 {
		return nil, fmt.Errorf("%w: %d bytes", ErrLength, len(mem))
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &Set{mem: mem, gens: make([]uint64, len(mem)/PageSize), p: p}, nil
}

// Len returns the number of pages.
func (s *Set) Len() int { return len(s.gens) }

// Page returns the bytes of page i.
func (s *Set) Page(i int) []byte { return s.mem[i*PageSize : (i+1)*PageSize : (i+1)*PageSize] }

// Gen returns the generation page i should hold.
func (s *Set) Gen(i int) uint64 { return s.gens[i] }

// Fill writes every page at generation 0.
func (s *Set) Fill() {
	for i := range s.gens {
		s.gens[i] = 0
		WritePage(s.Page(i), s.p, i, 0)
	}
}

// Dirty rewrites page i with its next generation.
func (s *Set) Dirty(i int) {
	s.gens[i]++
	WritePage(s.Page(i), s.p, i, s.gens[i])
}

// Check verifies page i against the generation the set last wrote. It returns a *PageError on mismatch.
func (s *Set) Check(i int) error { return CheckPage(s.Page(i), i, s.gens[i]) }

// Repair rewrites page i with the content it should hold, so that one corruption is reported once.
func (s *Set) Repair(i int) { WritePage(s.Page(i), s.p, i, s.gens[i]) }
