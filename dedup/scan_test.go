package dedup

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
)

// pageOf returns a page whose content is determined by label; label 0 is the zero page.
func pageOf(label int) []byte {
	p := make([]byte, PageSize)
	if label == 0 {
		return p
	}
	r := rand.New(rand.NewPCG(uint64(label), 42))
	for i := 0; i < PageSize; i += 8 {
		binary.LittleEndian.PutUint64(p[i:], r.Uint64())
	}
	return p
}

func memOf(labels ...int) []byte {
	var b []byte
	for _, l := range labels {
		b = append(b, pageOf(l)...)
	}
	return b
}

func memRegion(vm int, block string, mem []byte) Region {
	return Region{VM: vm, Block: block, Size: int64(len(mem)), R: bytes.NewReader(mem)}
}

// naiveMap computes, by brute force, content bytes -> sorted holders, and per VM the set of
// content bytes.
func naiveMap(t *testing.T, regions []Region) (holders map[string][]Location, perVM map[int]map[string]bool, zero int) {
	t.Helper()
	holders = map[string][]Location{}
	perVM = map[int]map[string]bool{}
	for ri, r := range regions {
		mem := make([]byte, r.Size)
		if _, err := r.R.ReadAt(mem, 0); err != nil && err != io.EOF {
			t.Fatalf("naive read: %v", err)
		}
		for p := 0; p < len(mem)/PageSize; p++ {
			page := mem[p*PageSize : (p+1)*PageSize]
			if IsZero(page) {
				zero++
				continue
			}
			holders[string(page)] = append(holders[string(page)], Location{Region: uint32(ri), Page: PageIndex(p)})
			if perVM[r.VM] == nil {
				perVM[r.VM] = map[string]bool{}
			}
			perVM[r.VM][string(page)] = true
		}
	}
	return holders, perVM, zero
}

// checkMap compares m with the brute-force answer, assuming no fingerprint collisions.
func checkMap(t *testing.T, m *SharingMap, regions []Region) {
	t.Helper()
	holders, perVM, zero := naiveMap(t, regions)
	if m.ZeroPages != zero || m.Distinct() != len(holders) || m.Pages != m.ZeroPages+m.NonZeroPages {
		t.Fatalf("counts: pages %d zero %d nonzero %d distinct %d; want zero %d distinct %d",
			m.Pages, m.ZeroPages, m.NonZeroPages, m.Distinct(), zero, len(holders))
	}
	page := make([]byte, PageSize)
	byContent := map[string]ContentID{}
	total := 0
	for id := range m.Contents {
		hs := m.Holders(ContentID(id))
		if len(hs) == 0 || int(m.Contents[id].Count) != len(hs) {
			t.Fatalf("content %d: count %d, holders %d", id, m.Contents[id].Count, len(hs))
		}
		total += len(hs)
		if err := m.ReadPage(hs[0], page); err != nil {
			t.Fatal(err)
		}
		if XXHash(page) != m.Contents[id].FP {
			t.Fatalf("content %d: fingerprint differs from its first holder's", id)
		}
		if !slices.Equal(hs, holders[string(page)]) {
			t.Fatalf("content %d: holders %v, want %v", id, hs, holders[string(page)])
		}
		byContent[string(page)] = ContentID(id)
		// First occurrence order.
		if id > 0 {
			prev := m.Holders(ContentID(id - 1))[0]
			if prev.Region > hs[0].Region || prev.Region == hs[0].Region && prev.Page >= hs[0].Page {
				t.Fatalf("content %d first seen at %v, before content %d at %v", id, hs[0], id-1, prev)
			}
		}
		var vms []int
		for _, h := range hs {
			vms = append(vms, m.Regions[h.Region].VM)
		}
		slices.Sort(vms)
		if got := m.HolderVMs([]int{-7}, ContentID(id)); !slices.Equal(got[1:], slices.Compact(vms)) || got[0] != -7 {
			t.Fatalf("HolderVMs(%d) = %v, want [-7] + %v", id, got, slices.Compact(vms))
		}
	}
	if total != m.NonZeroPages {
		t.Fatalf("holders total %d, non-zero pages %d", total, m.NonZeroPages)
	}
	for vm, ids := range m.PerVM {
		var want []ContentID
		for c := range perVM[vm] {
			want = append(want, byContent[c])
		}
		slices.Sort(want)
		if !slices.Equal(ids, want) {
			t.Fatalf("PerVM[%d] = %v, want %v", vm, ids, want)
		}
	}
}

func TestScanSharingMap(t *testing.T) {
	regions := []Region{
		memRegion(0, "pc.ram", memOf(1, 2, 0, 3, 1, 1, 0, 4)), // intra-VM duplicates
		memRegion(1, "pc.ram", memOf(2, 5, 0, 0, 3, 6)),       // cross-VM duplicates
		memRegion(0, "vga.vram", memOf(4, 7, 0)),              // second block of VM 0
		memRegion(3, "pc.ram", memOf(0, 0, 0)),                // all zero; VM 2 absent
		memRegion(1, "empty", nil),
	}
	for _, workers := range []int{1, 3} {
		for _, chunk := range []int64{PageSize, 2 * PageSize, DefaultChunkSize} {
			t.Run(fmt.Sprintf("workers=%d/chunk=%d", workers, chunk), func(t *testing.T) {
				m, err := Scan(context.Background(), regions, ScanOptions{Workers: workers, ChunkSize: chunk})
				if err != nil {
					t.Fatal(err)
				}
				checkMap(t, m, regions)
				if m.Pages != 20 || m.ZeroPages != 8 || m.Distinct() != 7 || len(m.PerVM) != 4 || len(m.PerVM[2]) != 0 {
					t.Fatalf("pages %d zero %d distinct %d vms %d", m.Pages, m.ZeroPages, m.Distinct(), len(m.PerVM))
				}
				// Content 0 is label 1: three pages of VM 0.
				if got := m.Holders(0); !slices.Equal(got, []Location{{0, 0}, {0, 4}, {0, 5}}) {
					t.Fatalf("holders of content 0: %v", got)
				}
				if vm, block, off := m.Where(Location{Region: 2, Page: 1}); vm != 0 || block != "vga.vram" || off != PageSize {
					t.Fatalf("Where = %d %q %d", vm, block, off)
				}
			})
		}
	}
}

func TestScanRandomMatchesBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var regions []Region
	for vm := range 5 {
		for b := range 2 {
			labels := make([]int, r.IntN(300))
			for i := range labels {
				labels[i] = r.IntN(60) // about 1 in 60 zero, plenty of duplicates
			}
			regions = append(regions, memRegion(vm, fmt.Sprint("block", b), memOf(labels...)))
		}
	}
	m, err := Scan(context.Background(), regions, ScanOptions{Workers: 2, ChunkSize: 16 * PageSize})
	if err != nil {
		t.Fatal(err)
	}
	checkMap(t, m, regions)
}

// failingReader returns an error for any read that reaches failAt.
type failingReader struct {
	r      io.ReaderAt
	failAt int64
	err    error
}

func (f failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) <= f.failAt {
		return f.r.ReadAt(p, off)
	}
	n, _ := f.r.ReadAt(p[:max(0, f.failAt-off)], off)
	return n, f.err
}

func TestScanRegionErrors(t *testing.T) {
	errDisk := errors.New("input/output error")
	good := memRegion(0, "pc.ram", memOf(1, 2, 3, 0))
	shortMem := memOf(2, 8, 9)
	short := Region{VM: 1, Block: "pc.ram", Size: 6 * PageSize, R: bytes.NewReader(shortMem)} // 3 pages missing
	failing := Region{VM: 2, Block: "pc.ram", Size: 8 * PageSize,
		R: failingReader{r: bytes.NewReader(memOf(3, 10, 11, 12, 13, 14, 15, 16)), failAt: 5 * PageSize, err: errDisk}}
	regions := []Region{good, short, failing}

	t.Run("abort", func(t *testing.T) {
		_, err := Scan(context.Background(), regions, ScanOptions{Workers: 2, ChunkSize: PageSize})
		var re *RegionError
		if !errors.As(err, &re) || re.Region != 1 || !errors.Is(err, io.ErrUnexpectedEOF) || re.Offset != 3*PageSize {
			t.Fatalf("err = %v, want the short region's error at offset %#x", err, 3*PageSize)
		}
	})
	t.Run("continue", func(t *testing.T) {
		var seen []int
		m, err := Scan(context.Background(), regions, ScanOptions{Workers: 2, ChunkSize: 2 * PageSize,
			OnRegionError: func(e *RegionError) error { seen = append(seen, e.Region); return nil }})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(seen, []int{1, 2}) {
			t.Fatalf("OnRegionError called for %v", seen)
		}
		if m.Regions[1].Err == nil || m.Regions[2].Err == nil || !errors.Is(m.Regions[2].Err, errDisk) || m.Regions[0].Err != nil {
			t.Fatalf("region errors: %v %v %v", m.Regions[0].Err, m.Regions[1].Err, m.Regions[2].Err)
		}
		// Only the good region remains; contents seen only in failed regions are gone.
		checkMap(t, m, regions[:1])
		if m.Pages != 4 || m.Distinct() != 3 || len(m.PerVM[1]) != 0 || len(m.PerVM[2]) != 0 {
			t.Fatalf("pages %d distinct %d perVM %v", m.Pages, m.Distinct(), m.PerVM)
		}
	})
	t.Run("stop", func(t *testing.T) {
		stop := errors.New("stop")
		_, err := Scan(context.Background(), regions, ScanOptions{
			OnRegionError: func(e *RegionError) error { return stop }})
		if !errors.Is(err, stop) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestScanRejectsBadRegions(t *testing.T) {
	mem := memOf(1)
	for _, r := range []Region{
		{VM: -1, Size: PageSize, R: bytes.NewReader(mem)},
		{VM: MaxVMs, Size: PageSize, R: bytes.NewReader(mem)},
		{VM: 0, Size: PageSize + 1, R: bytes.NewReader(mem)},
		{VM: 0, Size: PageSize},
	} {
		if _, err := Scan(context.Background(), []Region{r}, ScanOptions{}); !errors.Is(err, ErrBadRegion) {
			t.Errorf("Scan(%+v) err = %v, want ErrBadRegion", r, err)
		}
	}
	if _, err := Scan(context.Background(), nil, ScanOptions{ChunkSize: 1000}); err == nil {
		t.Errorf("odd chunk size: err = %v", err)
	}
}

// blockingReader blocks every read until its context ends.
type blockingReader struct{ ctx context.Context }

func (b blockingReader) ReadAt(p []byte, off int64) (int, error) {
	<-b.ctx.Done()
	return 0, b.ctx.Err()
}

func TestScanCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	regions := []Region{{VM: 0, Block: "pc.ram", Size: 64 * PageSize, R: blockingReader{ctx}}}
	done := make(chan error)
	go func() {
		_, err := Scan(ctx, regions, ScanOptions{Workers: 2, ChunkSize: PageSize})
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestScanFingerprintCollisionsStayApproximate(t *testing.T) {
	// With a fingerprint of the first byte only, different pages merge into one content:
	// the map is a plan, not proof. The holder lists still cover every non-zero page.
	weak := func(p []byte) Fingerprint { return Fingerprint(p[0]) }
	regions := []Region{memRegion(0, "pc.ram", memOf(1, 2, 3, 4, 5, 0, 6, 7))}
	m, err := Scan(context.Background(), regions, ScanOptions{Fingerprint: weak})
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for id := range m.Contents {
		total += len(m.Holders(ContentID(id)))
	}
	if total != 7 || m.NonZeroPages != 7 || m.Distinct() > 7 {
		t.Fatalf("total holders %d nonzero %d distinct %d", total, m.NonZeroPages, m.Distinct())
	}
}
