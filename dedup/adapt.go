package dedup

import "time"

// A stream's literal pages cost the sender CPU to compress and the link bytes to carry, and which of the two sets a
// stream's pace depends on the link and on what else wants the source's cores. zstd's fastest level makes about 240 MB/s
// of pages a core and s2 about 680 MB/s (docs/benchmarks.md, section 7): a core that compresses literals with zstd
// feeds a link of about 1 Gbit/s, so behind a 200 Mbit/s link zstd costs nothing in time and saves a third of the
// bytes, while behind 10 Gbit/s it holds the stream to a fifth of the link.
//
// The chooser picks, for one stream, the method that moves a literal page soonest, taking the pump as a pipeline
// whose stages are the compression (on this goroutine) and the link (the stream's share of it):
//
//	time per literal page with method m = max(cpu(m), wire(m) / link)
//
// where cpu(m) and wire(m) are measured on the stream's own pages: every so often the pump compresses one literal
// page with every candidate, timing each (Probe). The time is wall-clock time, so a core that other work shares
// shows as a slower compression: that is the CPU headroom. Among methods within a twentieth of its time it takes the
// one that sends the fewest bytes, then the one that costs the least CPU (incompressible pages: every method sends
// the page raw, and none costs nothing). It changes method only for a gain of a tenth in time, or of a fiftieth in
// bytes within a twentieth of the time, so probes' noise does not make it flap; behind a slow link, where time is
// bytes, it gives up no more than 2% of the literals' bytes for CPU. Without a link rate it keeps the method it started with.
//
// It leaves out the rest of a page's cost (decoding, fingerprint, digest), which is the same for every method: its
// choice leans a little to compression when the source's CPU is the limit. It is pure: the pump feeds it probes and
// the link's share, and reads Method.

// CodecChooser picks the compression method for one stream's literal pages. It is not safe for concurrent use.
type CodecChooser struct {
	candidates []Method
	current    Method
	link       float64 // bytes/s the stream may put on the wire; 0: unknown
	est        [numMethods]methodCost
}

type methodCost struct {
	cpu, wire float64 // seconds and bytes per page, smoothed
	n         int     // probes taken into the estimate
	warm      bool    // the first probe, which warms the encoder up, was seen
}

// Probe is one page compressed with one method: how long it took and the bytes it would put in the record.
type Probe struct {
	Method Method
	CPU    time.Duration
	Wire   int
}

// minProbes is how many probes of a method the chooser needs before it may pick it.
const minProbes = 3

// The chooser's tolerances: a method within timeTie of the current one's time is as fast; a switch needs a gain of
// switchTime in time, or of switchWire in bytes at equal time, or of switchCPU in CPU at equal time and bytes.
// timeTie < switchTime leaves a band in which neither of two methods displaces the other.
const (
	timeTie    = 0.05
	switchTime = 0.10
	switchWire = 0.02
	switchCPU  = 0.50
)

// NewCodecChooser returns a chooser that starts with start and picks among candidates (every method if none).
func NewCodecChooser(start Method, candidates ...Method) *CodecChooser {
	if len(candidates) == 0 {
		candidates = Methods()
	}
	return &CodecChooser{candidates: candidates, current: start}
}

// Candidates are the methods the chooser picks among: the ones to probe.
func (c *CodecChooser) Candidates() []Method { return c.candidates }

// SetLink sets the stream's share of the link, bytes/s (0: unknown).
func (c *CodecChooser) SetLink(bytesPerSecond float64) { c.link = max(0, bytesPerSecond) }

// Method is the method to compress literal pages with now.
func (c *CodecChooser) Method() Method { return c.current }

// maxOutlier bounds one probe's CPU time to this many times the estimate: a goroutine descheduled in the middle
// of a probe measures the scheduler, not the method.
const maxOutlier = 4

// Observe takes one probe. A method's first probe only warms it up (a zstd encoder allocates its tables on first
// use: measured here, 1 ms against 20 µs after).
func (c *CodecChooser) Observe(p Probe) {
	if !p.Method.Valid() {
		return
	}
	e := &c.est[p.Method]
	if !e.warm {
		e.warm = true
		return
	}
	cpu, wire := p.CPU.Seconds(), float64(p.Wire)
	if e.n == 0 {
		e.cpu, e.wire = cpu, wire
	} else {
		e.cpu, e.wire = 0.8*e.cpu+0.2*min(cpu, maxOutlier*e.cpu), 0.8*e.wire+0.2*wire
	}
	e.n++
}

// Decide picks the method for the pages to come from the probes so far, and returns it.
func (c *CodecChooser) Decide() Method {
	if c.link <= 0 || c.est[c.current].n < minProbes {
		return c.current
	}
	best := c.current
	for _, m := range c.candidates {
		if m != best && c.est[m].n >= minProbes && c.better(m, best) {
			best = m
		}
	}
	c.current = best
	return best
}

// pageTime is how long a literal page takes with m: the slower of its compression and its share of the link.
func (c *CodecChooser) pageTime(m Method) float64 {
	e := c.est[m]
	return max(e.cpu, e.wire/c.link)
}

// better reports whether m is worth switching to from cur.
func (c *CodecChooser) better(m, cur Method) bool {
	tm, tc := c.pageTime(m), c.pageTime(cur)
	em, ec := c.est[m], c.est[cur]
	switch {
	case tm < (1-switchTime)*tc:
		return true
	case tm > (1+timeTie)*tc:
		return false
	case em.wire < (1-switchWire)*ec.wire:
		return true
	case em.wire > (1+switchWire)*ec.wire:
		return false
	}
	return em.cpu < (1-switchCPU)*ec.cpu
}

// Estimate is what the chooser has measured of m: CPU time and wire bytes per literal page, and how many probes.
func (c *CodecChooser) Estimate(m Method) (cpu time.Duration, wire float64, probes int) {
	if !m.Valid() {
		return 0, 0, 0
	}
	e := c.est[m]
	return time.Duration(e.cpu * float64(time.Second)), e.wire, e.n
}
