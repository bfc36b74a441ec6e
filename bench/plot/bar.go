package plot

import (
	"fmt"
	"math"
	"unicode/utf8"
)

// BarChart is a grouped bar chart: the categories along the x axis, and within each category one bar per series,
// each labelled with its value. Series[i].Values[j] is the value of series i in category j; missing values and
// values that cannot be drawn (NaN, infinities, and zero or less with LogY) leave a gap. On a linear axis the
// bars grow from zero, so negative values hang below it.
type BarChart struct {
	Title, YLabel string
	Categories    []string
	Series        []Series
	LogY          bool
	ValueFormat   string // fmt verb for the value labels, e.g. "%.1f"; empty means three significant digits
}

// Bar chart geometry, in pixels.
const (
	barPlotHeight = 280
	minBarWidth   = 10
	maxBarWidth   = 48
	groupPad      = 16 // at least this much space between groups
	labelAngle    = 40 // degrees that crowded category labels are turned by
	maxCatRunes   = 24 // rotated category labels are shortened beyond this
)

// SVG draws the chart.
func (c BarChart) SVG() []byte {
	nCat := len(c.Categories)
	for _, s := range c.Series {
		nCat = max(nCat, len(s.Values))
	}
	nSer := max(len(c.Series), 1)

	// The value axis, from the drawable values.
	var ys *scale
	lo, hi, drawn, neg := math.Inf(1), math.Inf(-1), false, false
	for _, s := range c.Series {
		for _, v := range s.Values {
			if !drawable(v, c.LogY) {
				continue
			}
			lo, hi, drawn = math.Min(lo, v), math.Max(hi, v), true
			neg = neg || v < 0
		}
	}
	switch {
	case !drawn && c.LogY:
		ys = logScale(1, 10, true)
	case !drawn:
		ys = linearScale(0, 1)
	case c.LogY:
		ys = logScale(lo, hi, true)
	default:
		ys = linearScale(math.Min(lo, 0), math.Max(hi, 0))
	}

	// Horizontal layout: the tick labels set the left margin, the categories the width.
	left := float64(pad) + tickLen + 4 + yTickWidth(ys)
	if c.YLabel != "" {
		left += labelSize + 8
	}
	right := float64(pad)
	width := math.Max(minChartWidth, left+right+float64(nCat)*(float64(nSer)*minBarWidth+groupPad))
	plotW := width - left - right
	groupW := plotW / math.Max(float64(nCat), 1)
	barW := math.Min(maxBarWidth, (groupW-groupPad)*0.85/float64(nSer))

	// Category labels: as they are if they fit, shortened if that leaves enough, else turned.
	cats := make([]string, nCat)
	fit := int((groupW - 6) / (tickSize * charWidth))
	turned := false
	for j := range cats {
		if j < len(c.Categories) {
			cats[j] = c.Categories[j]
		}
		if utf8.RuneCountInString(cats[j]) > fit && fit < 14 {
			turned = true
		}
	}
	catH := float64(tickSize + 4)
	for j, name := range cats {
		if turned {
			cats[j] = truncate(name, maxCatRunes)
			catH = math.Max(catH, textWidth(cats[j], tickSize)*math.Sin(labelAngle*math.Pi/180)+tickSize)
		} else {
			cats[j] = truncate(name, fit)
		}
	}

	// Value labels: level above the bars if every one fits the bar's width, else turned upright.
	format := func(v float64) string {
		if c.ValueFormat != "" {
			return fmt.Sprintf(c.ValueFormat, v)
		}
		return compact(v)
	}
	upright, longest := false, 0.0
	for _, s := range c.Series {
		for _, v := range s.Values {
			if ys.usable(v) || c.LogY && v == 0 {
				w := textWidth(format(v), valueSize)
				longest = math.Max(longest, w)
				upright = upright || w > barW+2
			}
		}
	}
	headroom := float64(valueSize + 4)
	if upright {
		headroom = longest + 6
	}
	foot := 0.0
	if neg && !c.LogY {
		foot = headroom
	}

	// Vertical layout: title, legend, plot, category labels.
	items := make([]legendItem, len(c.Series))
	for i, s := range c.Series {
		col := colour(i)
		items[i] = legendItem{name: seriesName(s.Name, i), swatch: legendSwatch, draw: func(d *doc, x, y float64) {
			d.rect(x, y, legendSwatch, legendSwatch, col, "")
		}}
	}
	if len(c.Series) == 1 && c.Series[0].Name == "" {
		items = nil // one unnamed series needs no legend
	}
	leg := layoutLegend(items, pad, width-2*pad)
	legendTop := pad + titleHeight(c.Title)
	plotTop := legendTop + leg.height() + 6
	plotBottom := plotTop + headroom + barPlotHeight + foot
	height := plotBottom + tickLen + catH + pad

	d := newDoc(width, height, c.Title)
	header(d, c.Title, width)
	leg.draw(d, legendTop)
	ys.p0, ys.p1 = plotBottom-foot, plotTop+headroom
	yAxis(d, ys, left, width-right, c.YLabel, pad+labelSize)

	base := ys.p0 // where bars start: zero on a linear axis, the bottom decade on a log one
	if !ys.log {
		base = ys.pos(0)
	}
	d.line(left, ys.p0, width-right, ys.p0, axisColour, 1, "")
	if base != ys.p0 {
		d.line(left, base, width-right, base, axisColour, 1, "")
	}
	if !drawn {
		noData(d, left+plotW/2, (ys.p0+ys.p1)/2)
	}

	// Bars, with their value labels.
	d.raw(`<g class="bars">` + "\n")
	for i, s := range c.Series {
		col := colour(i)
		name := seriesName(s.Name, i)
		for j, v := range s.Values {
			if j >= nCat {
				break
			}
			x := left + float64(j)*groupW + (groupW-float64(nSer)*barW)/2 + float64(i)*barW
			cx := x + barW/2
			label := format(v)
			if !ys.usable(v) {
				if c.LogY && v == 0 {
					valueLabel(d, cx, base, label, upright, false) // a zero is worth saying, even on a log axis
				}
				continue
			}
			top := ys.pos(v)
			y, h := math.Min(top, base), math.Abs(base-top)
			gap := math.Min(2, barW*0.1)
			d.raw(`<rect class="bar" x="` + num(x+gap/2) + `" y="` + num(y) + `" width="` + num(barW-gap) +
				`" height="` + num(h) + `" fill="` + col + `"><title>`)
			d.escape(name + ", " + categoryName(c.Categories, j) + ": " + label)
			d.raw("</title></rect>\n")
			valueLabel(d, cx, top, label, upright, v < 0)
		}
	}
	d.raw("</g>\n")

	// Category labels, under the middle of each group, and under the labels of bars that hang down.
	for j, name := range cats {
		cx := left + (float64(j)+0.5)*groupW
		d.line(cx, plotBottom, cx, plotBottom+tickLen, axisColour, 1, "")
		full := categoryName(c.Categories, j)
		if turned {
			d.text(cx+4, plotBottom+tickLen+tickSize-2, name, full, tickSize, "end", -labelAngle, ` class="category"`)
		} else {
			d.text(cx, plotBottom+tickLen+tickSize+2, name, full, tickSize, "middle", 0, ` class="category"`)
		}
	}
	return d.bytes()
}

// valueLabel writes a bar's value just beyond its end at y: above it, or below it when the bar hangs down.
func valueLabel(d *doc, cx, y float64, s string, upright, below bool) {
	const extra = ` class="value"`
	switch {
	case upright && below:
		d.text(cx+valueSize/2-1, y+4, s, "", valueSize, "end", -90, extra)
	case upright:
		d.text(cx+valueSize/2-1, y-4, s, "", valueSize, "start", -90, extra)
	case below:
		d.text(cx, y+valueSize+2, s, "", valueSize, "middle", 0, extra)
	default:
		d.text(cx, y-3, s, "", valueSize, "middle", 0, extra)
	}
}

func categoryName(cats []string, j int) string {
	if j < len(cats) {
		return cats[j]
	}
	return ""
}
