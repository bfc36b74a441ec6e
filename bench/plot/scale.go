package plot

import (
	"math"
	"strconv"
	"strings"
)

// scale maps data values along one axis onto pixels, and knows where its ticks go.
type scale struct {
	log    bool
	lo, hi float64 // the domain; both positive on a log scale
	p0, p1 float64 // pixels of lo and hi

	ticks []float64 // labelled, each with a grid line
	minor []float64 // unlabelled grid lines (log scales: 2..9 times each decade)
	// label of a tick; set by the constructor, so that all labels of one axis agree on units and decimals.
	label func(float64) string
}

// pos returns the pixel of v, which must be inside the scale's domain (or positive, on a log scale).
func (s *scale) pos(v float64) float64 {
	t, tlo, thi := v, s.lo, s.hi
	if s.log {
		t, tlo, thi = math.Log10(v), math.Log10(s.lo), math.Log10(s.hi)
	}
	return s.p0 + (t-tlo)/(thi-tlo)*(s.p1-s.p0)
}

// clampPos is pos with v held inside the domain.
func (s *scale) clampPos(v float64) float64 {
	return s.pos(math.Max(s.lo, math.Min(s.hi, v)))
}

// usable reports whether v can be drawn on the scale: finite, and positive on a log scale.
func (s *scale) usable(v float64) bool { return drawable(v, s.log) }

// drawable reports whether v can be drawn on a linear or a log axis.
func drawable(v float64, log bool) bool {
	return !math.IsNaN(v) && !math.IsInf(v, 0) && (!log || v > 0)
}

const linearTicks = 5 // about how many intervals a linear axis is cut into

// linearScale covers [from, to] with ticks at round numbers: 1, 2 or 5 times a power of ten apart. The domain is
// widened to the outermost ticks. An empty or degenerate range becomes a small range around it.
func linearScale(from, to float64) *scale {
	if !(from <= to) || math.IsInf(from, 0) || math.IsInf(to, 0) {
		from, to = 0, 1
	}
	if from == to {
		d := math.Abs(from) * 0.1
		if d == 0 {
			d = 1
		}
		if from >= 0 && from-d < 0 {
			from, to = 0, to+d // keep a non-negative range non-negative
		} else {
			from, to = from-d, to+d
		}
	}
	// Of the round steps near span/linearTicks, take the one whose ticks cut the range into the number of
	// intervals nearest linearTicks; on a tie, the coarser.
	mant, exp := niceStep((to - from) / linearTicks)
	var first, last int64
	best := math.MaxInt
	for e := exp - 1; e <= exp+1; e++ {
		for _, m := range []int64{1, 2, 5} {
			step := tickValue(m, e, 1)
			f, l := int64(math.Floor(from/step+1e-9)), int64(math.Ceil(to/step-1e-9))
			d := int(l - f - linearTicks)
			if d < 0 {
				d = -d
			}
			if d <= best {
				best, mant, exp, first, last = d, m, e, f, l
			}
		}
	}
	s := &scale{}
	for i := first; i <= last; i++ {
		s.ticks = append(s.ticks, tickValue(mant, exp, i))
	}
	s.lo, s.hi = s.ticks[0], s.ticks[len(s.ticks)-1]
	s.label = linearLabeller(s.ticks, exp)
	return s
}

// niceStep returns the smallest step m·10^e not below raw, with m one of 1, 2 or 5.
func niceStep(raw float64) (mant int64, exp int) {
	if !(raw > 0) {
		return 1, 0
	}
	exp = int(math.Floor(math.Log10(raw)))
	norm := raw / math.Pow10(exp)
	switch {
	case norm <= 1+1e-9:
		mant = 1
	case norm <= 2+1e-9:
		mant = 2
	case norm <= 5+1e-9:
		mant = 5
	default:
		mant, exp = 1, exp+1
	}
	return mant, exp
}

// tickValue is i·mant·10^exp, computed so that 0.1-steps give 0.3 and not 0.30000000000000004.
func tickValue(mant int64, exp int, i int64) float64 {
	if exp >= 0 {
		return float64(i*mant) * math.Pow10(exp)
	}
	return float64(i*mant) / math.Pow10(-exp)
}

// siPrefixes are the metric prefixes for 10^3 .. 10^15. Exa is left out: its "E" reads as an exponent.
var siPrefixes = []string{"k", "M", "G", "T", "P"}

// linearLabeller labels the ticks of a linear axis whose step is m·10^exp. Large ticks share one metric prefix
// (0.5G, 1.0G, 1.5G); all labels have as many decimals as the step needs.
func linearLabeller(ticks []float64, exp int) func(float64) string {
	maxAbs := 0.0
	for _, t := range ticks {
		maxAbs = math.Max(maxAbs, math.Abs(t))
	}
	p, suffix := 0, ""
	if maxAbs >= 1e4 {
		p = 3 * int(math.Floor(math.Log10(maxAbs)/3))
		if p/3 > len(siPrefixes) {
			return func(v float64) string { return strconv.FormatFloat(v, 'g', 3, 64) }
		}
		suffix = siPrefixes[p/3-1]
	}
	decimals := p - exp
	if decimals < 0 {
		decimals = 0
	}
	return func(v float64) string {
		if v == 0 {
			return "0"
		}
		return strconv.FormatFloat(v/math.Pow10(p), 'f', decimals, 64) + suffix
	}
}

const maxLogTicks = 8 // a log axis labels at most about this many decades

// logScale covers [from, to] (both positive) with ticks at powers of ten; wide ranges label every k-th decade.
// For bars, the bottom decade is strictly below from, so that the smallest bar still has a height.
func logScale(from, to float64, forBars bool) *scale {
	if !(from > 0 && from <= to) || math.IsInf(to, 0) {
		from, to = 1, 10
	}
	var lo int
	if forBars {
		lo = int(math.Ceil(math.Log10(from)-1e-9)) - 1
	} else {
		lo = int(math.Floor(math.Log10(from) + 1e-9))
	}
	hi := int(math.Ceil(math.Log10(to) - 1e-9))
	if hi <= lo {
		hi = lo + 1
	}
	stride := (hi - lo + maxLogTicks - 1) / maxLogTicks
	if r := (hi - lo) % stride; r != 0 {
		hi += stride - r
	}
	s := &scale{log: true, lo: math.Pow10(lo), hi: math.Pow10(hi), label: powerOfTenLabel}
	for e := lo; e <= hi; e += stride {
		s.ticks = append(s.ticks, math.Pow10(e))
	}
	if stride == 1 && hi-lo <= 6 {
		for e := lo; e < hi; e++ {
			for m := 2; m <= 9; m++ {
				s.minor = append(s.minor, float64(m)*math.Pow10(e))
			}
		}
	}
	return s
}

// powerOfTenLabel labels a log tick: 0.001 .. 1000 as decimals, 10k .. 100P with a metric prefix, and the rest
// as 1e-5 or 1e18.
func powerOfTenLabel(v float64) string {
	e := int(math.Round(math.Log10(v)))
	switch {
	case e >= -3 && e <= 3:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case e > 3 && e < 3*(len(siPrefixes)+1):
		return strconv.FormatFloat(math.Pow10(e%3), 'f', -1, 64) + siPrefixes[e/3-1]
	default:
		return "1e" + strconv.Itoa(e)
	}
}

// compact formats a value for a label next to a bar: three significant digits, with a metric prefix from 10k up.
func compact(v float64) string {
	a := math.Abs(v)
	switch {
	case a == 0:
		return "0"
	case a >= 1e4 && a < 1e18:
		v, _ = strconv.ParseFloat(strconv.FormatFloat(v, 'g', 3, 64), 64) // so 999999 is 1M, not 1000k
		a = math.Abs(v)
		p := 3 * int(math.Floor(math.Log10(a)/3))
		return sig3(v/math.Pow10(p)) + siPrefixes[p/3-1]
	case a >= 1e-3 && a < 1e4:
		return sig3(v)
	default:
		return strconv.FormatFloat(v, 'e', 2, 64)
	}
}

// sig3 writes v with three significant digits, or as an integer when it has more, without trailing zeros.
func sig3(v float64) string {
	decimals := 2 - int(math.Floor(math.Log10(math.Abs(v))))
	if decimals < 0 {
		decimals = 0
	}
	s := strconv.FormatFloat(v, 'f', decimals, 64)
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}
