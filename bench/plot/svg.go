package plot

import (
	"bytes"
	"encoding/xml"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Text sizes, in SVG user units (pixels). Widths of text are estimated, since a pure function cannot measure
// glyphs: charWidth is an average advance of a sans-serif glyph relative to its font size.
const (
	titleSize = 16
	labelSize = 12
	tickSize  = 11
	valueSize = 10
	charWidth = 0.6
	boldWidth = 0.66

	fontFamily = "Helvetica, Arial, sans-serif"
	inkColour  = "#222222"
	gridColour = "#e6e6e6"
	axisColour = "#444444"
)

// doc accumulates one SVG document. Every number is written with num, so equal inputs give equal bytes.
type doc struct {
	b bytes.Buffer
}

func newDoc(w, h float64, title string) *doc {
	d := &doc{}
	d.b.WriteString(`<svg xmlns="http://www.w3.org/2000/svg" width="` + num(w) + `" height="` + num(h) +
		`" viewBox="0 0 ` + num(w) + " " + num(h) + `" font-family="` + fontFamily + `">` + "\n")
	if title != "" {
		d.b.WriteString("<title>")
		d.escape(title)
		d.b.WriteString("</title>\n")
	}
	// An opaque background keeps the chart readable on dark pages (GitHub's dark theme shows SVGs as images).
	d.rect(0, 0, w, h, "#ffffff", "")
	return d
}

func (d *doc) bytes() []byte {
	d.b.WriteString("</svg>\n")
	return d.b.Bytes()
}

// raw writes markup as is; the caller guarantees it is well formed.
func (d *doc) raw(s string) { d.b.WriteString(s) }

// escape writes s as XML character data, replacing characters XML cannot carry.
func (d *doc) escape(s string) {
	_ = xml.EscapeText(&d.b, []byte(s)) // writing to a bytes.Buffer cannot fail
}

func (d *doc) rect(x, y, w, h float64, fill, extra string) {
	d.b.WriteString(`<rect x="` + num(x) + `" y="` + num(y) + `" width="` + num(w) + `" height="` + num(h) +
		`" fill="` + fill + `"` + extra + "/>\n")
}

func (d *doc) line(x1, y1, x2, y2 float64, stroke string, width float64, extra string) {
	d.b.WriteString(`<line x1="` + num(x1) + `" y1="` + num(y1) + `" x2="` + num(x2) + `" y2="` + num(y2) +
		`" stroke="` + stroke + `" stroke-width="` + num(width) + `"` + extra + "/>\n")
}

// text writes s at (x, y). anchor is start, middle or end; rotate, if not zero, turns it about (x, y) in
// degrees. When s had to be shortened, full carries the whole text as a tooltip, so no label is lost.
func (d *doc) text(x, y float64, s, full string, size float64, anchor string, rotate float64, extra string) {
	d.b.WriteString(`<text x="` + num(x) + `" y="` + num(y) + `" font-size="` + num(size) + `" fill="` + inkColour + `"`)
	if anchor != "start" {
		d.b.WriteString(` text-anchor="` + anchor + `"`)
	}
	if rotate != 0 {
		d.b.WriteString(` transform="rotate(` + num(rotate) + " " + num(x) + " " + num(y) + `)"`)
	}
	d.b.WriteString(extra + ">")
	if full != "" && full != s {
		d.b.WriteString("<title>")
		d.escape(full)
		d.b.WriteString("</title>")
	}
	d.escape(s)
	d.b.WriteString("</text>\n")
}

// num formats a coordinate with at most two decimals and no exponent.
func num(v float64) string {
	v = math.Round(v*100) / 100
	if v == 0 {
		v = 0 // no "-0"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

// textWidth estimates how wide s is drawn at the given font size.
func textWidth(s string, size float64) float64 {
	return float64(utf8.RuneCountInString(s)) * size * charWidth
}

// truncate shortens s to at most n runes, ending it with an ellipsis when it had to cut.
func truncate(s string, n int) string {
	if n < 1 {
		n = 1
	}
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return strings.TrimRight(string(r[:n-1]), " ") + "…"
}

// fitText shortens s so that it is drawn no wider than width at the given size.
func fitText(s string, width, size float64) string {
	return truncate(s, int(width/(size*charWidth)))
}
