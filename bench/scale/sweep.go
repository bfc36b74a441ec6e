package scale

import (
	"fmt"
	"strings"
)

// Default grid of Sweep.
var (
	SweepVMs     = []int{100, 250, 500, 1000}
	SweepTargets = []int{10, 25, 50, 100}
)

// Row is one cell of a sweep: the figures of every method for N VMs on M targets, and their ratios.
type Row struct {
	VMs            int     `json:"vms"`
	Targets        int     `json:"targets"`
	RAMBytes       uint64  `json:"ram_bytes"`
	DuplicateShare float64 `json:"duplicate_share"` // of the non-zero pages, across the fleet

	Native     Method `json:"qemu_native"`
	Multicast  Method `json:"multicast"` // vmscatter over multicast, "ours" placement
	Unicast    Method `json:"unicast"`   // vmscatter over unicast, "ours" placement
	LowerBound Method `json:"lower_bound"`

	OursFabricPages   int `json:"ours_fabric_pages"`
	GreedyFabricPages int `json:"greedy_fabric_pages"`
	// The multicast schedule under "ours" (see PlacementFigures).
	Batches                  int     `json:"batches"`
	MembershipChanges        int     `json:"membership_changes"`
	LookaheadOneStallSeconds float64 `json:"lookahead_one_stall_seconds"`

	Ratios Ratios `json:"ratios"`
}

// Ratios compare the methods of a row.
type Ratios struct {
	MulticastSourceVsNative float64 `json:"multicast_source_vs_native"`
	UnicastSourceVsNative   float64 `json:"unicast_source_vs_native"`
	MulticastTargetVsNative float64 `json:"multicast_target_vs_native"`
	MulticastVsLowerBound   float64 `json:"multicast_source_vs_lower_bound"`
	MulticastTimeVsNative   float64 `json:"multicast_time_vs_native"`
	UnicastTimeVsNative     float64 `json:"unicast_time_vs_native"`
	OursVsGreedyFabric      float64 `json:"ours_vs_greedy_fabric"`
}

// RowOf flattens a projection into a row.
func RowOf(p Projection) Row {
	r := Row{VMs: p.VMs, Targets: p.Targets, RAMBytes: p.Fleet.RAMBytes, DuplicateShare: p.Fleet.DuplicateShare,
		Native: p.Native, Multicast: p.Ours.Multicast, Unicast: p.Ours.Unicast, LowerBound: p.LowerBound,
		OursFabricPages: p.Ours.FabricPages, GreedyFabricPages: p.Greedy.FabricPages,
		Batches: p.Ours.Batches, MembershipChanges: p.Ours.MembershipChanges, LookaheadOneStallSeconds: p.Ours.LookaheadOneStallSeconds}
	r.Ratios = Ratios{
		MulticastSourceVsNative: ratio(float64(r.Multicast.SourceBytes), float64(r.Native.SourceBytes)),
		UnicastSourceVsNative:   ratio(float64(r.Unicast.SourceBytes), float64(r.Native.SourceBytes)),
		MulticastTargetVsNative: ratio(float64(r.Multicast.TargetBytes), float64(r.Native.TargetBytes)),
		MulticastVsLowerBound:   ratio(float64(r.Multicast.SourceBytes), float64(r.LowerBound.SourceBytes)),
		MulticastTimeVsNative:   ratio(r.Multicast.Seconds, r.Native.Seconds),
		UnicastTimeVsNative:     ratio(r.Unicast.Seconds, r.Native.Seconds),
		OursVsGreedyFabric:      ratio(float64(r.OursFabricPages), float64(r.GreedyFabricPages)),
	}
	return r
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// Sweep generates one fleet per VM count (base's other fields, VMs replaced) and projects it onto every target
// count, skipping cells with more targets than VMs. progress, when not nil, is called after each cell.
func Sweep(m Model, c *Catalog, base Variation, vms, targets []int, progress func(Row)) ([]Row, error) {
	var rows []Row
	for _, n := range vms {
		v := base
		v.VMs = n
		f, err := Generate(c, v)
		if err != nil {
			return nil, err
		}
		for _, t := range targets {
			if t > n {
				continue
			}
			p, err := Project(m, f, t)
			if err != nil {
				return nil, err
			}
			r := RowOf(p)
			rows = append(rows, r)
			if progress != nil {
				progress(r)
			}
		}
	}
	return rows, nil
}

// Markdown renders sweep rows as a table: bytes leaving the source (GiB), total time (s), the ratios, and the
// multicast schedule's batches.
func Markdown(rows []Row) string {
	var b strings.Builder
	b.WriteString("| VMs | targets | RAM GiB | native src GiB | mcast src GiB | ucast src GiB | bound src GiB | mcast/native | ucast/native | mcast/bound | mcast tgt/native | native s | mcast s | ucast s | ours/greedy fabric | batches |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	gib := func(n uint64) string { return fmt.Sprintf("%.1f", float64(n)/(1<<30)) }
	for _, r := range rows {
		fmt.Fprintf(&b, "| %d | %d | %s | %s | %s | %s | %s | %.3f | %.3f | %.3f | %.3f | %.1f | %.1f | %.1f | %.4f | %d |\n",
			r.VMs, r.Targets, gib(r.RAMBytes), gib(r.Native.SourceBytes), gib(r.Multicast.SourceBytes), gib(r.Unicast.SourceBytes),
			gib(r.LowerBound.SourceBytes), r.Ratios.MulticastSourceVsNative, r.Ratios.UnicastSourceVsNative, r.Ratios.MulticastVsLowerBound,
			r.Ratios.MulticastTargetVsNative, r.Native.Seconds, r.Multicast.Seconds, r.Unicast.Seconds, r.Ratios.OursVsGreedyFabric, r.Batches)
	}
	return b.String()
}
