package bench

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// checkSVG fails unless path is well-formed XML.
func checkSVG(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(strings.NewReader(string(b)))
	for {
		if _, err := d.Token(); err != nil {
			if err.Error() == "EOF" {
				return
			}
			t.Fatalf("%s: %v", path, err)
		}
	}
}

func TestCompareOutputs(t *testing.T) {
	dir := t.TempDir()
	res := &CompareResult{VMs: []string{"vm1", "vm2"}, BestSetup: NativeMethod{Name: "QEMU multifd+zstd", MultifdChannels: 2, MultifdCompression: "zstd"}}
	res.Native = MethodFigures{Method: "QEMU default", SourceTxBytes: 400 << 20, TargetRxBytes: 400 << 20, TotalMS: 3500, DowntimeMS: []int64{200, 180},
		CPU: CPUFigures{SourceQEMUSeconds: 2, TargetQEMUSeconds: 1, SourceBaselinePerS: 0.2, GuestGiB: 0.5}}
	res.Best = MethodFigures{Method: "QEMU multifd+zstd", SourceTxBytes: 240 << 20, TargetRxBytes: 240 << 20, TotalMS: 2000, DowntimeMS: []int64{100, 90},
		CPU: CPUFigures{SourceQEMUSeconds: 3, TargetQEMUSeconds: 1.5, SourceBaselinePerS: 0.2, GuestGiB: 0.5}}
	res.Scatter = MethodFigures{Method: "vmscatter", SourceTxBytes: 120 << 20, TargetRxBytes: 150 << 20, TotalMS: 3000, DowntimeMS: []int64{150, 250},
		CPU: CPUFigures{SourceQEMUSeconds: 1, SenderSeconds: 1.5, TargetQEMUSeconds: 1, ReceiverSeconds: 1, SourceBaselinePerS: 0.2, GuestGiB: 0.5}}
	res.FinalBoundBytes = 100 << 20
	res.derive()
	if err := writeCompare(dir, res); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"methods.svg", "bytes.svg", "cpu.svg", "downtime.svg"} {
		checkSVG(t, filepath.Join(dir, f))
	}
	md, _ := os.ReadFile(filepath.Join(dir, "summary.md"))
	for _, want := range []string{
		"| | QEMU default | QEMU multifd+zstd | vmscatter | vmscatter / default | vmscatter / best |",
		"| bytes leaving the source | 400.0 MiB | 240.0 MiB | 120.0 MiB | 0.300 | 0.500 |",
		"| total time (start → last VM runs) | 3.50 s | 2.00 s | 3.00 s | 0.857 | 1.500 |",
		"| CPU-s per GiB of guest RAM, source | 4.00 | 6.00 | 5.00 | 1.250 | 0.833 |",
		"| the same, less the guests' own running | 2.60 | 5.20 | 3.80 | 1.462 | 0.731 |",
		"| CPU-s per GiB of guest RAM, targets | 2.00 | 3.00 | 4.00 | 2.000 | 1.333 |",
		"| final-state lower bound (bound / method) | – | – | 100.0 MiB | 0.250 | 0.417 |",
		"(goal ≤ 0.45: not met)",
	} {
		if !strings.Contains(string(md), want) {
			t.Errorf("summary lacks %q:\n%s", want, md)
		}
	}
	// A run with --skip-default has no QEMU default: no column, no ratio to it, no plot relative to it.
	skipped := *res
	skipped.Native = MethodFigures{}
	skipped.derive()
	dir2 := t.TempDir()
	if err := writeCompare(dir2, &skipped); err != nil {
		t.Fatal(err)
	}
	md2, _ := os.ReadFile(filepath.Join(dir2, "summary.md"))
	for _, want := range []string{"| | QEMU multifd+zstd | vmscatter | vmscatter / best |\n",
		"| bytes leaving the source | 240.0 MiB | 120.0 MiB | 0.500 |\n"} {
		if !strings.Contains(string(md2), want) {
			t.Errorf("summary without QEMU's default lacks %q:\n%s", want, md2)
		}
	}
	if _, err := os.Stat(filepath.Join(dir2, "methods.svg")); err == nil {
		t.Error("methods.svg (relative to QEMU's default) drawn without it")
	}
	checkSVG(t, filepath.Join(dir2, "bytes.svg"))
	// A results.json from before QEMU's best was a method replots with two methods.
	res.Best = MethodFigures{}
	if err := writeCompare(dir, res); err != nil {
		t.Fatal(err)
	}
	md, _ = os.ReadFile(filepath.Join(dir, "summary.md"))
	if want := "| bytes leaving the source | 400.0 MiB | 120.0 MiB | 0.300 |\n"; !strings.Contains(string(md), want) {
		t.Errorf("summary without QEMU's best lacks %q:\n%s", want, md)
	}
	if err := writePolicyPlots(dir, []PolicyRun{{Policy: "precopy", DirtyRate: 500, Pattern: "seq", MigrationMS: 2000, DowntimeMS: 100},
		{Policy: "membound", DirtyRate: 500, Pattern: "seq", MigrationMS: 3000, DowntimeMS: 900}}); err != nil {
		t.Fatal(err)
	}
	checkSVG(t, filepath.Join(dir, "policies-time.svg"))
}

// TestBenchQuick runs the side-by-side in its quick form: it checks that the bench works end to end (every method
// moves every guest, the results and plots are written), never that a figure is reached.
func TestBenchQuick(t *testing.T) {
	requireLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	res, err := RunCompare(ctx, CompareConfig{Bin: vmscatterBin, Dir: dir, Guests: 2, Targets: 1, Settle: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// Every VM is accounted for by each method. A QEMU-native migration may fail under TCG (its destination guest
	// can die of the dirty-tracking artifact); the bench must record that, not hide it.
	for _, m := range []MethodFigures{res.Native, res.Best, res.Scatter} {
		if m.Migrated+len(m.Failures) != 2 {
			t.Fatalf("unaccounted VMs: %+v", m)
		}
		if m.CPU.SourcePerGiB <= 0 || m.CPU.TargetPerGiB <= 0 {
			t.Errorf("%s: no CPU figures: %+v", m.Method, m.CPU)
		}
	}
	if res.Scatter.Migrated != 2 {
		t.Fatalf("vmscatter did not migrate every guest: %v", res.Scatter.Failures)
	}
	if len(res.Native.Failures)+len(res.Best.Failures) > 0 {
		t.Logf("QEMU-native failures, recorded in results.json: %v %v", res.Native.Failures, res.Best.Failures)
	}
	if res.Native.SourceTxBytes == 0 || res.Best.SourceTxBytes == 0 || res.Scatter.SourceTxBytes == 0 || res.LowerBoundBytes == 0 {
		t.Fatalf("figures missing: %+v %+v %+v lb %d", res.Native, res.Best, res.Scatter, res.LowerBoundBytes)
	}
	if res.Scatter.CPU.SenderSeconds <= 0 || res.Scatter.CPU.ReceiverSeconds <= 0 {
		t.Errorf("vmscatter's own processes have no CPU figures: %+v", res.Scatter.CPU)
	}
	if res.Scatter.SenderPeakRSS <= 0 || len(res.Scatter.ReceiverPeakRSS) != 1 || res.Scatter.ReceiverPeakRSS[0] <= 0 {
		t.Errorf("vmscatter's own processes have no peak RSS: sender %d, receivers %v", res.Scatter.SenderPeakRSS,
			res.Scatter.ReceiverPeakRSS)
	}
	var back CompareResult
	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil || json.Unmarshal(b, &back) != nil || back.Scatter.SourceTxBytes != res.Scatter.SourceTxBytes {
		t.Fatalf("results.json: %v", err)
	}
	for _, f := range []string{"methods.svg", "bytes.svg", "cpu.svg", "downtime.svg"} {
		checkSVG(t, filepath.Join(dir, f))
	}
	t.Logf("\n%s", res.Markdown())
}
