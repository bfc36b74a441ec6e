package grouping

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// syntheticFleet draws a sharing map shaped like a fleet of cloud VMs (deterministic for a seed):
//
//   - 20 images in 4 families (distributions) of 5. A VM's image is drawn Zipf-like: image i with weight
//     1/(i+1), so the most popular image has about 28% of the VMs and the least about 1.4%.
//   - 200 firmware pages common to every VM, each held with probability 0.95.
//   - Per family, 600 pages (kernel, libc), each held by a VM of the family with probability 0.9.
//   - Per image, a base of 1,500–3,000 pages; a VM holds each with its own probability in [0.6, 0.95]
//     (what its page cache and heap happen to hold).
//   - Per VM, 500–2,000 private pages.
//
// That is about 2–5 k non-zero contents per VM. VM memory is 1, 2, 4 or 8 GiB (probabilities 0.4, 0.3, 0.2,
// 0.1) with as many vCPUs as GiB. Targets come in three sizes (0.5×, 1× and 1.5× of an even share) adding up
// to 1.25× the VMs' memory, with vCPU slots for 2 vCPUs per GiB of memory.
func syntheticFleet(seed uint64, nVMs, nTargets int) Problem {
	rng := rand.New(rand.NewPCG(seed, 0x5ca77e4))
	const images, families, firmware, familyPages = 20, 4, 200, 600
	next := uint32(0)
	pool := func(n int) []uint32 {
		out := make([]uint32, n)
		for i := range out {
			out[i] = next
			next++
		}
		return out
	}
	fw := pool(firmware)
	fam := make([][]uint32, families)
	for f := range fam {
		fam[f] = pool(familyPages)
	}
	base := make([][]uint32, images)
	cum := make([]float64, images)
	total := 0.0
	for i := range base {
		base[i] = pool(1500 + rng.IntN(1501))
		total += 1 / float64(i+1)
		cum[i] = total
	}
	p := Problem{}
	var vmMem uint64
	holdSome := func(cs []uint32, from []uint32, prob float64) []uint32 {
		for _, c := range from {
			if rng.Float64() < prob {
				cs = append(cs, c)
			}
		}
		return cs
	}
	privates := make([]int, nVMs)
	for v := range nVMs {
		x := rng.Float64() * total
		img := 0
		for cum[img] < x {
			img++
		}
		var cs []uint32
		cs = holdSome(cs, fw, 0.95)
		cs = holdSome(cs, fam[img%families], 0.9)
		cs = holdSome(cs, base[img], 0.6+0.35*rng.Float64())
		privates[v] = 500 + rng.IntN(1501)
		p.Contents = append(p.Contents, cs)
		gib := []int{1, 1, 1, 1, 2, 2, 2, 4, 4, 8}[rng.IntN(10)]
		p.VMs = append(p.VMs, VM{Name: fmt.Sprintf("vm%04d-img%02d", v, img), MemBytes: uint64(gib) << 30, VCPUs: gib})
		vmMem += uint64(gib) << 30
	}
	// Private pages come after every shared pool, so each VM's list stays sorted.
	for v := range nVMs {
		p.Contents[v] = append(p.Contents[v], pool(privates[v])...)
	}
	share := float64(vmMem) * 1.25 / float64(nTargets)
	for t := range nTargets {
		gib := uint64(math.Ceil(share * []float64{0.5, 1, 1.5}[t%3] / (1 << 30)))
		p.Targets = append(p.Targets, Target{Name: fmt.Sprintf("host%03d", t), MemBytes: gib << 30, VCPUSlots: int(2 * gib)})
	}
	p.NumContents = int(next)
	return p
}

// go test ./grouping -run '^$' -bench 'Place/1000x100' -benchtime 5x
func BenchmarkPlace(b *testing.B) {
	p := syntheticFleet(1, 1000, 100)
	greedyPl, err := Place(p, Greedy)
	if err != nil {
		b.Fatal(err)
	}
	for _, alg := range []Algorithm{Greedy, Ours} {
		b.Run(fmt.Sprintf("1000x100/%s", alg), func(b *testing.B) {
			var pl Placement
			for b.Loop() {
				if pl, err = Place(p, alg); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(pl.FabricPages), "fabric-pages")
			b.ReportMetric(float64(pl.FabricPages)/float64(greedyPl.FabricPages), "vs-greedy")
			b.ReportMetric(float64(pl.FabricPages)/float64(pl.SourcePages), "fabric/source")
			// The part of the fabric the placement controls: the pages sent to more than one target.
			b.ReportMetric(float64(pl.FabricPages-pl.SourcePages)/float64(greedyPl.FabricPages-greedyPl.SourcePages), "excess-vs-greedy")
		})
	}
}

// go test ./grouping -run '^$' -bench Schedule -benchtime 5x
func BenchmarkSchedule(b *testing.B) {
	p := syntheticFleet(1, 1000, 100)
	pl, err := Place(p, Ours)
	if err != nil {
		b.Fatal(err)
	}
	var s Schedule
	for b.Loop() {
		s = BuildSchedule(p, pl.Assign)
	}
	b.ReportMetric(float64(len(s.Batches)), "batches")
	b.ReportMetric(float64(s.MembershipChanges), "changes")
	b.ReportMetric(float64(2*s.TargetsUsed), "ideal-changes")
}

// TestSyntheticFleet places a smaller fleet with both algorithms, checks the placements and schedules, and
// that ours beats greedy there.
func TestSyntheticFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("synthetic fleet: skipped in -short")
	}
	p := syntheticFleet(7, 200, 20)
	g, err := Place(p, Greedy)
	if err != nil {
		t.Fatal(err)
	}
	o, err := Place(p, Ours)
	if err != nil {
		t.Fatal(err)
	}
	checkPlacement(t, p, g)
	checkPlacement(t, p, o)
	s := BuildSchedule(p, o.Assign)
	checkSchedule(t, p, o.Assign, s)
	t.Logf("200 VMs x 20 targets: source %d pages, fabric greedy %d, ours %d (%.1f%% less); %d batches, %d membership changes (ideal %d)",
		o.SourcePages, g.FabricPages, o.FabricPages, 100*(1-float64(o.FabricPages)/float64(g.FabricPages)), len(s.Batches), s.MembershipChanges, 2*s.TargetsUsed)
	if o.FabricPages >= g.FabricPages {
		t.Errorf("ours %d did not beat greedy %d on the synthetic fleet", o.FabricPages, g.FabricPages)
	}
}
