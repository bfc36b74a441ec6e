package scale

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/bench/fixture"
)

var (
	captureDir = flag.String("scale.capture", "", "boot -scale.k fixture guests and pmemsave their RAM into this directory (needs QEMU)")
	captureK   = flag.Int("scale.k", 4, "base images to capture")
	sameSeed   = flag.Bool("scale.sameseed", false, "capture guests with the same workload seed (as bench.RunCompare) instead of seeds 7, 8, ...")
	images     = flag.String("scale.images", "", "glob of raw base RAM images for -scale.sweep and -scale.validate; default synthetic")
	sweepOut   = flag.String("scale.sweep", "", "run the full sweep and write sweep.md and sweep.json into this directory")
	results    = flag.String("scale.validate", "", "a `vmscatter bench` results.json to validate the model against (with -scale.images)")
	bootFiles  = flag.String("scale.boot", "", "comma-separated boot files (-kernel, -initrd) of the imaged guests: their copies in RAM cost a seed record")
)

// loadCatalog returns the images of -scale.images, or 4 synthetic images of 128 MiB.
func loadCatalog(t testing.TB) (*Catalog, string) {
	if *images == "" {
		return SyntheticCatalog(1, 4, 32768), "synthetic: SyntheticCatalog(seed 1, 4 images × 32768 pages)"
	}
	paths, err := filepath.Glob(*images)
	if err != nil || len(paths) == 0 {
		t.Fatalf("-scale.images %q: %v (no match)", *images, err)
	}
	c, err := LoadImageFilesWith(context.Background(), paths, LoadOptions{BootFiles: bootFileList()})
	if err != nil {
		t.Fatal(err)
	}
	return c, fmt.Sprintf("captured: %d images (%s)", len(paths), *images)
}

// TestCapture takes base images from real fixture guests: go test ./bench/scale -run TestCapture -scale.capture DIR
func TestCapture(t *testing.T) {
	if *captureDir == "" {
		t.Skip("capture: skipped without -scale.capture DIR (boots QEMU guests)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	paths, err := Capture(ctx, CaptureOptions{Dir: *captureDir, Images: *captureK, SameSeed: *sameSeed,
		Workload: fixture.Workload{WSS: 16 << 20, Rate: 200, Seed: 7, Private: 0.25}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := LoadImageFilesWith(ctx, paths, LoadOptions{BootFiles: bootFileList()})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%v: %+v", paths, c.Stats())
}

// TestSweepReport runs the documented sweep: go test ./bench/scale -run TestSweepReport -scale.sweep DIR -timeout 30m
func TestSweepReport(t *testing.T) {
	if *sweepOut == "" {
		t.Skip("sweep: skipped without -scale.sweep DIR (minutes of CPU)")
	}
	c, source := loadCatalog(t)
	start := time.Now()
	rows, err := Sweep(DefaultModel(), c, DefaultVariation(0), SweepVMs, SweepTargets, func(r Row) {
		t.Logf("%4d VMs × %3d targets: multicast/native %.3f, %.1f s after start", r.VMs, r.Targets, r.Ratios.MulticastSourceVsNative, time.Since(start).Seconds())
	})
	if err != nil {
		t.Fatal(err)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	md := fmt.Sprintf("Base images: %s, %+v.\nModel: %+v.\nVariation: %+v.\nSweep took %.0f s; heap peak about %d MiB.\n\n%s",
		source, c.Stats(), DefaultModel(), DefaultVariation(0), time.Since(start).Seconds(), ms.HeapSys>>20, Markdown(rows))
	js, _ := json.MarshalIndent(rows, "", " ")
	if err := os.MkdirAll(*sweepOut, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(*sweepOut, "sweep.md"), []byte(md), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(*sweepOut, "sweep.json"), append(js, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + md)
}

// TestValidateReport compares the model with a real run:
//
//	go test ./bench/scale -run TestValidateReport -scale.validate results.json -scale.images 'DIR/img*.ram'
func TestValidateReport(t *testing.T) {
	if *results == "" {
		t.Skip("validate: skipped without -scale.validate results.json")
	}
	f, err := os.Open(*results)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	meas, err := ReadMeasured(f)
	if err != nil {
		t.Fatal(err)
	}
	c, source := loadCatalog(t)
	v := Variation{VMs: meas.VMs, RoundRobin: true, Dirty: ValidationDirty, DirtyRatio: ValidationDirtyRatio, Seed: 1}
	fl, err := Generate(c, v)
	if err != nil {
		t.Fatal(err)
	}
	val, err := Validate(LabModel(), fl, meas)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.MarshalIndent(val, "", " ")
	t.Logf("images %s\n%s", source, b)
}

// BenchmarkProject projects 1000 VMs of 128 MiB (synthetic images) onto 100 targets.
//
//	go test ./bench/scale -run '^$' -bench Project -benchtime 1x -benchmem
func BenchmarkProject(b *testing.B) {
	c := SyntheticCatalog(1, 4, 32768)
	f, err := Generate(c, DefaultVariation(1000))
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	var p Projection
	for b.Loop() {
		if p, err = Project(DefaultModel(), f, 100); err != nil {
			b.Fatal(err)
		}
	}
	r := RowOf(p)
	b.ReportMetric(r.Ratios.MulticastSourceVsNative, "mcast/native")
	b.ReportMetric(r.Ratios.UnicastSourceVsNative, "ucast/native")
	b.ReportMetric(r.Ratios.OursVsGreedyFabric, "ours/greedy")
}

func bootFileList() []string {
	if *bootFiles == "" {
		return nil
	}
	return strings.Split(*bootFiles, ",")
}
