// Package plot draws the benchmark reports' charts as SVG: grouped bar charts and line charts, with a title,
// labelled axes at round tick values, a legend, and a palette that colour-blind readers can tell apart.
//
// Everything here is a pure function from data to bytes, without dependencies beyond the standard library, and
// the same data always gives the same bytes. The SVG is self-contained (no scripts, no stylesheets, no fonts to
// fetch), so it shows in a browser and inside GitHub markdown as an image.
//
// Values that cannot be drawn are skipped: NaN and infinities always, and zero or negative values on a
// logarithmic axis. Long names are shortened with an ellipsis; the whole name stays in a tooltip.
package plot

import (
	"fmt"
	"math"
	"os"
)

// Series is one named set of values: one per category in a bar chart.
type Series struct {
	Name   string
	Values []float64
}

// palette is the Okabe–Ito palette, ordered for contrast on white; yellow, the palest, comes last.
var palette = []string{
	"#0072B2", // blue
	"#E69F00", // orange
	"#009E73", // bluish green
	"#D55E00", // vermillion
	"#CC79A7", // reddish purple
	"#56B4E9", // sky blue
	"#000000", // black
	"#F0E442", // yellow
}

func colour(i int) string { return palette[i%len(palette)] }

// WriteFile writes an SVG made by this package to path.
func WriteFile(path string, svg []byte) error {
	if err := os.WriteFile(path, svg, 0o644); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	return nil
}

// Layout constants shared by both kinds of chart, in pixels.
const (
	chartHeight   = 420
	minChartWidth = 640
	pad           = 12 // around the whole chart
	maxNameRunes  = 40 // legend entries are shortened beyond this
	legendSwatch  = 14
	legendGap     = 18 // between legend entries
	legendRow     = 18
	tickLen       = 5
)

// seriesName is a series' name for the legend; unnamed series get a number.
func seriesName(name string, i int) string {
	if name == "" {
		return fmt.Sprintf("series %d", i+1)
	}
	return name
}

// legendItem is one entry of a legend; draw paints its swatch into the swatch×14 box at (x, y).
type legendItem struct {
	name   string
	swatch float64 // width of the swatch
	draw   func(d *doc, x, y float64)
}

type legendLayout struct {
	items []legendItem
	names []string // shortened
	x, y  []float64
	rows  int
}

// layoutLegend places the items in rows, left to right, within width.
func layoutLegend(items []legendItem, left, width float64) legendLayout {
	l := legendLayout{items: items}
	if len(items) == 0 {
		return l
	}
	x, row := left, 0
	for _, it := range items {
		name := truncate(it.name, maxNameRunes)
		w := it.swatch + 5 + textWidth(name, labelSize)
		if x > left && x+w > left+width {
			x, row = left, row+1
		}
		l.names = append(l.names, name)
		l.x = append(l.x, x)
		l.y = append(l.y, float64(row)*legendRow)
		x += w + legendGap
	}
	l.rows = row + 1
	return l
}

func (l legendLayout) height() float64 { return float64(l.rows) * legendRow }

func (l legendLayout) draw(d *doc, top float64) {
	if len(l.items) == 0 {
		return
	}
	d.raw(`<g class="legend">` + "\n")
	for i, it := range l.items {
		x, y := l.x[i], top+l.y[i]
		it.draw(d, x, y)
		d.text(x+it.swatch+5, y+11, l.names[i], it.name, labelSize, "start", 0, "")
	}
	d.raw("</g>\n")
}

// titleHeight is the height the title takes at the top of a chart.
func titleHeight(title string) float64 {
	if title == "" {
		return 0
	}
	return titleSize + 10
}

// header draws the title, centred at the top.
func header(d *doc, title string, width float64) {
	if title == "" {
		return
	}
	short := truncate(title, int((width-2*pad)/(titleSize*boldWidth)))
	d.text(width/2, pad+titleSize, short, title, titleSize, "middle", 0, ` font-weight="bold"`)
}

// yAxis draws the grid, ticks and tick labels of a vertical scale spanning x0..x1, and the axis label.
func yAxis(d *doc, s *scale, x0, x1 float64, label string, labelX float64) {
	for _, v := range s.minor {
		y := s.pos(v)
		d.line(x0, y, x1, y, gridColour, 0.5, "")
	}
	for _, v := range s.ticks {
		y := s.pos(v)
		d.line(x0, y, x1, y, gridColour, 1, "")
		d.line(x0-tickLen, y, x0, y, axisColour, 1, "")
		d.text(x0-tickLen-3, y+4, s.label(v), "", tickSize, "end", 0, ` class="ytick"`)
	}
	d.line(x0, s.p0, x0, s.p1, axisColour, 1, "")
	if label != "" {
		mid := (s.p0 + s.p1) / 2
		short := fitText(label, math.Abs(s.p0-s.p1), labelSize)
		d.text(labelX, mid, short, label, labelSize, "middle", -90, "")
	}
}

// yTickWidth is the width of the widest tick label of s.
func yTickWidth(s *scale) float64 {
	w := 0.0
	for _, v := range s.ticks {
		w = math.Max(w, textWidth(s.label(v), tickSize))
	}
	return w
}

// noData writes a notice in the middle of an empty plot area.
func noData(d *doc, x, y float64) {
	d.text(x, y, "no data", "", labelSize, "middle", 0, ` fill-opacity="0.6"`)
}
