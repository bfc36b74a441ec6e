package scatter

import (
	"testing"
	"time"
)

// The guard against QEMU's view of the link: samples of a migration's counters in, QEMU's downtime limit out.
func TestDowntimeGuard(t *testing.T) {
	const limit = 300 * time.Millisecond
	var s guardSample
	var g *downtimeGuard
	step := func(stream, wire, lit, litWire int64) time.Duration {
		s.at += 100 * time.Millisecond
		s.stream += stream
		s.wire += wire
		s.litStream += lit
		s.litWire += litWire
		return g.observe(s)
	}
	// No prime, nothing measured: QEMU decides alone, even through a burst of references.
	g = newDowntimeGuard(limit, 0)
	for range 3 {
		if got := step(10e6, 10e3, 0, 0); got != limit {
			t.Fatalf("no rate known: QEMU limit %v, want the user's %v", got, limit)
		}
	}
	// References at 100 MB/s of stream where the prime measured 1 MB/s of link for this VM: what QEMU may leave for
	// the stop must be what 1 MB/s sends in 300 ms, so its limit is a hundredth of the user's: 3 ms.
	g, s = newDowntimeGuard(limit, 1e6), guardSample{}
	step(0, 0, 0, 0)
	if got := step(10e6, 10e3, 0, 0); got != limit/100 {
		t.Fatalf("reference burst: %v, want %v", got, limit/100)
	}
	// At 1 GB/s of stream, a thousandth: below QEMU's unit, so the floor of 1 ms.
	if got := step(100e6, 10e3, 0, 0); got != g.floor {
		t.Fatalf("faster burst: %v, want the floor %v", got, g.floor)
	}
	// QEMU sees 10 MB/s, the prime said 1 MB/s: a tenth.
	if got := step(1e6, 1e3, 0, 0); got < limit/11 || got > limit/9 {
		t.Fatalf("reference stretch: %v, want about %v", got, limit/10)
	}
	// Literal-bound windows at 2 MB/s, twice the link share the prime learned: a burst into socket buffers. The
	// share bounds the rate, so QEMU may leave only what 1 MB/s sends in the limit: half of what it sees.
	for range 4 {
		step(200e3, 200e3, 200e3, 200e3)
	}
	if got := step(200e3, 200e3, 200e3, 200e3); got != limit/2 {
		t.Fatalf("burst above the share: %v, want %v", got, limit/2)
	}
	// Literal-bound windows within the share (incompressible pages at 2 MB/s, share 4 MB/s): the measured rate
	// replaces the prior, and QEMU's view is the real one, so it gets the user's limit.
	g, s = newDowntimeGuard(limit, 4e6), guardSample{}
	for range 4 {
		step(200e3, 200e3, 200e3, 200e3)
	}
	if got := step(200e3, 200e3, 200e3, 200e3); got != limit {
		t.Fatalf("literal-bound: %v, want %v", got, limit)
	}
	// Half references, half literals by wire bytes: 4 MB/s of stream of which the literals cost 2 MB/s on the wire.
	if got, want := step(400e3, 200e3, 200e3, 200e3), limit/2; got < want*9/10 || got > want*11/10 {
		t.Fatalf("mixed window: %v, want about %v", got, want)
	}
	// Compressible literals (half size) at the same wire rate: QEMU's rate doubles, and so does what crosses; the
	// limit is the user's.
	g, s = newDowntimeGuard(limit, 1e6), guardSample{}
	var got time.Duration
	for range 6 {
		got = step(200e3, 100e3, 200e3, 100e3)
	}
	if got != limit {
		t.Fatalf("compressible literals: %v, want %v", got, limit)
	}
}
