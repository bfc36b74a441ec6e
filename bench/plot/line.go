package plot

import (
	"math"
	"sort"
	"strings"
)

// Point is one point of a line.
type Point struct{ X, Y float64 }

// Line is one named line of a line chart, drawn dashed if asked. Its points are joined in order of X.
type Line struct {
	Name   string
	Points []Point
	Dashed bool
}

// LineChart draws lines on shared axes, each with its own colour and marker shape. Points that cannot be drawn
// (NaN, infinities, and zero or less on a log axis) are left out. A linear Y axis always includes zero, so that
// the heights of curves compare honestly; a linear X axis covers the points only.
type LineChart struct {
	Title, XLabel, YLabel string
	Lines                 []Line
	LogX, LogY            bool
}

// Line chart geometry, in pixels.
const (
	lineChartWidth = 720
	linePlotHeight = 300
	markerSize     = 4 // half the width of a marker
	lineSwatch     = 28
)

// SVG draws the chart.
func (c LineChart) SVG() []byte {
	// The points to draw, each line's in order of X, and the ranges they span.
	lines := make([][]Point, len(c.Lines))
	xlo, xhi, ylo, yhi := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for i, l := range c.Lines {
		for _, p := range l.Points {
			if !drawable(p.X, c.LogX) || !drawable(p.Y, c.LogY) {
				continue
			}
			lines[i] = append(lines[i], p)
			xlo, xhi = math.Min(xlo, p.X), math.Max(xhi, p.X)
			ylo, yhi = math.Min(ylo, p.Y), math.Max(yhi, p.Y)
		}
		sort.SliceStable(lines[i], func(a, b int) bool { return lines[i][a].X < lines[i][b].X })
	}
	drawn := xlo <= xhi
	var xs, ys *scale
	switch {
	case !drawn && c.LogX:
		xs = logScale(1, 10, false)
	case !drawn:
		xs = linearScale(0, 1)
	case c.LogX:
		xs = logScale(xlo, xhi, false)
	default:
		xs = linearScale(xlo, xhi)
	}
	switch {
	case !drawn && c.LogY:
		ys = logScale(1, 10, false)
	case !drawn:
		ys = linearScale(0, 1)
	case c.LogY:
		ys = logScale(ylo, yhi, false)
	default:
		ys = linearScale(math.Min(ylo, 0), math.Max(yhi, 0))
	}

	// Layout: the y tick labels set the left margin; the last x tick label, half of which spills right, the right.
	width := float64(lineChartWidth)
	left := float64(pad) + tickLen + 4 + yTickWidth(ys)
	if c.YLabel != "" {
		left += labelSize + 8
	}
	right := math.Max(pad, textWidth(xs.label(xs.ticks[len(xs.ticks)-1]), tickSize)/2+4)
	items := make([]legendItem, len(c.Lines))
	for i, l := range c.Lines {
		items[i] = legendItem{name: seriesName(l.Name, i), swatch: lineSwatch, draw: func(d *doc, x, y float64) {
			d.line(x, y+7, x+lineSwatch, y+7, colour(i), 2, dash(l.Dashed))
			marker(d, i, x+lineSwatch/2, y+7)
		}}
	}
	if len(c.Lines) == 1 && c.Lines[0].Name == "" {
		items = nil
	}
	leg := layoutLegend(items, pad, width-2*pad)
	legendTop := pad + titleHeight(c.Title)
	plotTop := legendTop + leg.height() + 6 + markerSize
	plotBottom := plotTop + linePlotHeight
	height := plotBottom + tickLen + tickSize + 6 + pad
	if c.XLabel != "" {
		height += labelSize + 8
	}

	d := newDoc(width, height, c.Title)
	header(d, c.Title, width)
	leg.draw(d, legendTop)
	xs.p0, xs.p1 = left, width-right
	ys.p0, ys.p1 = plotBottom, plotTop
	yAxis(d, ys, left, width-right, c.YLabel, pad+labelSize)
	xAxis(d, xs, plotTop, plotBottom, c.XLabel, height-pad-3)
	if !drawn {
		noData(d, (xs.p0+xs.p1)/2, (ys.p0+ys.p1)/2)
	}

	for i, pts := range lines {
		if len(pts) == 0 {
			continue
		}
		name := seriesName(c.Lines[i].Name, i)
		d.raw(`<g class="line">` + "<title>")
		d.escape(name)
		d.raw("</title>\n")
		var path strings.Builder
		for k, p := range pts {
			if k == 0 {
				path.WriteString("M")
			} else {
				path.WriteString(" L")
			}
			path.WriteString(num(xs.pos(p.X)) + " " + num(ys.pos(p.Y)))
		}
		if len(pts) > 1 {
			d.raw(`<path d="` + path.String() + `" fill="none" stroke="` + colour(i) +
				`" stroke-width="2" stroke-linejoin="round"` + dash(c.Lines[i].Dashed) + "/>\n")
		}
		for _, p := range pts {
			marker(d, i, xs.pos(p.X), ys.pos(p.Y))
		}
		d.raw("</g>\n")
	}
	return d.bytes()
}

// xAxis draws the grid, ticks and tick labels of a horizontal scale, and the axis label with its baseline at
// labelY.
func xAxis(d *doc, s *scale, top, bottom float64, label string, labelY float64) {
	for _, v := range s.minor {
		x := s.pos(v)
		d.line(x, top, x, bottom, gridColour, 0.5, "")
	}
	for _, v := range s.ticks {
		x := s.pos(v)
		d.line(x, top, x, bottom, gridColour, 1, "")
		d.line(x, bottom, x, bottom+tickLen, axisColour, 1, "")
		d.text(x, bottom+tickLen+tickSize+2, s.label(v), "", tickSize, "middle", 0, ` class="xtick"`)
	}
	d.line(s.p0, bottom, s.p1, bottom, axisColour, 1, "")
	if label != "" {
		short := fitText(label, s.p1-s.p0, labelSize)
		d.text((s.p0+s.p1)/2, labelY, short, label, labelSize, "middle", 0, "")
	}
}

func dash(dashed bool) string {
	if dashed {
		return ` stroke-dasharray="6 4"`
	}
	return ""
}

// marker draws the i-th line's marker centred on (x, y). Shapes differ from line to line, so lines stay apart
// in greyscale print too.
func marker(d *doc, i int, x, y float64) {
	const r = markerSize
	col := colour(i)
	style := ` fill="` + col + `" stroke="#ffffff" stroke-width="1"`
	poly := func(pts ...float64) {
		var b strings.Builder
		for k := 0; k < len(pts); k += 2 {
			if k > 0 {
				b.WriteString(" ")
			}
			b.WriteString(num(x+pts[k]) + "," + num(y+pts[k+1]))
		}
		d.raw(`<polygon points="` + b.String() + `"` + style + "/>\n")
	}
	switch i % 5 {
	case 0:
		d.raw(`<circle cx="` + num(x) + `" cy="` + num(y) + `" r="` + num(r) + `"` + style + "/>\n")
	case 1:
		poly(-r, -r, r, -r, r, r, -r, r) // square
	case 2:
		poly(0, -r-1, r+1, r, -r-1, r) // triangle
	case 3:
		poly(0, -r-1, r+1, 0, 0, r+1, -r-1, 0) // diamond
	case 4:
		poly(-r-1, -r, r+1, -r, 0, r+1) // triangle, pointing down
	}
}
