package scatter

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/vmscatter/vmscatter/kvm"
)

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

// downtimeGuard computes QEMU's downtime limit for one VM's migration.
type downtimeGuard struct {
	limit, floor time.Duration

	last     guardSample
	haveLast bool
	prior    float64 // the prime's share of the link, bytes/s; 0 unknown: R before it is measured, and R's bound
	rate     float64 // R: wire bytes/s in literal-bound windows, smoothed; 0 while unknown
	ratio    float64 // wire bytes per stream byte of literal pages, smoothed; 1 until measured
	qemu     time.Duration
}

// guardSample is one reading of the VM's migration counters.
type guardSample struct {
	at        time.Duration // since the migration started
	stream    int64         // bytes of QEMU's stream the pump decoded
	wire      int64         // bytes the VM's connection sent
	litStream int64         // stream bytes of pages that went literal
	litWire   int64         // their wire bytes (compressed)
}

// literalBound is the share of a window's wire bytes per stream byte above which the window counts as
// literal-bound: mostly pages that crossed the link, not references.
const literalBound = 0.25

// newDowntimeGuard returns a guard for limit; prior is the wire rate to assume before one is measured (bytes/s, 0
// for none).
func newDowntimeGuard(limit time.Duration, prior float64) *downtimeGuard {
	return &downtimeGuard{limit: limit, floor: time.Millisecond, prior: prior, qemu: limit}
}

// observe takes a sample and returns the downtime limit QEMU should have now.
func (g *downtimeGuard) observe(s guardSample) time.Duration {
	if g.haveLast && s.at > g.last.at {
		dt := (s.at - g.last.at).Seconds()
		dStream, dWire := float64(s.stream-g.last.stream), float64(s.wire-g.last.wire)
		if dl := float64(s.litStream - g.last.litStream); dl > 0 {
			g.ratio = smooth(g.ratio, float64(s.litWire-g.last.litWire)/dl)
		}
		if dStream > 0 && dWire/dStream >= literalBound {
			g.rate = smooth(g.rate, dWire/dt)
		}
		r, ratio := g.rate, g.ratio
		if r == 0 || (g.prior > 0 && r > g.prior) {
			r = g.prior
		}
		if ratio == 0 {
			ratio = 1 // no literal yet: assume the rest will not compress
		}
		switch {
		case r == 0 || dStream <= 0:
			g.qemu = g.limit // nothing to correct QEMU's view with
		default:
			q := time.Duration(float64(g.limit) * r / (ratio * dStream / dt))
			g.qemu = min(g.limit, max(g.floor, q))
		}
	}
	g.last, g.haveLast = s, true
	return g.qemu
}

func smooth(old, v float64) float64 {
	if old == 0 {
		return v
	}
	return 0.7*old + 0.3*v
}

// streamCounters are the pump's counters, read by the guard while the pump runs.
type streamCounters struct {
	stream, litStream, litWire atomic.Int64
}

// guardDowntime runs the guard beside a migration until ctx ends, setting QEMU's downtime limit whenever the
// guard's answer changes by more than a tenth.
func (m *vmMigration) guardDowntime(ctx context.Context, q *kvm.QMP, log *slog.Logger) {
	g := newDowntimeGuard(m.s.cfg.Policy.Downtime, m.s.linkShare())
	start := time.Now()
	set := g.limit // apply sets the user's limit before the migration starts
	watchMigration(ctx, q, func(mi migrateInfo) bool {
		want := g.observe(guardSample{at: time.Since(start), stream: m.counters.stream.Load(), wire: m.sc.BytesOut(),
			litStream: m.counters.litStream.Load(), litWire: m.counters.litWire.Load()})
		if d := want - set; d > set/10 || -d > set/10 {
			if err := q.Execute(ctx, "migrate-set-parameters", map[string]any{"downtime-limit": want.Milliseconds()}, nil); err == nil {
				log.Debug("downtime guard", "qemu_limit_ms", want.Milliseconds(), "wire_rate", int64(g.rate), "pass", mi.RAM.Iterations)
				set = want
			}
		}
		return false
	})
}
