package plot_test

import (
	"fmt"
	"strings"

	"github.com/vmscatter/vmscatter/bench/plot"
)

func ExampleBarChart() {
	svg := plot.BarChart{
		Title:      "Downtime per VM",
		YLabel:     "downtime (ms)",
		Categories: []string{"web-1", "db"},
		Series: []plot.Series{
			{Name: "precopy", Values: []float64{12, 480}},
			{Name: "postcopy", Values: []float64{3, 9}},
		},
		LogY: true,
	}.SVG()
	// Write it next to the report with plot.WriteFile(filepath.Join(dir, "downtime.svg"), svg).
	fmt.Println(strings.Count(string(svg), `class="bar"`), "bars")
	// Output: 4 bars
}

func ExampleLineChart() {
	var native, ours []plot.Point
	for n := 100.0; n <= 1000; n += 100 {
		native = append(native, plot.Point{X: n, Y: n * 2e9})
		ours = append(ours, plot.Point{X: n, Y: 4e9 + n*3e8})
	}
	svg := plot.LineChart{
		Title:  "Bytes leaving the source",
		XLabel: "number of VMs",
		YLabel: "bytes",
		Lines:  []plot.Line{{Name: "QEMU native", Points: native}, {Name: "vmscatter", Points: ours, Dashed: true}},
		LogY:   true,
	}.SVG()
	fmt.Println(strings.Count(string(svg), "<path"), "lines")
	// Output: 2 lines
}
