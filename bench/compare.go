package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmscatter/vmscatter/bench/fixture"
	"github.com/vmscatter/vmscatter/bench/lab"
	"github.com/vmscatter/vmscatter/scatter/converge"
	"github.com/vmscatter/vmscatter/scatter/report"
)

// CompareConfig is one side-by-side run: the same guests, the same targets, QEMU's own migration against vmscatter.
type CompareConfig struct {
	Bin       string
	Dir       string // where results go (results.json, summary.md, plots)
	Guests    int    // default 4
	MemoryMiB int    // default 128
	Targets   int    // default 2
	UplinkBps uint64 // source uplink shaping in bit/s; default 1 Gbit/s
	Settle    time.Duration
	Workload  fixture.Workload
	SendArgs  []string // extra `vmscatter send` arguments
	Out       io.Writer
}

// MethodFigures are one method's measured figures.
type MethodFigures struct {
	Method        string   `json:"method"`
	SourceTxBytes uint64   `json:"source_tx_bytes"` // bytes that left the source host's interface (its counters)
	TargetRxBytes uint64   `json:"target_rx_bytes"` // bytes that entered the targets' interfaces, summed
	TotalMS       int64    `json:"total_ms"`        // from the start until the last VM runs at its target
	DowntimeMS    []int64  `json:"downtime_ms"`     // per VM, QEMU's figure
	Migrated      int      `json:"migrated"`
	Failures      []string `json:"failures,omitempty"` // VM: what went wrong, for the VMs that did not migrate
}

// CompareResult is what `vmscatter bench` writes to results.json.
type CompareResult struct {
	Config struct {
		Guests    int    `json:"guests"`
		MemoryMiB int    `json:"memory_mib"`
		Targets   int    `json:"targets"`
		UplinkBps uint64 `json:"uplink_bps"`
		Workload  string `json:"workload"`
	} `json:"config"`
	VMs       []string       `json:"vms"`
	Placement map[string]int `json:"placement"` // VM -> target index, the same for both methods
	Native    MethodFigures  `json:"qemu_native"`
	Scatter   MethodFigures  `json:"vmscatter"`
	Report    report.Report  `json:"vmscatter_report"`
	// LowerBoundBytes is each distinct non-zero page once per target that needs it (unicast), uncompressed;
	// LowerBoundCompressedBytes the same, compressed as the prime sends it.
	LowerBoundBytes           int64 `json:"lower_bound_bytes"`
	LowerBoundCompressedBytes int64 `json:"lower_bound_compressed_bytes"`
	// FinalBoundBytes is the bound the run is measured against: each distinct non-zero content of what the
	// destinations loaded, that a target did not hold locally, once per target set of the transport used, compressed
	// as it travelled (report.Totals.FinalBoundBytes).
	FinalBoundBytes int64 `json:"final_bound_bytes"`
	Ratios          struct {
		SourceBytesVsNative float64 `json:"source_bytes_vs_native"` // vmscatter / QEMU native
		TargetBytesVsNative float64 `json:"target_bytes_vs_native"`
		TimeVsNative        float64 `json:"time_vs_native"`
		WireVsLowerBound    float64 `json:"wire_vs_lower_bound"` // vmscatter source bytes / final bound
		WireVsScanBound     float64 `json:"wire_vs_scan_bound"`  // vmscatter source bytes / the scan-time bound
	} `json:"ratios"`
	Started time.Time `json:"started"`
}

// RunCompare boots a set of guests and moves them with vmscatter, then boots a fresh set of the same guests (same
// fixture, same workload, same settle time) and moves them with QEMU's own migration, straight to the same targets
// with the same placement, all at once. Both runs go through the same shaped source uplink.
func RunCompare(ctx context.Context, cfg CompareConfig) (*CompareResult, error) {
	scenarioDefaults(&cfg.Guests, &cfg.Targets, &cfg.MemoryMiB)
	if cfg.UplinkBps == 0 {
		cfg.UplinkBps = 1e9
	}
	if cfg.Settle == 0 {
		cfg.Settle = 5 * time.Second
	}
	if cfg.Workload.WSS == 0 {
		cfg.Workload = fixture.Workload{WSS: 16 << 20, Rate: 200, Seed: 7, Private: 0.25}
	}
	out := cfg.Out
	if out == nil {
		out = io.Discard
	}
	say := func(format string, args ...any) { fmt.Fprintf(out, "bench: "+format+"\n", args...) }
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	res := &CompareResult{Started: time.Now().UTC()}
	res.Config.Guests, res.Config.MemoryMiB, res.Config.Targets, res.Config.UplinkBps = cfg.Guests, cfg.MemoryMiB, cfg.Targets, cfg.UplinkBps
	res.Config.Workload = fmt.Sprintf("wss=%d rate=%g pages/s pattern=%s seed=%d private=%g", cfg.Workload.WSS, cfg.Workload.Rate,
		orDefault(cfg.Workload.Pattern, "seq"), cfg.Workload.Seed, cfg.Workload.Private)
	c, err := NewCluster(ctx, ClusterConfig{Targets: cfg.Targets, Bin: cfg.Bin, Dir: filepath.Join(cfg.Dir, "lab"),
		TargetCapacity: spreadCapacity(cfg.Guests, cfg.Targets, cfg.MemoryMiB), Snooping: true})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.Source.Shape(lab.Shaping{Rate: cfg.UplinkBps}); err != nil {
		return nil, fmt.Errorf("shaping the source uplink: %w", err)
	}
	opts := fixture.GuestOptions{MemoryMiB: cfg.MemoryMiB, Workload: cfg.Workload, Netns: c.Source.NS}

	// 1. vmscatter.
	say("booting %d guests of %d MiB for the vmscatter run", cfg.Guests, cfg.MemoryMiB)
	guests, err := c.StartGuests(ctx, "vm", cfg.Guests, opts)
	if err != nil {
		return nil, err
	}
	time.Sleep(cfg.Settle)
	say("vmscatter send (uplink %s)", bps(cfg.UplinkBps))
	sr, err := c.Send(ctx, guests, cfg.SendArgs...)
	if err != nil {
		return nil, err
	}
	res.Report = sr.Report
	res.Scatter = MethodFigures{Method: "vmscatter", SourceTxBytes: sr.SourceTx, TargetRxBytes: sum(sr.TargetRx), TotalMS: sr.Elapsed.Milliseconds()}
	res.Placement = map[string]int{}
	assign := make([]int, len(guests))
	for i, v := range sr.Report.VMs {
		res.VMs = append(res.VMs, v.Name)
		res.Scatter.DowntimeMS = append(res.Scatter.DowntimeMS, v.DowntimeMS)
		if v.Status == report.StatusMigrated {
			res.Scatter.Migrated++
		} else {
			res.Scatter.Failures = append(res.Scatter.Failures, v.Name+": "+v.Status+": "+v.Error)
		}
		ti := c.TargetIndex(v.Target)
		if ti < 0 {
			ti = i % cfg.Targets
		}
		assign[i] = ti
		res.Placement[v.Name] = ti
	}
	res.LowerBoundBytes = sr.Report.Totals.LowerBoundBytes
	res.LowerBoundCompressedBytes = sr.Report.Totals.LowerBoundCompressedBytes
	res.FinalBoundBytes = sr.Report.Totals.FinalBoundBytes
	say("vmscatter: %d/%d migrated, %s left the source in %.1f s", res.Scatter.Migrated, cfg.Guests, mib(res.Scatter.SourceTxBytes), sr.Elapsed.Seconds())
	for i := range c.Targets {
		KillByPidfiles(c.DataDir(i))
	}

	// 2. QEMU native, fresh guests of the same kind, same placement.
	say("booting %d fresh guests for the QEMU-native run", cfg.Guests)
	native, err := c.StartGuests(ctx, "qn", cfg.Guests, opts)
	if err != nil {
		return nil, err
	}
	time.Sleep(cfg.Settle)
	say("QEMU native migration, every VM straight to its target, all at once")
	nr, err := c.MigrateNative(ctx, native, assign, converge.DefaultDowntime)
	if err != nil {
		return nil, err
	}
	res.Native = MethodFigures{Method: "QEMU native", SourceTxBytes: nr.SourceTx, TargetRxBytes: sum(nr.TargetRx), TotalMS: nr.Elapsed.Milliseconds()}
	for _, v := range nr.VMs {
		res.Native.DowntimeMS = append(res.Native.DowntimeMS, v.DowntimeMS)
		if v.Status == "completed" {
			res.Native.Migrated++
		} else {
			res.Native.Failures = append(res.Native.Failures, v.Name+": "+v.Status)
			say("native %s: %s", v.Name, v.Status)
		}
	}
	say("QEMU native: %d/%d migrated, %s left the source in %.1f s", res.Native.Migrated, cfg.Guests, mib(res.Native.SourceTxBytes), nr.Elapsed.Seconds())
	res.Ratios.SourceBytesVsNative = ratio(res.Scatter.SourceTxBytes, res.Native.SourceTxBytes)
	res.Ratios.TargetBytesVsNative = ratio(res.Scatter.TargetRxBytes, res.Native.TargetRxBytes)
	res.Ratios.TimeVsNative = ratio(uint64(res.Scatter.TotalMS), uint64(res.Native.TotalMS))
	res.Ratios.WireVsLowerBound = ratio(res.Scatter.SourceTxBytes, uint64(res.FinalBoundBytes))
	res.Ratios.WireVsScanBound = ratio(res.Scatter.SourceTxBytes, uint64(res.LowerBoundCompressedBytes))
	return res, writeCompare(cfg.Dir, res)
}

// Replot reads dir/results.json of an earlier run and writes its summary.md and plots again.
func Replot(dir string) (*CompareResult, error) {
	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		return nil, err
	}
	var res CompareResult
	if err := json.Unmarshal(b, &res); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "results.json"), err)
	}
	return &res, writeCompare(dir, &res)
}

func writeCompare(dir string, res *CompareResult) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "summary.md"), []byte(res.Markdown()), 0o644); err != nil {
		return err
	}
	return writePlots(dir, res)
}

// Markdown renders the result as the table docs/benchmarks.md shows.
func (r *CompareResult) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d guests × %d MiB → %d targets, source uplink %s; workload: %s\n\n", r.Config.Guests, r.Config.MemoryMiB,
		r.Config.Targets, bps(r.Config.UplinkBps), r.Config.Workload)
	fmt.Fprintf(&b, "| | QEMU native | vmscatter | vmscatter / native |\n|---|---:|---:|---:|\n")
	fmt.Fprintf(&b, "| bytes leaving the source | %s | %s | %.3f |\n", mib(r.Native.SourceTxBytes), mib(r.Scatter.SourceTxBytes), r.Ratios.SourceBytesVsNative)
	fmt.Fprintf(&b, "| bytes entering the targets | %s | %s | %.3f |\n", mib(r.Native.TargetRxBytes), mib(r.Scatter.TargetRxBytes), r.Ratios.TargetBytesVsNative)
	fmt.Fprintf(&b, "| total time (start → last VM runs) | %.2f s | %.2f s | %.3f |\n", float64(r.Native.TotalMS)/1000, float64(r.Scatter.TotalMS)/1000, r.Ratios.TimeVsNative)
	fmt.Fprintf(&b, "| VMs migrated | %d | %d | |\n", r.Native.Migrated, r.Scatter.Migrated)
	fmt.Fprintf(&b, "| downtime per VM (QEMU's figure), ms | %s | %s | |\n", joinInts(r.Native.DowntimeMS), joinInts(r.Scatter.DowntimeMS))
	t := r.Report.Totals
	fmt.Fprintf(&b, "\nTransport %s. Lower bound for it, over what the destinations loaded (each distinct non-zero content "+
		"that a target did not hold locally, once per target that needs it over unicast, once in all over multicast, "+
		"compressed as it travelled): %s for %d distinct pages; vmscatter's source bytes are **%.3f×** that bound. "+
		"The same bound over the scan instead (contents as scanned, before the guests wrote more): %s uncompressed, "+
		"%s compressed (%.3f×). Scan: %d non-zero pages, %d distinct, %d ms.\n", r.Report.Transport,
		mib(uint64(r.FinalBoundBytes)), t.FinalDistinctPages, r.Ratios.WireVsLowerBound,
		mib(uint64(r.LowerBoundBytes)), mib(uint64(r.LowerBoundCompressedBytes)), r.Ratios.WireVsScanBound, t.NonZeroPages, t.DistinctPages, t.ScanMS)
	p := t.Phases
	fmt.Fprintf(&b, "\nvmscatter's phases, ms: prepare %d, scan %d, place %d, seed %d, prime %d, migrate %d. "+
		"Primed %s, of which %s held contents that no VM's final memory references (the guests overwrote them).\n",
		p.Prepare, p.Scan, p.Place, p.Seed, p.Prime, p.Migrate, mib(uint64(t.PrimeBytes)), mib(uint64(t.PrimeUnusedBytes)))
	return b.String()
}

func sum(v []uint64) uint64 {
	var s uint64
	for _, x := range v {
		s += x
	}
	return s
}

func ratio(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func bps(n uint64) string {
	if n >= 1e9 {
		return fmt.Sprintf("%g Gbit/s", float64(n)/1e9)
	}
	return fmt.Sprintf("%g Mbit/s", float64(n)/1e6)
}

func joinInts(v []int64) string {
	var s []string
	for _, x := range v {
		s = append(s, fmt.Sprint(x))
	}
	return strings.Join(s, ", ")
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
