package dedup

import (
	"testing"
	"time"
)

// Costs per literal page as measured here (docs/benchmarks.md, section 7, and TestMethodsCompress): text-like pages
// compress to about half with zstd; random pages do not compress, and every method sends them raw.
var (
	textCosts = map[Method]Probe{
		MethodNone: {CPU: 300 * time.Nanosecond, Wire: 4096},
		MethodS2:   {CPU: 6 * time.Microsecond, Wire: 3000},
		MethodZstd: {CPU: 17 * time.Microsecond, Wire: 2048},
	}
	randomCosts = map[Method]Probe{
		MethodNone: {CPU: 300 * time.Nanosecond, Wire: 4096},
		MethodS2:   {CPU: 3 * time.Microsecond, Wire: 4096},
		MethodZstd: {CPU: 20 * time.Microsecond, Wire: 4096},
	}
)

// probeAll feeds the chooser n rounds of probes of every candidate at costs, scaling CPU by cpuScale (a core
// shared with other work).
func probeAll(c *CodecChooser, costs map[Method]Probe, n int, cpuScale float64) Method {
	for range n {
		for _, m := range c.Candidates() {
			p := costs[m]
			c.Observe(Probe{Method: m, CPU: time.Duration(float64(p.CPU) * cpuScale), Wire: p.Wire})
		}
		c.Decide()
	}
	return c.Method()
}

const (
	mbit = 1e6 / 8 // bytes/s of one Mbit/s
	gbit = 1e9 / 8
)

func TestCodecChooserPicks(t *testing.T) {
	cases := []struct {
		name     string
		start    Method
		link     float64 // the stream's share, bytes/s
		costs    map[Method]Probe
		cpuScale float64
		want     Method
	}{
		// 200 Mbit/s over four streams: the link is the limit; zstd sends the fewest bytes.
		{"200Mbit/4, text", MethodZstd, 200 * mbit / 4, textCosts, 1, MethodZstd},
		{"200Mbit/4, text, from s2", MethodS2, 200 * mbit / 4, textCosts, 1, MethodZstd},
		{"200Mbit/4, text, from none", MethodNone, 200 * mbit / 4, textCosts, 1, MethodZstd},
		// s2 within 4% of zstd's bytes behind a slow link: the bytes are the time, and zstd keeps them.
		{"200Mbit/4, s2 4% more bytes", MethodS2, 200 * mbit / 4, map[Method]Probe{
			MethodNone: textCosts[MethodNone], MethodS2: {CPU: 6 * time.Microsecond, Wire: 2130}, MethodZstd: textCosts[MethodZstd]},
			1, MethodZstd},
		// Random pages go raw whatever the method: none sends the same bytes for no CPU.
		{"200Mbit/4, random", MethodZstd, 200 * mbit / 4, randomCosts, 1, MethodNone},
		// 1 Gbit/s for one stream: zstd's fastest level still keeps up with the link (17 µs against 16.4 µs of wire).
		{"1Gbit, text", MethodZstd, 1 * gbit, textCosts, 1, MethodZstd},
		// The same link with the core shared three ways: zstd would hold the stream to a third of it; s2 keeps up.
		{"1Gbit, text, core shared", MethodZstd, 1 * gbit, textCosts, 3, MethodS2},
		// 2 Gbit/s: s2 (12 µs of wire) beats zstd (17 µs of CPU) and none (16.4 µs of wire).
		{"2Gbit, text", MethodZstd, 2 * gbit, textCosts, 1, MethodS2},
		// 10 Gbit/s: no compressor keeps up; the raw page's 3.3 µs of wire is the fastest.
		{"10Gbit, text", MethodZstd, 10 * gbit, textCosts, 1, MethodNone},
		// Unknown link: no basis for a change.
		{"no link", MethodZstd, 0, textCosts, 1, MethodZstd},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ch := NewCodecChooser(c.start)
			ch.SetLink(c.link)
			if got := probeAll(ch, c.costs, 10, c.cpuScale); got != c.want {
				t.Errorf("picked %v, want %v", got, c.want)
			}
		})
	}
}

func TestCodecChooserWaitsForProbes(t *testing.T) {
	ch := NewCodecChooser(MethodZstd)
	ch.SetLink(10 * gbit)
	for i := range minProbes {
		for _, m := range ch.Candidates() {
			ch.Observe(Probe{Method: m, CPU: textCosts[m].CPU, Wire: textCosts[m].Wire})
		}
		if got := ch.Decide(); got != MethodZstd {
			t.Fatalf("after %d rounds of probes: switched to %v", i+1, got)
		}
	}
	if got := probeAll(ch, textCosts, 1, 1); got != MethodNone {
		t.Fatalf("after %d rounds: %v, want none", minProbes+1, got)
	}
}

func TestCodecChooserIgnoresWarmUpAndOutliers(t *testing.T) {
	// 200 Mbit/s over four streams, text pages: zstd. Its first probe (a cold encoder) and one probe that stalled do
	// not make s2 look faster.
	ch := NewCodecChooser(MethodZstd)
	ch.SetLink(200 * mbit / 4)
	ch.Observe(Probe{Method: MethodZstd, CPU: 5 * time.Millisecond, Wire: 2048})
	for i := range 10 {
		for _, m := range ch.Candidates() {
			p := textCosts[m]
			p.Method = m
			if m == MethodZstd && i == 5 {
				p.CPU = 50 * time.Millisecond
			}
			ch.Observe(p)
			ch.Observe(Probe{Method: m, CPU: p.CPU, Wire: p.Wire})
		}
		if got := ch.Decide(); got != MethodZstd {
			t.Fatalf("round %d: %v", i, got)
		}
	}
}

func TestCodecChooserHysteresis(t *testing.T) {
	// At 1 Gbit/s s2 (19 µs of wire) is 5% faster than zstd (20 µs of CPU): not enough to move.
	link := 1 * gbit
	costs := map[Method]Probe{
		MethodZstd: {CPU: 20 * time.Microsecond, Wire: 2048},
		MethodS2:   {CPU: 10 * time.Microsecond, Wire: int(19 * time.Microsecond.Seconds() * link)},
	}
	ch := NewCodecChooser(MethodZstd, MethodZstd, MethodS2)
	ch.SetLink(link)
	if got := probeAll(ch, costs, 10, 1); got != MethodZstd {
		t.Fatalf("switched to %v for 5%% of time, at 1.2x the bytes", got)
	}
	// Once s2 is clearly faster (zstd's core is shared), it moves; and it does not come back for a small change.
	slow := map[Method]Probe{MethodZstd: {CPU: 40 * time.Microsecond, Wire: 2048}, MethodS2: costs[MethodS2]}
	if got := probeAll(ch, slow, 20, 1); got != MethodS2 {
		t.Fatalf("stayed with %v at twice s2's time", got)
	}
	// In the band between (zstd 20 µs, s2 19 µs) neither displaces the other.
	near := map[Method]Probe{MethodZstd: {CPU: 20 * time.Microsecond, Wire: 2048}, MethodS2: costs[MethodS2]}
	if got := probeAll(ch, near, 20, 1); got != MethodS2 {
		t.Fatalf("went back to %v, 5%% slower, for its bytes", got)
	}
	ch = NewCodecChooser(MethodZstd, MethodZstd, MethodS2)
	ch.SetLink(link)
	if got := probeAll(ch, near, 20, 1); got != MethodZstd {
		t.Fatalf("went to %v for 5%% of time", got)
	}
	// Within a twentieth of the time, fewer bytes win.
	even := map[Method]Probe{MethodZstd: {CPU: 19500 * time.Nanosecond, Wire: 2048}, MethodS2: costs[MethodS2]}
	ch = NewCodecChooser(MethodS2, MethodZstd, MethodS2)
	ch.SetLink(link)
	if got := probeAll(ch, even, 20, 1); got != MethodZstd {
		t.Fatalf("stayed with %v at 1.2x the bytes in the same time", got)
	}
}

func TestCodecChooserCandidates(t *testing.T) {
	// A chooser limited to zstd and s2 never picks none, however fast the link.
	ch := NewCodecChooser(MethodZstd, MethodZstd, MethodS2)
	ch.SetLink(10 * gbit)
	if got := probeAll(ch, textCosts, 10, 1); got != MethodS2 {
		t.Fatalf("picked %v", got)
	}
	ch.Observe(Probe{Method: numMethods, CPU: time.Nanosecond, Wire: 1}) // ignored
	// 10 probes, of which the first only warmed the encoder up.
	if cpu, wire, n := ch.Estimate(MethodZstd); n != 9 || cpu <= 0 || wire != 2048 {
		t.Fatalf("estimate of zstd: %v, %v, %d", cpu, wire, n)
	}
}

// TestMethodsCompress checks that every method's records decode with the codec they name, and measures what each
// makes of the corpus (for the costs above: go test -run TestMethodsCompress -v ./dedup).
func TestMethodsCompress(t *testing.T) {
	pages := append(textPages()[:64], exePages()...)
	if len(pages) > 512 {
		pages = pages[:512]
	}
	page := make([]byte, PageSize)
	for _, m := range Methods() {
		out, t0 := 0, time.Now()
		for _, p := range pages {
			enc, c := m.Compress(nil, p)
			if c != m.Codec() && c != CodecNone {
				t.Fatalf("%v compressed with %v", m, c)
			}
			if err := c.Decode(page, enc); err != nil || string(page) != string(p) {
				t.Fatalf("%v: %v", m, err)
			}
			out += len(enc)
		}
		t.Logf("%v: %.3f of the bytes, %v a page (encode and decode)", m, float64(out)/float64(len(pages)*PageSize),
			time.Since(t0)/time.Duration(len(pages)))
	}
	if MethodOf(CodecZstd) != MethodZstd || MethodOf(CodecS2) != MethodS2 || MethodOf(CodecNone) != MethodNone {
		t.Fatal("MethodOf")
	}
	if MethodZstd.Codec() != CodecZstd || Method(9).Valid() {
		t.Fatal("Codec, Valid")
	}
}
