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
	// Big runs guests of a real size (BigShape) instead of MemoryMiB and Workload.
	Big *BigShape
	// StoreLimit is the receivers' --store-limit; "" keeps their default.
	StoreLimit string
	// SkipDefault leaves out QEMU's default configuration (its 20 s at 200 Mbit/s), for quicker runs that compare
	// vmscatter with QEMU's best alone; the ratios to the default are then 0.
	SkipDefault bool
	Out         io.Writer
}

// MethodFigures are one method's measured figures.
type MethodFigures struct {
	Method        string     `json:"method"`
	SourceTxBytes uint64     `json:"source_tx_bytes"` // bytes that left the source host's interface (its counters)
	TargetRxBytes uint64     `json:"target_rx_bytes"` // bytes that entered the targets' interfaces, summed
	TotalMS       int64      `json:"total_ms"`        // from the start until the last VM runs at its target
	DowntimeMS    []int64    `json:"downtime_ms"`     // per VM, QEMU's figure
	CPU           CPUFigures `json:"cpu"`             // CPU-seconds on the source and the targets (bench/cpu.go)
	// Peak resident sets in bytes (bench/cpu.go), vmscatter's processes only: the sender's, and each receiver's by
	// target index.
	SenderPeakRSS   int64    `json:"sender_peak_rss_bytes,omitempty"`
	ReceiverPeakRSS []int64  `json:"receiver_peak_rss_bytes,omitempty"`
	Migrated        int      `json:"migrated"`
	Failures        []string `json:"failures,omitempty"` // VM: what went wrong, for the VMs that did not migrate
}

// ran reports whether the method ran: results.json of runs before QEMU's best was a method have no figures for it.
func (m MethodFigures) ran() bool { return m.Method != "" }

// GoalVsBest is issue #17's goal: vmscatter sends at most this share of the bytes of QEMU's best own configuration
// (multifd + zstd), and takes at most this share of its time.
const GoalVsBest = 0.45

// CompareResult is what `vmscatter-lab bench` writes to results.json.
type CompareResult struct {
	Config struct {
		Guests    int    `json:"guests"`
		MemoryMiB int    `json:"memory_mib"`
		Targets   int    `json:"targets"`
		UplinkBps uint64 `json:"uplink_bps"`
		Workload  string `json:"workload"`
		// StoreLimit is the receivers' --store-limit ("" for their default, 4G).
		StoreLimit string `json:"store_limit,omitempty"`
	} `json:"config"`
	VMs       []string       `json:"vms"`
	Placement map[string]int `json:"placement"`   // VM -> target index, the same for every method
	Native    MethodFigures  `json:"qemu_native"` // QEMU's default configuration (QEMUDefault)
	Best      MethodFigures  `json:"qemu_best"`   // QEMU's best own configuration (QEMUBest)
	BestSetup NativeMethod   `json:"qemu_best_setup"`
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
		SourceBytesVsNative float64 `json:"source_bytes_vs_native"` // vmscatter / QEMU default
		TargetBytesVsNative float64 `json:"target_bytes_vs_native"`
		TimeVsNative        float64 `json:"time_vs_native"`
		SourceBytesVsBest   float64 `json:"source_bytes_vs_best"` // vmscatter / QEMU multifd+zstd
		TargetBytesVsBest   float64 `json:"target_bytes_vs_best"`
		TimeVsBest          float64 `json:"time_vs_best"`
		BoundVsNative       float64 `json:"bound_vs_native"`     // final bound / QEMU default's source bytes
		BoundVsBest         float64 `json:"bound_vs_best"`       // final bound / QEMU multifd+zstd's source bytes
		WireVsLowerBound    float64 `json:"wire_vs_lower_bound"` // vmscatter source bytes / final bound
		WireVsScanBound     float64 `json:"wire_vs_scan_bound"`  // vmscatter source bytes / the scan-time bound
	} `json:"ratios"`
	Started time.Time `json:"started"`
}

// RunCompare boots a set of guests and moves them with vmscatter; then, for QEMU's default and for its best own
// configuration, boots a fresh set of the same guests (same fixture, same workload, same settle time) and moves
// them with QEMU's own migration, straight to the same targets with the same placement, all at once. Every run goes
// through the same shaped source uplink.
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
	res := &CompareResult{Started: time.Now().UTC(), BestSetup: QEMUBest()}
	res.Config.Guests, res.Config.MemoryMiB, res.Config.Targets, res.Config.UplinkBps = cfg.Guests, cfg.MemoryMiB, cfg.Targets, cfg.UplinkBps
	res.Config.Workload = fmt.Sprintf("wss=%d rate=%g pages/s pattern=%s seed=%d private=%g", cfg.Workload.WSS, cfg.Workload.Rate,
		orDefault(cfg.Workload.Pattern, "seq"), cfg.Workload.Seed, cfg.Workload.Private)
	res.Config.StoreLimit = cfg.StoreLimit
	if cfg.Big != nil {
		shape := *cfg.Big
		if err := shape.fill(); err != nil {
			return nil, err
		}
		cfg.Big, cfg.MemoryMiB, res.Config.MemoryMiB, res.Config.Workload = &shape, shape.MemoryMiB, shape.MemoryMiB, shape.String()
	}
	guestGiB := float64(cfg.Guests*cfg.MemoryMiB) / 1024
	c, err := NewCluster(ctx, ClusterConfig{Targets: cfg.Targets, Bin: cfg.Bin, Dir: filepath.Join(cfg.Dir, "lab"),
		TargetCapacity: spreadCapacity(cfg.Guests, cfg.Targets, cfg.MemoryMiB), Snooping: true, Big: cfg.Big,
		StoreLimit: cfg.StoreLimit})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.Source.Shape(lab.Shaping{Rate: cfg.UplinkBps}); err != nil {
		return nil, fmt.Errorf("shaping the source uplink: %w", err)
	}
	opts := fixture.GuestOptions{MemoryMiB: cfg.MemoryMiB, Workload: cfg.Workload, Netns: c.Source.NS}
	// boot starts a fresh set of guests and lets them run for the settle time, measuring what they cost meanwhile.
	boot := func(prefix string) ([]*fixture.Guest, float64, error) {
		guests, err := c.StartGuests(ctx, prefix, cfg.Guests, opts)
		if err != nil {
			return nil, 0, err
		}
		cpu0, t0 := guestsCPU(guests), time.Now()
		time.Sleep(cfg.Settle)
		return guests, (guestsCPU(guests) - cpu0).Seconds() / time.Since(t0).Seconds(), nil
	}

	// 1. vmscatter.
	say("booting %d guests of %d MiB for the vmscatter run", cfg.Guests, cfg.MemoryMiB)
	guests, baseline, err := boot("vm")
	if err != nil {
		return nil, err
	}
	say("vmscatter send (uplink %s)", bps(cfg.UplinkBps))
	srcCPU0, rcvCPU0 := guestsCPU(guests), c.receiversCPU()
	sr, err := c.Send(ctx, guests, cfg.SendArgs...)
	if err != nil {
		return nil, err
	}
	res.Report = sr.Report
	res.Scatter = MethodFigures{Method: "vmscatter", SourceTxBytes: sr.SourceTx, TargetRxBytes: sum(sr.TargetRx), TotalMS: sr.Elapsed.Milliseconds(),
		SenderPeakRSS: sr.PeakRSS, ReceiverPeakRSS: c.ReceiverPeakRSS()}
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
	res.Scatter.CPU = CPUFigures{SourceQEMUSeconds: (guestsCPU(guests) - srcCPU0).Seconds(), SenderSeconds: sr.CPU.Seconds(),
		TargetQEMUSeconds: c.destinationsCPU(res.Placement).Seconds(), ReceiverSeconds: (c.receiversCPU() - rcvCPU0).Seconds(),
		SourceBaselinePerS: baseline, GuestGiB: guestGiB}
	res.LowerBoundBytes = sr.Report.Totals.LowerBoundBytes
	res.LowerBoundCompressedBytes = sr.Report.Totals.LowerBoundCompressedBytes
	res.FinalBoundBytes = sr.Report.Totals.FinalBoundBytes
	say("vmscatter: %d/%d migrated, %s left the source in %.1f s", res.Scatter.Migrated, cfg.Guests, mib(res.Scatter.SourceTxBytes), sr.Elapsed.Seconds())
	for i := range c.Targets {
		KillByPidfiles(c.DataDir(i))
	}

	// 2. and 3. QEMU's own migration, default and best, each with fresh guests of the same kind and the same placement.
	for _, run := range []struct {
		prefix string
		method NativeMethod
		into   *MethodFigures
	}{{"qn", QEMUDefault, &res.Native}, {"qb", res.BestSetup, &res.Best}} {
		m := run.method
		if cfg.SkipDefault && run.into == &res.Native {
			continue
		}
		say("booting %d fresh guests for the %s run", cfg.Guests, m.Name)
		guests, baseline, err := boot(run.prefix)
		if err != nil {
			return nil, err
		}
		say("%s: every VM straight to its target, all at once", m.Name)
		nr, err := c.MigrateNative(ctx, m, guests, assign, converge.DefaultDowntime)
		if err != nil {
			return nil, err
		}
		f := MethodFigures{Method: m.Name, SourceTxBytes: nr.SourceTx, TargetRxBytes: sum(nr.TargetRx), TotalMS: nr.Elapsed.Milliseconds(),
			CPU: CPUFigures{SourceQEMUSeconds: nr.SourceCPU.Seconds(), TargetQEMUSeconds: nr.TargetCPU.Seconds(), SourceBaselinePerS: baseline, GuestGiB: guestGiB}}
		for _, v := range nr.VMs {
			f.DowntimeMS = append(f.DowntimeMS, v.DowntimeMS)
			if v.Status == "completed" {
				f.Migrated++
			} else {
				f.Failures = append(f.Failures, v.Name+": "+v.Status)
				say("%s %s: %s", m.Name, v.Name, v.Status)
			}
		}
		*run.into = f
		say("%s: %d/%d migrated, %s left the source in %.1f s", m.Name, f.Migrated, cfg.Guests, mib(f.SourceTxBytes), nr.Elapsed.Seconds())
		for i := range c.Targets {
			KillByPidfiles(c.DataDir(i))
		}
	}
	res.derive()
	return res, writeCompare(cfg.Dir, res)
}

// derive computes what follows from the measured figures: each method's CPU-seconds per GiB, and the ratios.
func (r *CompareResult) derive() {
	for _, m := range []*MethodFigures{&r.Native, &r.Best, &r.Scatter} {
		m.CPU.perGiB(time.Duration(m.TotalMS) * time.Millisecond)
	}
	s, n, b, lb := r.Scatter, r.Native, r.Best, uint64(r.FinalBoundBytes)
	r.Ratios.SourceBytesVsNative = ratio(s.SourceTxBytes, n.SourceTxBytes)
	r.Ratios.TargetBytesVsNative = ratio(s.TargetRxBytes, n.TargetRxBytes)
	r.Ratios.TimeVsNative = ratio(uint64(s.TotalMS), uint64(n.TotalMS))
	r.Ratios.SourceBytesVsBest = ratio(s.SourceTxBytes, b.SourceTxBytes)
	r.Ratios.TargetBytesVsBest = ratio(s.TargetRxBytes, b.TargetRxBytes)
	r.Ratios.TimeVsBest = ratio(uint64(s.TotalMS), uint64(b.TotalMS))
	r.Ratios.BoundVsNative = ratio(lb, n.SourceTxBytes)
	r.Ratios.BoundVsBest = ratio(lb, b.SourceTxBytes)
	r.Ratios.WireVsLowerBound = ratio(s.SourceTxBytes, lb)
	r.Ratios.WireVsScanBound = ratio(s.SourceTxBytes, uint64(r.LowerBoundCompressedBytes))
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
	res.derive()
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
	var methods []MethodFigures
	if r.Native.ran() {
		methods = append(methods, r.Native)
	}
	if r.Best.ran() {
		methods = append(methods, r.Best)
	}
	methods = append(methods, r.Scatter)
	b.WriteString("| |")
	for _, m := range methods {
		fmt.Fprintf(&b, " %s |", m.Method)
	}
	ratioCols := 0
	if r.Native.ran() {
		b.WriteString(" vmscatter / default |")
		ratioCols++
	}
	if r.Best.ran() {
		b.WriteString(" vmscatter / best |")
		ratioCols++
	}
	b.WriteString("\n|---|" + strings.Repeat("---:|", len(methods)+ratioCols) + "\n")
	dash := func(s string) string { // a cell that does not apply
		if s == "" {
			return "–"
		}
		return s
	}
	row := func(name string, cell func(MethodFigures) string, vsDefault, vsBest string) {
		fmt.Fprintf(&b, "| %s |", name)
		for _, m := range methods {
			fmt.Fprintf(&b, " %s |", dash(cell(m)))
		}
		if r.Native.ran() {
			fmt.Fprintf(&b, " %s |", dash(vsDefault))
		}
		if r.Best.ran() {
			fmt.Fprintf(&b, " %s |", dash(vsBest))
		}
		b.WriteString("\n")
	}
	f3 := func(v float64) string { return fmt.Sprintf("%.3f", v) }
	row("bytes leaving the source", func(m MethodFigures) string { return mib(m.SourceTxBytes) },
		f3(r.Ratios.SourceBytesVsNative), f3(r.Ratios.SourceBytesVsBest))
	row("bytes entering the targets", func(m MethodFigures) string { return mib(m.TargetRxBytes) },
		f3(r.Ratios.TargetBytesVsNative), f3(r.Ratios.TargetBytesVsBest))
	row("total time (start → last VM runs)", func(m MethodFigures) string { return fmt.Sprintf("%.2f s", float64(m.TotalMS)/1000) },
		f3(r.Ratios.TimeVsNative), f3(r.Ratios.TimeVsBest))
	row("CPU-s per GiB of guest RAM, source", func(m MethodFigures) string { return fmt.Sprintf("%.2f", m.CPU.SourcePerGiB) },
		f3(ratioF(r.Scatter.CPU.SourcePerGiB, r.Native.CPU.SourcePerGiB)), f3(ratioF(r.Scatter.CPU.SourcePerGiB, r.Best.CPU.SourcePerGiB)))
	row("the same, less the guests' own running", func(m MethodFigures) string { return fmt.Sprintf("%.2f", m.CPU.SourceNetPerGiB) },
		f3(ratioF(r.Scatter.CPU.SourceNetPerGiB, r.Native.CPU.SourceNetPerGiB)), f3(ratioF(r.Scatter.CPU.SourceNetPerGiB, r.Best.CPU.SourceNetPerGiB)))
	row("CPU-s per GiB of guest RAM, targets", func(m MethodFigures) string { return fmt.Sprintf("%.2f", m.CPU.TargetPerGiB) },
		f3(ratioF(r.Scatter.CPU.TargetPerGiB, r.Native.CPU.TargetPerGiB)), f3(ratioF(r.Scatter.CPU.TargetPerGiB, r.Best.CPU.TargetPerGiB)))
	row("peak RSS of the sender", func(m MethodFigures) string {
		if m.SenderPeakRSS == 0 {
			return ""
		}
		return mib(uint64(m.SenderPeakRSS))
	}, "", "")
	row("peak RSS of each receiver (store limit "+orDefault(r.Config.StoreLimit, "4G")+")", func(m MethodFigures) string {
		if len(m.ReceiverPeakRSS) == 0 {
			return ""
		}
		var cells []string
		for _, n := range m.ReceiverPeakRSS {
			cells = append(cells, mib(uint64(n)))
		}
		return strings.Join(cells, ", ")
	}, "", "")
	row("VMs migrated", func(m MethodFigures) string { return fmt.Sprint(m.Migrated) }, "", "")
	row("downtime per VM (QEMU's figure), ms", func(m MethodFigures) string { return joinInts(m.DowntimeMS) }, "", "")
	row("final-state lower bound (bound / method)", func(m MethodFigures) string {
		if m.Method == r.Scatter.Method {
			return mib(uint64(r.FinalBoundBytes))
		}
		return ""
	}, f3(r.Ratios.BoundVsNative), f3(r.Ratios.BoundVsBest))
	if r.Best.ran() {
		met := func(v float64) string {
			if v > 0 && v <= GoalVsBest {
				return "met"
			}
			return "not met"
		}
		fmt.Fprintf(&b, "\nAgainst issue #17's goals, QEMU's best own configuration being %s (%d multifd channels, %s on both sides): "+
			"source bytes %.3f× its bytes (goal ≤ %.2f: %s), total time %.3f× its time (goal ≤ %.2f: %s). The final-state lower "+
			"bound is %.3f× its bytes.\n", r.Best.Method, r.BestSetup.MultifdChannels, r.BestSetup.MultifdCompression,
			r.Ratios.SourceBytesVsBest, GoalVsBest, met(r.Ratios.SourceBytesVsBest), r.Ratios.TimeVsBest, GoalVsBest,
			met(r.Ratios.TimeVsBest), r.Ratios.BoundVsBest)
	}
	b.WriteString("\nCPU-seconds (bench/cpu.go: the processes' own accounting, over each method's window), source QEMUs + sender / " +
		"destination QEMUs + receivers; in brackets the source QEMUs' rate without a migration, measured during the settle, " +
		"which the row \"less the guests' own running\" takes off over the window:")
	for _, m := range methods {
		c := m.CPU
		fmt.Fprintf(&b, " %s %.2f + %.2f / %.2f + %.2f (%.2f/s);", m.Method, c.SourceQEMUSeconds, c.SenderSeconds, c.TargetQEMUSeconds,
			c.ReceiverSeconds, c.SourceBaselinePerS)
	}
	fmt.Fprintf(&b, " per %.2f GiB of guest RAM.\n", r.Scatter.CPU.GuestGiB)
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

func ratioF(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
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
