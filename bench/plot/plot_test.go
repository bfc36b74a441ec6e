package plot

import (
	"bytes"
	"encoding/xml"
	"flag"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// element is one parsed SVG element: its name, attributes and direct text.
type element struct {
	name  string
	attr  map[string]string
	text  string
	title string // text of a <title> child
}

// parse checks that svg is well-formed XML with an <svg> root and returns its elements in document order.
func parse(t *testing.T, svg []byte) []*element {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(svg))
	var all, stack []*element
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG does not parse: %v\n%s", err, svg)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			e := &element{name: tok.Name.Local, attr: map[string]string{}}
			for _, a := range tok.Attr {
				e.attr[a.Name.Local] = a.Value
			}
			if len(all) == 0 && (e.name != "svg" || tok.Name.Space != "http://www.w3.org/2000/svg") {
				t.Fatalf("root is %v, want svg", tok.Name)
			}
			all = append(all, e)
			stack = append(stack, e)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.CharData:
			if len(stack) == 0 {
				continue
			}
			top := stack[len(stack)-1]
			top.text += string(tok)
			if top.name == "title" && len(stack) > 1 {
				stack[len(stack)-2].title += string(tok)
			}
		}
	}
	return all
}

// texts returns the visible text and the tooltips of all elements, for looking labels up.
func texts(els []*element) string {
	var b strings.Builder
	for _, e := range els {
		b.WriteString(e.text + "\n" + e.title + "\n")
	}
	return b.String()
}

func byClass(els []*element, name, class string) []*element {
	var out []*element
	for _, e := range els {
		if e.name == name && e.attr["class"] == class {
			out = append(out, e)
		}
	}
	return out
}

func attrFloat(t *testing.T, e *element, name string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(e.attr[name], 64)
	if err != nil {
		t.Fatalf("%s %s=%q: %v", e.name, name, e.attr[name], err)
	}
	return v
}

// methodsChart is use case 1: bytes and time per method, normalised to QEMU native.
func methodsChart() BarChart {
	return BarChart{
		Title:      "vmscatter vs QEMU native migration (10 VMs, 4 targets)",
		YLabel:     "relative to QEMU native",
		Categories: []string{"bytes leaving source", "bytes into targets", "total time"},
		Series: []Series{
			{Name: "QEMU native", Values: []float64{1, 1, 1}},
			{Name: "vmscatter", Values: []float64{0.31, 0.42, 0.55}},
			{Name: "lower bound", Values: []float64{0.22, 0.3, math.NaN()}},
		},
		ValueFormat: "%.2f",
	}
}

// downtimeChart is use case 2: downtime per VM, per policy, with values spanning orders of magnitude.
func downtimeChart() BarChart {
	vms := []string{"web-1", "web-2", "db-primary", "db-replica-with-a-very-long-name-indeed", "cache", "batch"}
	return BarChart{
		Title:      "Downtime per VM <by policy> & dirty rate",
		YLabel:     "downtime (ms)",
		Categories: vms,
		Series: []Series{
			{Name: "precopy", Values: []float64{12, 15, 480, 510, 0, 30}},
			{Name: "postcopy", Values: []float64{3, 4, 9, 8, 2, 5}},
			{Name: "auto-converge", Values: []float64{20, 25, 1500, 1720, 1, 90}},
		},
		LogY: true,
	}
}

// scaleChart is use case 3: bytes on the wire against the number of VMs, on log axes.
func scaleChart() LineChart {
	var native, ours, bound []Point
	for n := 100.0; n <= 1000; n += 100 {
		native = append(native, Point{n, n * 2e9})
		ours = append(ours, Point{n, 4e9 + n*3e8})
		bound = append(bound, Point{n, 3e9 + n*1e8})
	}
	return LineChart{
		Title:  "Bytes leaving the source as the fleet grows",
		XLabel: "number of VMs",
		YLabel: "bytes",
		Lines: []Line{
			{Name: "QEMU native", Points: native},
			{Name: "vmscatter", Points: ours},
			{Name: "lower bound", Points: bound, Dashed: true},
		},
		LogY: true,
	}
}

func TestGolden(t *testing.T) {
	for name, svg := range map[string][]byte{
		"methods.svg":  methodsChart().SVG(),
		"downtime.svg": downtimeChart().SVG(),
		"scale.svg":    scaleChart().SVG(),
	} {
		parse(t, svg)
		path := filepath.Join("testdata", name)
		if *update {
			if err := WriteFile(path, svg); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -update to write it)", err)
		}
		if !bytes.Equal(svg, want) {
			t.Errorf("%s differs from the golden file; look at it and run go test -update if the change is meant", name)
		}
	}
}

func TestDeterministic(t *testing.T) {
	for i := 0; i < 3; i++ {
		if !bytes.Equal(downtimeChart().SVG(), downtimeChart().SVG()) || !bytes.Equal(scaleChart().SVG(), scaleChart().SVG()) {
			t.Fatal("two renderings of the same chart differ")
		}
	}
}

func TestBarChartLabels(t *testing.T) {
	for _, c := range []BarChart{methodsChart(), downtimeChart()} {
		els := parse(t, c.SVG())
		all := texts(els)
		if !strings.Contains(all, c.Title) {
			t.Errorf("title %q missing", c.Title)
		}
		if !strings.Contains(all, c.YLabel) {
			t.Errorf("y label %q missing", c.YLabel)
		}
		for _, cat := range c.Categories {
			if !strings.Contains(all, cat) {
				t.Errorf("category %q missing", cat)
			}
		}
		for _, s := range c.Series {
			if !strings.Contains(all, s.Name) {
				t.Errorf("legend entry %q missing", s.Name)
			}
		}
	}
}

func TestBarHeightsProportional(t *testing.T) {
	c := BarChart{
		Title:      "t",
		Categories: []string{"a", "b"},
		Series:     []Series{{Name: "s", Values: []float64{10, 40}}, {Name: "r", Values: []float64{0, 20}}},
	}
	els := parse(t, c.SVG())
	bars := byClass(els, "rect", "bar")
	if len(bars) != 4 {
		t.Fatalf("%d bars, want 4", len(bars))
	}
	h := func(i int) float64 { return attrFloat(t, bars[i], "height") }
	// Series in order, then categories: s/a, s/b, r/a, r/b.
	if math.Abs(h(1)-4*h(0)) > 0.05 || math.Abs(h(3)-2*h(0)) > 0.05 || h(2) != 0 {
		t.Errorf("heights %v %v %v %v, want proportional to 10 40 0 20", h(0), h(1), h(2), h(3))
	}
	// All bars stand on one baseline.
	base := attrFloat(t, bars[0], "y") + h(0)
	for i := range bars {
		if got := attrFloat(t, bars[i], "y") + h(i); math.Abs(got-base) > 0.02 {
			t.Errorf("bar %d ends at %v, want %v", i, got, base)
		}
	}
	// Value labels, one per bar.
	var values []string
	for _, e := range byClass(els, "text", "value") {
		values = append(values, e.text)
	}
	if got := strings.Join(values, " "); got != "10 40 0 20" {
		t.Errorf("value labels %q, want %q", got, "10 40 0 20")
	}
}

func TestNegativeBarsHangBelowZero(t *testing.T) {
	c := BarChart{Categories: []string{"a", "b"}, Series: []Series{{Values: []float64{-5, 10}}}}
	bars := byClass(parse(t, c.SVG()), "rect", "bar")
	if len(bars) != 2 {
		t.Fatalf("%d bars, want 2", len(bars))
	}
	neg, pos := bars[0], bars[1]
	zero := attrFloat(t, pos, "y") + attrFloat(t, pos, "height")
	if math.Abs(attrFloat(t, neg, "y")-zero) > 0.02 {
		t.Errorf("negative bar starts at %v, want zero line %v", attrFloat(t, neg, "y"), zero)
	}
	if r := attrFloat(t, pos, "height") / attrFloat(t, neg, "height"); math.Abs(r-2) > 0.01 {
		t.Errorf("height ratio %v, want 2", r)
	}
}

func TestLogBars(t *testing.T) {
	c := BarChart{
		Categories: []string{"a", "b", "c", "d"},
		Series:     []Series{{Name: "s", Values: []float64{1, 1000, 0, -3}}},
		LogY:       true,
	}
	els := parse(t, c.SVG())
	bars := byClass(els, "rect", "bar")
	if len(bars) != 2 {
		t.Fatalf("%d bars, want 2 (zero and negative skipped)", len(bars))
	}
	// 1 and 1000 on an axis from 0.1: heights in the ratio 1 : 4 decades.
	if r := attrFloat(t, bars[1], "height") / attrFloat(t, bars[0], "height"); math.Abs(r-4) > 0.01 {
		t.Errorf("log heights ratio %v, want 4", r)
	}
	checkPowersOfTen(t, els, "ytick")
	var values []string
	for _, e := range byClass(els, "text", "value") {
		values = append(values, e.text)
	}
	if got := strings.Join(values, " "); got != "1 1000 0" {
		t.Errorf("value labels %q, want the zero said too", got)
	}
}

// checkPowersOfTen checks that every tick label of the given class is a power of ten.
func checkPowersOfTen(t *testing.T, els []*element, class string) {
	t.Helper()
	ticks := byClass(els, "text", class)
	if len(ticks) < 2 {
		t.Fatalf("%d %s labels, want at least 2", len(ticks), class)
	}
	for _, e := range ticks {
		v, ok := parseLabel(e.text)
		if !ok {
			t.Errorf("tick %q does not parse", e.text)
			continue
		}
		if l := math.Log10(v); math.Abs(l-math.Round(l)) > 1e-9 {
			t.Errorf("tick %q is not a power of ten", e.text)
		}
	}
}

// parseLabel reads a tick label back, metric prefix included.
func parseLabel(s string) (float64, bool) {
	mult := 1.0
	for i, p := range siPrefixes {
		if strings.HasSuffix(s, p) {
			s, mult = strings.TrimSuffix(s, p), math.Pow10(3*(i+1))
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	return v * mult, err == nil
}

func TestLineChart(t *testing.T) {
	c := scaleChart()
	els := parse(t, c.SVG())
	all := texts(els)
	for _, want := range []string{c.Title, c.XLabel, c.YLabel, "QEMU native", "vmscatter", "lower bound"} {
		if !strings.Contains(all, want) {
			t.Errorf("%q missing", want)
		}
	}
	checkPowersOfTen(t, els, "ytick")
	var xt []string
	for _, e := range byClass(els, "text", "xtick") {
		xt = append(xt, e.text)
	}
	if got := strings.Join(xt, " "); got != "0 200 400 600 800 1000" {
		t.Errorf("x ticks %q", got)
	}
	paths, dashed := 0, 0
	for _, e := range els {
		if e.name == "path" {
			paths++
			if e.attr["stroke-dasharray"] != "" {
				dashed++
			}
		}
	}
	if paths != 3 || dashed != 1 {
		t.Errorf("%d paths, %d dashed; want 3 and 1", paths, dashed)
	}
}

func TestLogXTicks(t *testing.T) {
	c := LineChart{Lines: []Line{{Points: []Point{{0, 5}, {3, 1}, {200000, 2}, {math.NaN(), 1}}}}, LogX: true}
	els := parse(t, c.SVG())
	checkPowersOfTen(t, els, "xtick")
	var xt []string
	for _, e := range byClass(els, "text", "xtick") {
		xt = append(xt, e.text)
	}
	if got := strings.Join(xt, " "); got != "1 10 100 1000 10k 100k 1M" {
		t.Errorf("x ticks %q", got)
	}
}

func TestEdgeCases(t *testing.T) {
	long := strings.Repeat("very long name ", 10)
	cases := map[string][]byte{
		"empty bar":        BarChart{}.SVG(),
		"empty log bar":    BarChart{LogY: true, Series: []Series{{Name: "z", Values: []float64{0, 0}}}}.SVG(),
		"no series":        BarChart{Title: "x", Categories: []string{"a", "b"}}.SVG(),
		"empty series":     BarChart{Categories: []string{"a"}, Series: []Series{{Name: "s"}}}.SVG(),
		"all NaN":          BarChart{Categories: []string{"a"}, Series: []Series{{Values: []float64{math.NaN()}}}}.SVG(),
		"inf":              BarChart{Categories: []string{"a", "b"}, Series: []Series{{Values: []float64{math.Inf(1), 2}}}}.SVG(),
		"single":           BarChart{Categories: []string{"only"}, Series: []Series{{Name: "s", Values: []float64{3}}}}.SVG(),
		"all zero":         BarChart{Categories: []string{"a"}, Series: []Series{{Values: []float64{0}}}}.SVG(),
		"long names":       BarChart{Title: long, YLabel: long, Categories: []string{long, long}, Series: []Series{{Name: long, Values: []float64{1, 2}}}}.SVG(),
		"many categories":  manyVMs(60),
		"xml in names":     BarChart{Title: `<&>"'` + "\x00\x1b", Categories: []string{"a&b"}, Series: []Series{{Name: "<s>", Values: []float64{1}}}}.SVG(),
		"empty line":       LineChart{}.SVG(),
		"empty log line":   LineChart{LogX: true, LogY: true, Lines: []Line{{Name: "l"}}}.SVG(),
		"one point":        LineChart{Lines: []Line{{Name: "l", Points: []Point{{5, 5}}}}}.SVG(),
		"log zeros":        LineChart{LogY: true, Lines: []Line{{Name: "l", Points: []Point{{1, 0}, {2, 10}, {3, 100}}}}}.SVG(),
		"flat line":        LineChart{Lines: []Line{{Name: "l", Points: []Point{{1, 7}, {2, 7}}}}}.SVG(),
		"negative line":    LineChart{Lines: []Line{{Name: "l", Points: []Point{{-1, -7}, {2, 3}}}}}.SVG(),
		"many lines":       manyLines(12),
		"tiny values":      BarChart{Categories: []string{"a"}, Series: []Series{{Values: []float64{1e-7}}}}.SVG(),
		"huge values":      BarChart{Categories: []string{"a"}, Series: []Series{{Values: []float64{3e22}}}}.SVG(),
		"huge log values":  BarChart{LogY: true, Categories: []string{"a", "b"}, Series: []Series{{Values: []float64{1e-30, 1e30}}}}.SVG(),
		"values > cats":    BarChart{Categories: []string{"a"}, Series: []Series{{Values: []float64{1, 2, 3}}}}.SVG(),
		"unicode":          BarChart{Categories: []string{"réplica-ü-日本語-very-very-long-category-name"}, Series: []Series{{Values: []float64{1}}}}.SVG(),
		"format with text": BarChart{ValueFormat: "%.0f ms", Categories: []string{"a"}, Series: []Series{{Values: []float64{1}}}}.SVG(),
	}
	for name, svg := range cases {
		t.Run(name, func(t *testing.T) {
			els := parse(t, svg)
			for _, e := range els {
				for k, v := range e.attr {
					if strings.Contains(v, "NaN") || strings.Contains(v, "Inf") {
						t.Errorf("<%s %s=%q>", e.name, k, v)
					}
				}
			}
		})
	}
	// Long names are cut with an ellipsis in view, and kept whole in the tooltip.
	els := parse(t, cases["long names"])
	cut := false
	for _, e := range els {
		if e.name == "text" && strings.HasSuffix(e.text, "…") {
			cut = true
			if e.title != long {
				t.Errorf("shortened %q has tooltip %q", e.text, e.title)
			}
		}
	}
	if !cut {
		t.Error("no name was shortened")
	}
	if all := texts(parse(t, cases["xml in names"])); !strings.Contains(all, `<&>"'`) || !strings.Contains(all, "<s>") {
		t.Error("escaped names do not read back")
	}
}

func manyVMs(n int) []byte {
	c := BarChart{Title: "Downtime", YLabel: "ms"}
	var a, b []float64
	for i := 0; i < n; i++ {
		c.Categories = append(c.Categories, "vm-"+strconv.Itoa(i)+"-guest")
		a, b = append(a, float64(i*37%101)), append(b, float64(i*53%97)+0.5)
	}
	c.Series = []Series{{Name: "a", Values: a}, {Name: "b", Values: b}}
	return c.SVG()
}

func manyLines(n int) []byte {
	c := LineChart{Title: "many"}
	for i := 0; i < n; i++ {
		c.Lines = append(c.Lines, Line{Name: "line " + strconv.Itoa(i), Points: []Point{{0, float64(i)}, {1, float64(2 * i)}}, Dashed: i%2 == 1})
	}
	return c.SVG()
}

func TestWriteFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.svg")
	svg := methodsChart().SVG()
	if err := WriteFile(path, svg); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, svg) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
	if err := WriteFile(filepath.Join(t.TempDir(), "no", "such", "dir", "c.svg"), svg); err == nil {
		t.Fatal("no error for a missing directory")
	}
}
