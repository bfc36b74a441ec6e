package scale

import (
	"bytes"
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscatter/vmscatter/grouping"
)

// smallCatalog is 4 synthetic images of 8 MiB each: big enough for statistics, small enough for -race.
func smallCatalog() *Catalog { return SyntheticCatalog(3, 4, 2048) }

// tinyCatalog is 4 synthetic images of 2 MiB each, for projections (placement dominates their cost).
func tinyCatalog() *Catalog { return SyntheticCatalog(3, 4, 512) }

func TestSyntheticCatalogStats(t *testing.T) {
	s := SyntheticCatalog(1, 4, 32768).Stats()
	t.Logf("%+v", s)
	if math.Abs(float64(s.ZeroPages)/float64(s.Pages)-synthZeroShare) > 0.01 {
		t.Errorf("zero share %d/%d, want about %g", s.ZeroPages, s.Pages, synthZeroShare)
	}
	// Common slots held unmutated by at least two of the four images make roughly a third of the non-zero
	// pages duplicates; the measured 4 identical guests reached 58%, 4 different families fewer.
	if s.DuplicateShare < 0.25 || s.DuplicateShare > 0.45 {
		t.Errorf("duplicate share %.3f outside [0.25, 0.45]", s.DuplicateShare)
	}
	if s.CompressedRatio < 0.25 || s.CompressedRatio > 0.40 {
		t.Errorf("compressed ratio %.3f outside [0.25, 0.40]", s.CompressedRatio)
	}
}

// TestLoadImages builds three small images byte by byte and checks the catalog's vectors and sizes.
func TestLoadImages(t *testing.T) {
	const pages = 64
	rng := rand.New(rand.NewPCG(1, 2))
	random := func() []byte {
		p := make([]byte, PageSize)
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		return p
	}
	shared, text := random(), bytes.Repeat([]byte("vmscatter "), PageSize/10+1)[:PageSize]
	var imgs [][]byte
	for range 3 {
		var b []byte
		for i := range pages {
			switch {
			case i%4 == 0:
				b = append(b, make([]byte, PageSize)...) // zero
			case i == 1:
				b = append(b, shared...) // in every image
			case i == 2 || i == 3:
				b = append(b, text...) // twice per image, in every image
			default:
				b = append(b, random()...) // private
			}
		}
		imgs = append(imgs, append(b, 1, 2, 3)) // a trailing partial page is ignored
	}
	var srcs []ImageSource
	for i, b := range imgs {
		srcs = append(srcs, ImageSource{Name: string(rune('a' + i)), Size: int64(len(b)), R: bytes.NewReader(b)})
	}
	c, err := LoadImages(context.Background(), srcs)
	if err != nil {
		t.Fatal(err)
	}
	s := c.Stats()
	private := pages - pages/4 - 3
	if s.Pages != 3*pages || s.ZeroPages != 3*pages/4 || s.Distinct != 2+3*private {
		t.Fatalf("stats %+v, want %d pages, %d zero, %d distinct", s, 3*pages, 3*pages/4, 2+3*private)
	}
	for k, im := range c.Images {
		if len(im.Pages) != pages || im.Pages[0] != Zero || im.Pages[2] != im.Pages[3] || im.Pages[1] != c.Images[0].Pages[1] {
			t.Errorf("image %d: vector %v", k, im.Pages[:5])
		}
	}
	// Contents are priced as the prime sends them: shares of zstd bundles of 15 contents in id order. The shared
	// random page and the text page are in the first bundle, so they cost the same share, and the text makes it
	// compress; a bundle of random pages alone goes raw.
	if a, b := c.Sizes[c.Images[0].Pages[1]], c.Sizes[c.Images[0].Pages[2]]; a != b || a >= PageSize {
		t.Errorf("first bundle's shares %d and %d, want equal and below a page", a, b)
	}
	last := len(c.Sizes) - 1
	if z := c.Sizes[last]; z < PageSize*9/10 {
		t.Errorf("a bundle of random pages priced at %d bytes a page", z)
	}

	// A boot file that holds the shared page at a sector boundary: that content costs a seed record only.
	boot := filepath.Join(t.TempDir(), "vmlinuz")
	var bf []byte
	bf = append(bf, make([]byte, 512)...)
	bf = append(bf, shared...)
	if err := os.WriteFile(boot, bf, 0o644); err != nil {
		t.Fatal(err)
	}
	c2, err := LoadImagesWith(context.Background(), srcs, LoadOptions{BootFiles: []string{boot}})
	if err != nil {
		t.Fatal(err)
	}
	if c2.Seeded != 1 || c2.Sizes[c2.Images[0].Pages[1]] != seedRecordCost {
		t.Errorf("seeded %d, shared page priced %d; want 1 and %d", c2.Seeded, c2.Sizes[c2.Images[0].Pages[1]], seedRecordCost)
	}
}

func TestGeneratePrivateShare(t *testing.T) {
	c := smallCatalog()
	v := DefaultVariation(80)
	f, err := Generate(c, v)
	if err != nil {
		t.Fatal(err)
	}
	holders := make([]int, len(f.Sizes))
	for _, vm := range f.VMs {
		for _, id := range vm.Contents {
			holders[id]++
		}
	}
	var sum float64
	for _, vm := range f.VMs {
		if vm.PrivateShare < v.PrivateMin || vm.PrivateShare > v.PrivateMax {
			t.Errorf("%s drew private share %g outside [%g, %g]", vm.Name, vm.PrivateShare, v.PrivateMin, v.PrivateMax)
		}
		got := float64(vm.PrivatePages) / float64(vm.NonZeroPages)
		sigma := math.Sqrt(vm.PrivateShare * (1 - vm.PrivateShare) / float64(vm.NonZeroPages))
		if math.Abs(got-vm.PrivateShare) > 4*sigma+1e-9 {
			t.Errorf("%s: private %.4f, drew %.4f (σ %.4f)", vm.Name, got, vm.PrivateShare, sigma)
		}
		sum += got
		if vm.ZeroPages+vm.NonZeroPages != vm.Pages || vm.MemBytes != uint64(vm.Pages)*PageSize {
			t.Errorf("%s: page counts %+v", vm.Name, vm)
		}
		if want := int(math.Round(v.Dirty * float64(vm.NonZeroPages))); vm.DirtyPages != want {
			t.Errorf("%s: %d dirty pages, want %d", vm.Name, vm.DirtyPages, want)
		}
		// Every private content is held by this VM alone.
		private := 0
		for _, id := range vm.Contents {
			if int(id) >= len(c.Sizes) && holders[id] != 1 {
				t.Fatalf("%s: private content %d held by %d VMs", vm.Name, id, holders[id])
			}
			if int(id) >= len(c.Sizes) {
				private++
			}
		}
		if private != vm.PrivatePages {
			t.Errorf("%s: %d private contents for %d private pages", vm.Name, private, vm.PrivatePages)
		}
	}
	if mean := sum / float64(len(f.VMs)); math.Abs(mean-0.175) > 0.03 {
		t.Errorf("mean private share %.3f, want about 0.175", mean)
	}
	// Zipf families: image 0 is the most popular.
	count := make([]int, len(c.Images))
	for _, vm := range f.VMs {
		count[vm.Family]++
	}
	if count[0] <= count[len(count)-1] {
		t.Errorf("family counts %v are not Zipf-like", count)
	}
}

func TestGenerateScale(t *testing.T) {
	c := smallCatalog()
	v := DefaultVariation(40)
	v.ScaleFactors, v.ScaleSkew, v.PrivateMin, v.PrivateMax = []int{1, 2, 4}, 1, 0, 0
	f, err := Generate(c, v)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	var big []SyntheticVM
	for _, vm := range f.VMs {
		seen[vm.Scale] = true
		if vm.Pages != vm.Scale*len(c.Images[vm.Family].Pages) {
			t.Errorf("%s: %d pages at scale %d", vm.Name, vm.Pages, vm.Scale)
		}
		if vm.Scale > 1 {
			big = append(big, vm)
		}
	}
	if len(seen) != 3 {
		t.Errorf("scales drawn: %v", seen)
	}
	// Without private pages, two VMs of one family and scale hold the same contents.
	for i := range big {
		for j := range i {
			if big[i].Family == big[j].Family && big[i].Scale == big[j].Scale && !reflect.DeepEqual(big[i].Contents, big[j].Contents) {
				t.Fatalf("%s and %s differ", big[i].Name, big[j].Name)
			}
		}
	}
}

func TestGenerateDeterministic(t *testing.T) {
	c := tinyCatalog()
	v := DefaultVariation(30)
	v.ScaleFactors, v.ScaleSkew = []int{1, 2}, 1
	a, _ := Generate(c, v)
	b, _ := Generate(c, v)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("same seed, different fleets")
	}
	v.Seed++
	d, _ := Generate(c, v)
	if reflect.DeepEqual(a.VMs, d.VMs) {
		t.Fatal("different seeds, same fleet")
	}
	pa, err := Project(DefaultModel(), a, 5)
	if err != nil {
		t.Fatal(err)
	}
	pb, _ := Project(DefaultModel(), b, 5)
	if !reflect.DeepEqual(pa, pb) {
		t.Fatal("same fleet, different projections")
	}
}

func TestGenerateRefuses(t *testing.T) {
	c := smallCatalog()
	for _, v := range []Variation{{VMs: 0}, {VMs: 3, PrivateMin: 0.5, PrivateMax: 0.2}, {VMs: 3, Dirty: 2}, {VMs: 3, ScaleFactors: []int{0}}} {
		if _, err := Generate(c, v); !errors.Is(err, ErrBadVariation) {
			t.Errorf("%+v: %v", v, err)
		}
	}
	if _, err := Generate(&Catalog{}, DefaultVariation(3)); !errors.Is(err, ErrBadCatalog) {
		t.Errorf("empty catalog: %v", err)
	}
}

// checkSanity asserts the orderings every projection must show.
func checkSanity(t *testing.T, p Projection) {
	t.Helper()
	nat, mc, uc, lb := p.Native, p.Ours.Multicast, p.Ours.Unicast, p.LowerBound
	// With one or two targets, multicast's joins may delay the streams enough for a few more stale pages than
	// unicast's longer prime: compare the primes there.
	mcOK := mc.SourceBytes <= uc.SourceBytes || (p.Targets <= 2 && mc.PrimeBytes <= uc.PrimeBytes)
	if !(lb.SourceBytes <= mc.SourceBytes && mcOK && mc.PrimeBytes <= uc.PrimeBytes && uc.SourceBytes <= nat.SourceBytes) {
		t.Errorf("source bytes: bound %d, multicast %d, unicast %d, native %d", lb.SourceBytes, mc.SourceBytes, uc.SourceBytes, nat.SourceBytes)
	}
	for name, m := range map[string]Method{"native": nat, "multicast": mc, "unicast": uc, "greedy multicast": p.Greedy.Multicast} {
		if lb.TargetBytes > m.TargetBytes || lb.Seconds > m.Seconds {
			t.Errorf("%s: target bytes %d, %.2f s below the bound's %d, %.2f s", name, m.TargetBytes, m.Seconds, lb.TargetBytes, lb.Seconds)
		}
	}
	if mc.TargetBytes-mc.StreamBytes != uc.TargetBytes-uc.StreamBytes || uc.TargetBytes-uc.StreamBytes != uc.PrimeBytes {
		t.Errorf("targets receive primes of %d bytes over multicast, %d over unicast (%d sent)",
			mc.TargetBytes-mc.StreamBytes, uc.TargetBytes-uc.StreamBytes, uc.PrimeBytes)
	}
	if p.Ours.FabricPages > p.Greedy.FabricPages {
		t.Errorf("ours fabric %d above greedy %d", p.Ours.FabricPages, p.Greedy.FabricPages)
	}
	if mc.Seconds != mc.ScanSeconds+mc.PrimeSeconds+mc.MigrateSeconds || mc.Seconds <= 0 || nat.Seconds <= 0 {
		t.Errorf("times: %+v, native %.2f", mc, nat.Seconds)
	}
}

func TestProjectSanity(t *testing.T) {
	c := tinyCatalog()
	for _, n := range []int{12, 60} {
		f, err := Generate(c, DefaultVariation(n))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range []int{1, 3, 6} {
			p, err := Project(DefaultModel(), f, m)
			if err != nil {
				t.Fatal(err)
			}
			checkSanity(t, p)
			t.Logf("%d VMs × %d targets: native %d, multicast %d (%.3f), unicast %d, bound %d; fabric ours %d greedy %d",
				n, m, p.Native.SourceBytes, p.Ours.Multicast.SourceBytes, RowOf(p).Ratios.MulticastSourceVsNative,
				p.Ours.Unicast.SourceBytes, p.LowerBound.SourceBytes, p.Ours.FabricPages, p.Greedy.FabricPages)
		}
	}
}

func TestProjectMonotone(t *testing.T) {
	c := tinyCatalog()
	m := DefaultModel()
	m.Schedule = false // the schedule heuristic's membership changes need not grow with the fleet
	project := func(v Variation, targets int, m Model) Projection {
		t.Helper()
		f, err := Generate(c, v)
		if err != nil {
			t.Fatal(err)
		}
		p, err := Project(m, f, targets)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	// More VMs (the smaller fleet is a prefix of the larger with the same seed): more of everything.
	small, large := project(DefaultVariation(20), 4, m), project(DefaultVariation(40), 4, m)
	for name, pair := range map[string][2]Method{"native": {small.Native, large.Native}, "multicast": {small.Ours.Multicast, large.Ours.Multicast},
		"unicast": {small.Ours.Unicast, large.Ours.Unicast}, "bound": {small.LowerBound, large.LowerBound}} {
		if pair[0].SourceBytes >= pair[1].SourceBytes || pair[0].Seconds > pair[1].Seconds {
			t.Errorf("%s: 20 VMs %d B %.2f s, 40 VMs %d B %.2f s", name, pair[0].SourceBytes, pair[0].Seconds, pair[1].SourceBytes, pair[1].Seconds)
		}
	}
	// More sharing (a smaller private share): fewer bytes for vmscatter and the bound, the same for QEMU.
	shared, private := DefaultVariation(30), DefaultVariation(30)
	shared.PrivateMin, shared.PrivateMax = 0.05, 0.05
	private.PrivateMin, private.PrivateMax = 0.5, 0.5
	ps, pp := project(shared, 3, m), project(private, 3, m)
	if ps.Ours.Multicast.SourceBytes >= pp.Ours.Multicast.SourceBytes || ps.Ours.Unicast.SourceBytes >= pp.Ours.Unicast.SourceBytes ||
		ps.LowerBound.SourceBytes >= pp.LowerBound.SourceBytes {
		t.Errorf("more sharing did not mean fewer bytes: %+v vs %+v", ps.Ours.Multicast, pp.Ours.Multicast)
	}
	if ps.Native.SourceBytes != pp.Native.SourceBytes {
		t.Errorf("QEMU native depends on sharing: %d vs %d", ps.Native.SourceBytes, pp.Native.SourceBytes)
	}
	// A faster uplink: no method gets slower.
	fast := m
	fast.UplinkBps *= 4
	pf, pm := project(DefaultVariation(30), 3, fast), project(DefaultVariation(30), 3, m)
	if pf.Native.Seconds > pm.Native.Seconds || pf.Ours.Multicast.Seconds > pm.Ours.Multicast.Seconds || pf.Ours.Unicast.Seconds > pm.Ours.Unicast.Seconds {
		t.Errorf("a faster uplink is slower")
	}
	// More targets under unicast: each content goes to more places.
	if few, many := project(DefaultVariation(30), 2, m), project(DefaultVariation(30), 10, m); few.Ours.Unicast.SourceBytes > many.Ours.Unicast.SourceBytes {
		t.Errorf("unicast to 2 targets %d B, to 10 targets %d B", few.Ours.Unicast.SourceBytes, many.Ours.Unicast.SourceBytes)
	}
}

func TestProjectRefuses(t *testing.T) {
	f, _ := Generate(tinyCatalog(), DefaultVariation(4))
	bad := DefaultModel()
	bad.UplinkBps = 0
	if _, err := Project(bad, f, 2); !errors.Is(err, ErrBadModel) {
		t.Errorf("zero uplink: %v", err)
	}
	if _, err := Project(DefaultModel(), f, 5); !errors.Is(err, ErrBadModel) {
		t.Errorf("more targets than VMs: %v", err)
	}
	var ce *grouping.CapacityError
	tight := DefaultModel()
	tight.CapacitySlack = 1
	v := DefaultVariation(5)
	v.ScaleFactors = []int{1, 4}
	g, _ := Generate(tinyCatalog(), v)
	if _, err := Project(tight, g, 4); err != nil && !errors.As(err, &ce) {
		t.Errorf("tight capacity: %v", err)
	}
}

func TestValidate(t *testing.T) {
	v := DefaultVariation(4)
	v.RoundRobin, v.PrivateMin, v.PrivateMax = true, 0, 0
	f, err := Generate(tinyCatalog(), v)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Project(DefaultModel(), f, 2)
	if err != nil {
		t.Fatal(err)
	}
	results := `{"config":{"guests":4,"targets":2},"qemu_native":{"source_tx_bytes":` + itoa(p.Native.SourceBytes*2) +
		`,"total_ms":1000},"vmscatter":{"source_tx_bytes":` + itoa(p.Ours.Unicast.SourceBytes) + `,"total_ms":2000},` +
		`"vmscatter_report":{"transport":"unicast"}}`
	meas, err := ReadMeasured(strings.NewReader(results))
	if err != nil {
		t.Fatal(err)
	}
	val, err := Validate(DefaultModel(), f, meas)
	if err != nil {
		t.Fatal(err)
	}
	if val.Errors.NativeSourceBytes != -0.5 || val.Errors.ScatterSourceBytes != 0 {
		t.Errorf("errors %+v", val.Errors)
	}
	if want := p.Native.Seconds - 1; math.Abs(val.Errors.NativeSeconds-want) > 1e-9 {
		t.Errorf("native time error %g, want %g", val.Errors.NativeSeconds, want)
	}
	if val.MaxAbsError() < 0.5 {
		t.Errorf("max error %g", val.MaxAbsError())
	}
	meas.VMs = 5
	if _, err := Validate(DefaultModel(), f, meas); !errors.Is(err, ErrBadMeasurement) {
		t.Errorf("VM count mismatch: %v", err)
	}
	if _, err := ReadMeasured(strings.NewReader(`{"config":{}}`)); !errors.Is(err, ErrBadMeasurement) {
		t.Errorf("empty results: %v", err)
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

func TestSweepAndMarkdown(t *testing.T) {
	var seen int
	rows, err := Sweep(DefaultModel(), tinyCatalog(), DefaultVariation(0), []int{10, 20}, []int{2, 5, 15}, func(Row) { seen++ })
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 5 || seen != 5 { // 15 targets > 10 VMs is skipped
		t.Fatalf("%d rows, %d progress calls", len(rows), seen)
	}
	md := Markdown(rows)
	if n := strings.Count(md, "\n"); n != 2+len(rows) {
		t.Errorf("markdown has %d lines:\n%s", n, md)
	}
	for _, r := range rows {
		if r.Ratios.MulticastSourceVsNative <= 0 || r.Ratios.MulticastSourceVsNative >= 1 || r.Ratios.OursVsGreedyFabric > 1 {
			t.Errorf("row %d×%d ratios %+v", r.VMs, r.Targets, r.Ratios)
		}
	}
	t.Log("\n" + md)
}
