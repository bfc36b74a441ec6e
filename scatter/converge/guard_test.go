package converge

import (
	"testing"
	"time"
)

// The guard against QEMU's view of the link: samples of a migration's counters in, QEMU's downtime limit out.
func TestDowntimeGuard(t *testing.T) {
	const limit = 300 * time.Millisecond
	var s GuardSample
	var g *DowntimeGuard
	step := func(stream, wire, lit, litWire int64) time.Duration {
		s.At += 100 * time.Millisecond
		s.Stream += stream
		s.Wire += wire
		s.LitStream += lit
		s.LitWire += litWire
		return g.Observe(s).Downtime
	}
	// No prime, nothing measured: QEMU decides alone, even through a burst of references.
	g = NewDowntimeGuard(limit, 0)
	for range 3 {
		if got := step(10e6, 10e3, 0, 0); got != limit {
			t.Fatalf("no rate known: QEMU limit %v, want the user's %v", got, limit)
		}
	}
	// References at 10 MB/s of stream where the prime measured 1 MB/s of link for this VM: what QEMU may leave for
	// the stop must be what 1 MB/s sends in 300 ms, so its limit is a tenth of the user's.
	g, s = NewDowntimeGuard(limit, 1e6), GuardSample{}
	step(0, 0, 0, 0)
	if got := step(1e6, 1e3, 0, 0); got < limit/11 || got > limit/9 {
		t.Fatalf("reference stretch: %v, want about %v", got, limit/10)
	}
	// At 100 MB/s, a hundredth: 3 ms.
	if got := step(10e6, 10e3, 0, 0); got != limit/100 {
		t.Fatalf("reference burst: %v, want %v", got, limit/100)
	}
	// At 1 GB/s, a thousandth: below QEMU's unit, so the floor of 1 ms.
	if got := step(100e6, 10e3, 0, 0); got != g.floor {
		t.Fatalf("faster burst: %v, want the floor %v", got, g.floor)
	}
	// Back to 10 MB/s: QEMU has shown it can write at 1 GB/s, and its next estimate may come from such a window, so
	// the floor stays.
	if got := step(1e6, 1e3, 0, 0); got != g.floor {
		t.Fatalf("slower stretch after a burst: %v, want the floor %v", got, g.floor)
	}
	// Literal-bound windows at 2 MB/s, twice the link share the prime learned: a burst into socket buffers. The
	// guard caps QEMU's writes at the share (TestDowntimeGuardCapsDirtyPasses) and gives it the user's limit.
	for range 4 {
		step(200e3, 200e3, 200e3, 200e3)
	}
	if got := step(200e3, 200e3, 200e3, 200e3); got != limit {
		t.Fatalf("burst above the share: %v, want %v with a cap", got, limit)
	}
	// Literal-bound windows within the share (incompressible pages at 2 MB/s, share 4 MB/s): the measured rate
	// replaces the prior, and QEMU's view is the real one, so it gets the user's limit.
	g, s = NewDowntimeGuard(limit, 4e6), GuardSample{}
	for range 4 {
		step(200e3, 200e3, 200e3, 200e3)
	}
	if got := step(200e3, 200e3, 200e3, 200e3); got != limit {
		t.Fatalf("literal-bound: %v, want %v", got, limit)
	}
	// Half references, half literals by wire bytes: a literal-bound window too, so capped (at the 4 MB/s share, of
	// stream): whatever QEMU leaves at that rate for 300 ms crosses in 300 ms, so it gets the user's limit.
	if got := step(400e3, 200e3, 200e3, 200e3); got != limit {
		t.Fatalf("mixed window: %v, want %v with a cap", got, limit)
	}
	// Compressible literals (half size) at the same wire rate: QEMU's rate doubles, and so does what crosses; the
	// limit is the user's.
	g, s = NewDowntimeGuard(limit, 1e6), GuardSample{}
	var got time.Duration
	for range 6 {
		got = step(200e3, 100e3, 200e3, 100e3)
	}
	if got != limit {
		t.Fatalf("compressible literals: %v, want %v", got, limit)
	}
}

// From the first dirty pass on, the guard caps QEMU's writes at what the link carries of them and gives QEMU the
// user's limit; before it, and without a rate, it does not cap.
func TestDowntimeGuardCapsDirtyPasses(t *testing.T) {
	const limit = 300 * time.Millisecond
	g := NewDowntimeGuard(limit, 3e6) // the prime measured 3 MB/s of link for this VM
	var s GuardSample
	step := func(iter, stream, wire, lit, litWire int64) GuardSetting {
		s.At += 100 * time.Millisecond
		s.Stream += stream
		s.Wire += wire
		s.LitStream += lit
		s.LitWire += litWire
		s.Iterations = iter
		return g.Observe(s)
	}
	step(1, 0, 0, 0, 0)
	if got := step(1, 10e6, 10e3, 0, 0); got.MaxBandwidth != 0 || got.Downtime >= limit {
		t.Fatalf("first pass of references: %+v, want no cap and a shrunk limit", got)
	}
	// A stretch of literals in the first pass: capped too.
	if got := step(1, 800e3, 800e3, 800e3, 800e3); got.MaxBandwidth != 3e6 || got.Downtime != limit {
		t.Fatalf("first pass, literals: %+v, want the limit and a cap of 3 MB/s", got)
	}
	// Dirty pass: incompressible literals bursting at 8 MB/s into socket buffers. The cap is the link's 3 MB/s.
	got := step(2, 800e3, 800e3, 800e3, 800e3)
	if got.Downtime != limit || got.MaxBandwidth != 3e6 {
		t.Fatalf("dirty pass: %+v, want the limit and a cap of 3 MB/s", got)
	}
	// 600 kB already queued between QEMU and the wire take 200 ms of the 3 MB/s share: QEMU gets the other 100 ms.
	s.Queued = 600e3
	if got := step(2, 300e3, 300e3, 300e3, 300e3); got.Downtime != 100*time.Millisecond {
		t.Fatalf("with a queue: %+v, want 100 ms", got)
	}
	s.Queued = 0
	// Literals that compress to half, sent at 2 MB/s of Wire: QEMU may write twice the link's share of them; the
	// cap is the share, not the VM's own rate (a cap there would hold it down for good).
	g, s = NewDowntimeGuard(limit, 3e6), GuardSample{}
	for range 8 {
		got = step(3, 400e3, 200e3, 400e3, 200e3)
	}
	if got.MaxBandwidth < 5.9e6 || got.MaxBandwidth > 6.1e6 {
		t.Fatalf("compressible literals: cap %d, want about 6 MB/s", got.MaxBandwidth)
	}
	// The other migrations end: this one's share doubles, and so does its cap.
	g.SetShare(6e6)
	if got = step(3, 400e3, 200e3, 400e3, 200e3); got.MaxBandwidth < 11.8e6 || got.MaxBandwidth > 12.2e6 {
		t.Fatalf("doubled share: cap %d, want about 12 MB/s", got.MaxBandwidth)
	}
	g.SetShare(0) // unknown: no change
	if got = step(3, 400e3, 200e3, 400e3, 200e3); got.MaxBandwidth < 11.8e6 || got.MaxBandwidth > 12.2e6 {
		t.Fatalf("share 0: cap %d, want it unchanged", got.MaxBandwidth)
	}
	// No prime and no measured rate: nothing to cap with.
	g, s = NewDowntimeGuard(limit, 0), GuardSample{}
	step(2, 0, 0, 0, 0)
	if got := step(2, 100e3, 1e3, 0, 0); got.MaxBandwidth != 0 || got.Downtime != limit {
		t.Fatalf("no rate known: %+v", got)
	}
}
