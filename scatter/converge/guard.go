package converge

import "time"

// QEMU decides the switch-over from the rate of its own writes into vmscatter's socket: it stops the VM once what
// remains fits in the downtime limit at that rate. But a page that the target holds costs vmscatter 15 bytes on
// the wire where QEMU counts 4 KiB, so during a stretch of references QEMU sees a link hundreds of times faster
// than the real one, and may stop the VM with a dirty rest (literal pages, which do cross the real link) that
// takes seconds to send. The downtime guard keeps QEMU's view honest by setting its downtime limit so that its
// threshold equals what the real link sends in the user's limit:
//
//	QEMU's threshold = stream rate × QEMU's limit   (bytes of stream it may leave for the stop)
//	the real one     = wire rate of literals × limit / wire bytes per stream byte of literals
//
// so QEMU's limit = limit × R / (ratio × stream rate), at least 1 ms (QEMU's unit), where R is this VM's wire rate measured while it sent mostly
// literals (when the link, not the content, set its pace) and ratio is what a literal stream byte costs on the
// wire. The link share the prime learned (the source link's rate over the migrations that run at once) bounds R:
// in a window of 100 ms a stream can burst into socket buffers faster than its share. Until a literal-bound window
// measures R, that share stands in for it; without either, QEMU decides alone. The guard changes nothing when QEMU's
// view is right (a stream of literals), so it adds no dirty passes where none are needed: under TCG every extra
// dirty-bitmap sync can lose guest writes (bench/tcg_artifact_test.go). It is pure: the VM's migration feeds it
// counters and the clock, and sets what it returns.

// DowntimeGuard computes QEMU's downtime limit for one VM's migration.
type DowntimeGuard struct {
	limit, floor time.Duration

	last     GuardSample
	haveLast bool
	prior    float64 // the prime's share of the link, bytes/s; 0 unknown: R before it is measured, and R's bound
	rate     float64 // R: wire bytes/s in literal-bound windows, smoothed; 0 while unknown
	ratio    float64 // wire bytes per stream byte of literal pages, smoothed; 1 until measured
	qemu     time.Duration
	cap      int64
	peak     float64 // the fastest QEMU has written, stream bytes/s: what it can do again once a cap lifts
}

// GuardSample is one reading of the VM's migration counters.
type GuardSample struct {
	At         time.Duration // since the migration started
	Stream     int64         // bytes of QEMU's stream the pump decoded
	Wire       int64         // bytes the VM's connection sent
	LitStream  int64         // stream bytes of pages that went literal
	LitWire    int64         // their wire bytes (compressed)
	Iterations int64         // QEMU's dirty-sync count: 1 during the first pass
	// queued is what sits between QEMU and the wire now, in wire bytes: QEMU's writes we have not read yet (at the
	// literal ratio) and the TCP send queue. A stop must wait for it to drain before the rest moves.
	Queued int64
}

// literalBound is the share of a window's wire bytes per stream byte above which the window counts as
// literal-bound: mostly pages that crossed the link, not references.
const literalBound = 0.25

// NewDowntimeGuard returns a guard for limit; prior is the wire rate to assume before one is measured (bytes/s, 0
// for none).
func NewDowntimeGuard(limit time.Duration, prior float64) *DowntimeGuard {
	return &DowntimeGuard{limit: limit, floor: time.Millisecond, prior: prior, qemu: StartingDowntime(limit, prior)}
}

// StartingDowntime is QEMU's downtime limit when its migration starts, before the guard's first samples: the
// formula's value for a stream of references at fastRefStream, when the guard knows the link's share, else the
// user's limit. QEMU takes its first rate sample 100 ms into the first pass, before the guard's first correction:
// at a few hundred MB/s of references, the user's 300 ms covered all that was left of a VM's RAM, and QEMU stopped
// the VM at once and sent the rest of its first pass, literals included, as downtime (measured: 1.8 s on the
// 100 Mbit/s bench).
func StartingDowntime(limit time.Duration, prior float64) time.Duration {
	if prior <= 0 {
		return limit
	}
	return min(limit, max(time.Millisecond, time.Duration(float64(limit)*prior/fastRefStream)))
}

// fastRefStream is how fast QEMU writes a stream of pages that become references, bytes/s (measured here: 0.3–1 GB/s).
const fastRefStream = 1e9

// GuardSetting is what the guard wants QEMU's parameters to be.
type GuardSetting struct {
	Downtime     time.Duration
	MaxBandwidth int64 // stream bytes per second QEMU may write; 0: no cap of the guard's
}

// Observe takes a sample and returns the parameters QEMU should have now.
//
// In a stretch of references, the downtime limit follows the formula above. In a stretch of literals, and in every
// dirty pass (dirty-sync-count 2 on), the guard caps QEMU's writes at what the link carries of them, share / ratio,
// and gives QEMU the user's limit: literals cross the link at that rate anyway, so the cap costs them nothing, and
// QEMU, which estimates its rate over 100 ms, no longer mistakes a burst into the socket buffers between it and the
// link (about 0.75 MiB, a quarter second of a 100 Mbit/s link's share for four VMs) for the link's rate. Measured
// at 100 Mbit/s without the cap: VMs that switched over right after a stretch of literals were down 0.8–2.0 s for a
// limit of 300 ms.
func (g *DowntimeGuard) Observe(s GuardSample) GuardSetting {
	if g.haveLast && s.At > g.last.At {
		dt := (s.At - g.last.At).Seconds()
		dStream, dWire := float64(s.Stream-g.last.Stream), float64(s.Wire-g.last.Wire)
		if dl := float64(s.LitStream - g.last.LitStream); dl > 0 {
			g.ratio = smooth(g.ratio, float64(s.LitWire-g.last.LitWire)/dl)
		}
		g.peak = max(g.peak, dStream/dt)
		literal := dStream > 0 && dWire/dStream >= literalBound
		if literal {
			g.rate = smooth(g.rate, dWire/dt)
		}
		r, ratio := g.rate, g.ratio
		if r == 0 || (g.prior > 0 && r > g.prior) {
			r = g.prior
		}
		if ratio == 0 {
			ratio = 1 // no literal yet: assume the rest will not compress
		}
		g.cap = 0
		switch {
		case r == 0:
			g.qemu = g.limit // nothing to correct QEMU's view with
		case s.Iterations >= 2 || literal:
			// The cap is the link share the prime measured, not this VM's own rate, which a cap would hold
			// down for good; without a share, the measured rate with headroom.
			capRate := g.prior
			if capRate == 0 {
				capRate = 1.25 * g.rate
			}
			g.qemu, g.cap = g.drained(g.limit, s.Queued, r), int64(capRate/ratio)
		default:
			// QEMU's next estimate may come from a window faster than this one (a cap just lifted, a stretch of
			// references starting): the fastest it has gone is the safe assumption.
			q := time.Duration(float64(g.drained(g.limit, s.Queued, r)) * r / (ratio * g.peak))
			g.qemu = min(g.limit, max(g.floor, q))
		}
	}
	g.last, g.haveLast = s, true
	return GuardSetting{Downtime: g.qemu, MaxBandwidth: g.cap}
}

// SetShare sets the VM's share of the link, bytes/s (as NewDowntimeGuard's prior): it grows as the migrations
// that shared the link end, and a cap at the share the prime measured for all of them would leave the link idle
// under the last ones. A share of 0 or less leaves it as it was.
func (g *DowntimeGuard) SetShare(share float64) {
	if share > 0 {
		g.prior = share
	}
}

// drained is what is left of limit once the queued bytes have crossed at rate r (at least the floor).
func (g *DowntimeGuard) drained(limit time.Duration, queued int64, r float64) time.Duration {
	if queued <= 0 || r <= 0 {
		return limit
	}
	return max(g.floor, limit-time.Duration(float64(queued)/r*float64(time.Second)))
}

func smooth(old, v float64) float64 {
	if old == 0 {
		return v
	}
	return 0.7*old + 0.3*v
}

// Limit is QEMU's downtime limit as the guard last set it.
func (g *DowntimeGuard) Limit() time.Duration { return g.qemu }

// Ratio is what a literal stream byte costs on the wire, as measured (0 before the first literal).
func (g *DowntimeGuard) Ratio() float64 { return g.ratio }

// Rate is the VM's wire rate in literal-bound windows, bytes/s (0 while unknown).
func (g *DowntimeGuard) Rate() float64 { return g.rate }
