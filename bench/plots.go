package bench

import (
	"fmt"
	"math"
	"path/filepath"

	"github.com/vmscatter/vmscatter/bench/plot"
)

// writePlots draws the comparison's charts next to results.json: bytes and time per method, relative to QEMU's
// default migration (so one axis serves both), absolute bytes with the lower bound, CPU-seconds per GiB of guest RAM
// on the source and on the targets, and downtime per VM.
func writePlots(dir string, res *CompareResult) error {
	var methods []MethodFigures
	if res.Native.ran() {
		methods = append(methods, res.Native)
	}
	if res.Best.ran() {
		methods = append(methods, res.Best)
	}
	methods = append(methods, res.Scatter)
	n := res.Native
	rel := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	lb := float64(res.FinalBoundBytes) // the bound the run is measured against (scatter.Totals.FinalBoundBytes)
	var relative, cpu, downtime []Series
	var names []string
	var absolute []float64
	for _, m := range methods {
		relative = append(relative, Series{Name: m.Method, Values: []float64{rel(float64(m.SourceTxBytes), float64(n.SourceTxBytes)),
			rel(float64(m.TargetRxBytes), float64(n.TargetRxBytes)), rel(float64(m.TotalMS), float64(n.TotalMS))}})
		cpu = append(cpu, Series{Name: m.Method, Values: []float64{m.CPU.SourcePerGiB, m.CPU.SourceNetPerGiB, m.CPU.TargetPerGiB}})
		downtime = append(downtime, Series{Name: m.Method, Values: floats(m.DowntimeMS)})
		names = append(names, m.Method)
		absolute = append(absolute, float64(m.SourceTxBytes)/(1<<20))
	}
	relative = append(relative, Series{Name: "lower bound", Values: []float64{rel(lb, float64(n.SourceTxBytes)), math.NaN(), math.NaN()}}) // a bound on bytes sent only
	charts := map[string][]byte{
		"methods.svg": plot.BarChart{
			Title: fmt.Sprintf("%d × %d MiB → %d targets, %s uplink", res.Config.Guests, res.Config.MemoryMiB,
				res.Config.Targets, bps(res.Config.UplinkBps)),
			YLabel:      "relative to QEMU default",
			Categories:  []string{"bytes leaving the source", "bytes into the targets", "total time"},
			ValueFormat: "%.2f",
			Series:      relative,
		}.SVG(),
		"bytes.svg": plot.BarChart{
			Title:       "bytes leaving the source (MiB)",
			YLabel:      "MiB",
			Categories:  append(names, "lower bound"),
			ValueFormat: "%.1f",
			Series:      []Series{{Name: "MiB", Values: append(absolute, lb/(1<<20))}},
		}.SVG(),
		"cpu.svg": plot.BarChart{
			Title:       "CPU-seconds per GiB of guest RAM moved",
			YLabel:      "CPU-s / GiB",
			Categories:  []string{"source (QEMUs + sender)", "source, less the guests' own running", "targets (QEMUs + receivers)"},
			ValueFormat: "%.2f",
			Series:      cpu,
		}.SVG(),
		"downtime.svg": plot.BarChart{
			Title:       "downtime per VM (QEMU's figure)",
			YLabel:      "ms",
			Categories:  res.VMs,
			ValueFormat: "%.0f",
			Series:      downtime,
		}.SVG(),
	}
	if !n.ran() { // bytes and time relative to QEMU's default need it
		delete(charts, "methods.svg")
	}
	for name, svg := range charts {
		if err := plot.WriteFile(filepath.Join(dir, name), svg); err != nil {
			return err
		}
	}
	return nil
}

// Series is plot.Series, named here for brevity.
type Series = plot.Series

func floats(v []int64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = float64(x)
	}
	return out
}

// writePolicyPlots draws the policy matrix: migration time and downtime per policy, for each dirty rate and
// pattern.
func writePolicyPlots(dir string, rows []PolicyRun) error {
	var cats []string
	seen := map[string]bool{}
	policies := []string{}
	pseen := map[string]bool{}
	for _, r := range rows {
		c := fmt.Sprintf("%.0f p/s %s", r.DirtyRate, r.Pattern)
		if !seen[c] {
			seen[c] = true
			cats = append(cats, c)
		}
		if !pseen[r.Policy] {
			pseen[r.Policy] = true
			policies = append(policies, r.Policy)
		}
	}
	value := func(pol, cat string, f func(PolicyRun) float64) float64 {
		for _, r := range rows {
			if r.Policy == pol && fmt.Sprintf("%.0f p/s %s", r.DirtyRate, r.Pattern) == cat {
				return f(r)
			}
		}
		return 0
	}
	chart := func(title, ylabel string, f func(PolicyRun) float64) []byte {
		var series []Series
		for _, pol := range policies {
			var v []float64
			for _, c := range cats {
				v = append(v, value(pol, c, f))
			}
			series = append(series, Series{Name: pol, Values: v})
		}
		return plot.BarChart{Title: title, YLabel: ylabel, Categories: cats, Series: series, ValueFormat: "%.1f", LogY: true}.SVG()
	}
	if err := plot.WriteFile(filepath.Join(dir, "policies-time.svg"), chart("migration time by policy (rolled back runs: their timeout)", "seconds",
		func(r PolicyRun) float64 { return float64(r.MigrationMS) / 1000 })); err != nil {
		return err
	}
	return plot.WriteFile(filepath.Join(dir, "policies-downtime.svg"), chart("downtime by policy (QEMU's figure, or from vmscatter's stop)", "ms",
		func(r PolicyRun) float64 { return float64(r.DowntimeMS) }))
}
