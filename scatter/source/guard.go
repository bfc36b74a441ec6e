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

// guardWatch carries out the downtime guard's answers for one VM's migration: it sets QEMU's parameters whenever
// the answer changes by more than a tenth, never above the user's cap on QEMU (--max-bandwidth).
type guardWatch struct {
	m       *vmMigration
	g       *converge.DowntimeGuard
	start   time.Time
	userCap int64
	set     converge.GuardSetting
	log     *slog.Logger
}

func (m *vmMigration) newGuardWatch(log *slog.Logger) *guardWatch {
	g := converge.NewDowntimeGuard(m.s.cfg.Policy.Downtime, m.s.linkShare())
	userCap := converge.QEMUMaxBandwidth(m.s.cfg.MaxBandwidth)
	return &guardWatch{m: m, g: g, start: time.Now(), userCap: userCap, log: log,
		set: converge.GuardSetting{Downtime: m.mig.downtime, MaxBandwidth: userCap}} // as applyPolicy left them
}

func (w *guardWatch) observe(ctx context.Context, mi qmp.MigrationInfo) {
	m, g := w.m, w.g
	sc := m.conn()
	if sc == nil {
		return // the connection is lost: the machine is rolling back
	}
	g.SetShare(m.s.linkShareNow())
	want := g.Observe(converge.GuardSample{At: time.Since(w.start), Stream: m.counters.stream.Load(), Wire: sc.BytesOut(),
		LitStream: m.counters.litStream.Load(), LitWire: m.counters.litWire.Load(), Iterations: mi.RAM.DirtySyncCount,
		Queued: int64(float64(host.SocketQueue(m.source(), unix.SIOCINQ))*max(g.Ratio(), 0.01)) + host.SocketQueue(sc.NetConn(), unix.SIOCOUTQ)})
	if want.MaxBandwidth <= 0 || want.MaxBandwidth > w.userCap {
		want.MaxBandwidth = w.userCap
	}
	far := func(a, b int64) bool { return a-b > b/10 || b-a > b/10 }
	if !far(int64(want.Downtime), int64(w.set.Downtime)) && !far(want.MaxBandwidth, w.set.MaxBandwidth) {
		return
	}
	if err := m.vm.qmp.SetParameters(ctx, qmp.MigrationParameters{DowntimeLimit: new(want.Downtime), MaxBandwidth: new(want.MaxBandwidth)}); err == nil {
		w.log.Debug("downtime guard", "qemu_limit_ms", want.Downtime.Milliseconds(), "max_bandwidth", want.MaxBandwidth,
			"wire_rate", int64(g.Rate()), "pass", mi.RAM.DirtySyncCount)
		w.set = want
	}
}
