package source

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/converge"
	"github.com/vmscatter/vmscatter/scatter/host"
	"golang.org/x/sys/unix"
)

// streamCounters are the pump's counters, read by the guard while the pump runs.
type streamCounters struct {
	stream, litStream, litWire atomic.Int64
}

// guardDowntime runs the guard beside a migration until ctx ends, setting QEMU's parameters whenever the guard's
// answer changes by more than a tenth. maxBandwidth is the user's cap on QEMU (bytes/s; 0 none), which the guard's
// never exceeds.
func (m *vmMigration) guardDowntime(ctx context.Context, q *qmp.Client, log *slog.Logger, maxBandwidth int64) {
	g := converge.NewDowntimeGuard(m.s.cfg.Policy.Downtime, m.s.linkShare())
	start := time.Now()
	userCap := converge.QEMUMaxBandwidth(maxBandwidth)
	set := converge.GuardSetting{Downtime: g.Limit(), MaxBandwidth: userCap} // as applyPolicy left them
	far := func(a, b int64) bool { return a-b > b/10 || b-a > b/10 }
	watchMigration(ctx, q, func(mi migrateInfo) bool {
		want := g.Observe(converge.GuardSample{At: time.Since(start), Stream: m.counters.stream.Load(), Wire: m.sc.BytesOut(),
			LitStream: m.counters.litStream.Load(), LitWire: m.counters.litWire.Load(), Iterations: mi.RAM.Iterations,
			Queued: int64(float64(host.SocketQueue(m.src, unix.SIOCINQ))*max(g.Ratio(), 0.01)) + host.SocketQueue(m.sc.NetConn(), unix.SIOCOUTQ)})
		if want.MaxBandwidth <= 0 || want.MaxBandwidth > userCap {
			want.MaxBandwidth = userCap
		}
		if !far(int64(want.Downtime), int64(set.Downtime)) && !far(want.MaxBandwidth, set.MaxBandwidth) {
			return false
		}
		params := map[string]any{"downtime-limit": want.Downtime.Milliseconds(), "max-bandwidth": want.MaxBandwidth}
		if err := q.Execute(ctx, "migrate-set-parameters", params, nil); err == nil {
			log.Debug("downtime guard", "qemu_limit_ms", want.Downtime.Milliseconds(), "max_bandwidth", want.MaxBandwidth,
				"wire_rate", int64(g.Rate()), "pass", mi.RAM.Iterations)
			set = want
		}
		return false
	})
}
