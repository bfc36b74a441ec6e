package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/vmscatter/vmscatter/bench/fixture"
	"github.com/vmscatter/vmscatter/bench/plot"
	"github.com/vmscatter/vmscatter/bench/scale"
)

// ScaleConfig is a scale projection run of `vmscatter bench --scale`.
type ScaleConfig struct {
	Dir    string   // results (scale.json, scale.md, scale-*.svg) and, without Images, the captured images
	Images []string // raw RAM images; none: capture 4 fixture guests first
	// BootFiles are the imaged guests' -kernel and -initrd files: their copies in RAM cost a seed record only.
	// With captured images, the fixture's.
	BootFiles []string
	VMs       []int // default 100, 250, 500, 1000
	Targets   []int // default 10, 25, 50, 100
	Out       io.Writer
}

// RunScale projects bytes and time for fleets of VMs made from real guest images, with the project's own scan,
// placement and schedule code and the model of bench/scale (docs/scale.md), and writes the table and the curves.
func RunScale(ctx context.Context, cfg ScaleConfig) ([]scale.Row, error) {
	out := cfg.Out
	if out == nil {
		out = io.Discard
	}
	if len(cfg.VMs) == 0 {
		cfg.VMs = []int{100, 250, 500, 1000}
	}
	if len(cfg.Targets) == 0 {
		cfg.Targets = []int{10, 25, 50, 100}
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	images, boot := cfg.Images, cfg.BootFiles
	if len(images) == 0 {
		fmt.Fprintln(out, "bench: capturing 4 fixture guests' RAM as the base images")
		var err error
		images, err = scale.Capture(ctx, scale.CaptureOptions{Dir: filepath.Join(cfg.Dir, "images"), Images: 4})
		if err != nil {
			return nil, err
		}
		p, err := fixture.Ensure(ctx)
		if err != nil {
			return nil, err
		}
		boot = []string{p.Kernel, p.Initrd}
	}
	cat, err := scale.LoadImageFilesWith(ctx, images, scale.LoadOptions{BootFiles: boot})
	if err != nil {
		return nil, err
	}
	rows, err := scale.Sweep(scale.DefaultModel(), cat, scale.DefaultVariation(0), cfg.VMs, cfg.Targets, func(r scale.Row) {
		fmt.Fprintf(out, "bench: %4d VMs → %3d targets: multicast %.3f, unicast %.3f of native bytes\n", r.VMs, r.Targets,
			r.Ratios.MulticastSourceVsNative, r.Ratios.UnicastSourceVsNative)
	})
	if err != nil {
		return nil, err
	}
	// What each host needs for a drain of 40 VMs × 16 GiB, by the store and capacity rules (docs/store.md).
	mem, err := scale.BigVMMemory(scale.DefaultModel(), cat, 40, 16<<30, []int{4, 10})
	if err != nil {
		return nil, err
	}
	for _, l := range mem {
		fmt.Fprintln(out, "bench: memory:", l)
	}
	b, _ := json.MarshalIndent(rows, "", "  ")
	if err := os.WriteFile(filepath.Join(cfg.Dir, "scale.json"), append(b, '\n'), 0o644); err != nil {
		return rows, err
	}
	md := scale.Markdown(rows) + "\nMemory each host needs (docs/store.md):\n\n"
	for _, l := range mem {
		md += "- " + l + "\n"
	}
	if err := os.WriteFile(filepath.Join(cfg.Dir, "scale.md"), []byte(md), 0o644); err != nil {
		return rows, err
	}
	return rows, writeScalePlots(cfg.Dir, rows)
}

// writeScalePlots draws, for the largest target count, source bytes and time against the number of VMs.
func writeScalePlots(dir string, rows []scale.Row) error {
	maxT := 0
	for _, r := range rows {
		maxT = max(maxT, r.Targets)
	}
	var sel []scale.Row
	for _, r := range rows {
		if r.Targets == maxT {
			sel = append(sel, r)
		}
	}
	sort.Slice(sel, func(i, j int) bool { return sel[i].VMs < sel[j].VMs })
	line := func(name string, f func(scale.Row) float64, dashed bool) plot.Line {
		l := plot.Line{Name: name, Dashed: dashed}
		for _, r := range sel {
			l.Points = append(l.Points, plot.Point{X: float64(r.VMs), Y: f(r)})
		}
		return l
	}
	gib := func(n uint64) float64 { return float64(n) / (1 << 30) }
	bytes := plot.LineChart{Title: fmt.Sprintf("bytes leaving the source, %d targets (model)", maxT), XLabel: "VMs", YLabel: "GiB",
		Lines: []plot.Line{
			line("QEMU native", func(r scale.Row) float64 { return gib(r.Native.SourceBytes) }, false),
			line("vmscatter unicast", func(r scale.Row) float64 { return gib(r.Unicast.SourceBytes) }, false),
			line("vmscatter multicast", func(r scale.Row) float64 { return gib(r.Multicast.SourceBytes) }, false),
			line("lower bound", func(r scale.Row) float64 { return gib(r.LowerBound.SourceBytes) }, true),
		}}
	secs := plot.LineChart{Title: fmt.Sprintf("total time, %d targets (model)", maxT), XLabel: "VMs", YLabel: "seconds",
		Lines: []plot.Line{
			line("QEMU native", func(r scale.Row) float64 { return r.Native.Seconds }, false),
			line("vmscatter unicast", func(r scale.Row) float64 { return r.Unicast.Seconds }, false),
			line("vmscatter multicast", func(r scale.Row) float64 { return r.Multicast.Seconds }, false),
		}}
	if err := plot.WriteFile(filepath.Join(dir, "scale-bytes.svg"), bytes.SVG()); err != nil {
		return err
	}
	return plot.WriteFile(filepath.Join(dir, "scale-time.svg"), secs.SVG())
}
