package source

import (
	"context"
	"log/slog"
	"time"

	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/converge"
	"github.com/vmscatter/vmscatter/scatter/host"
)

// switchOver forces the switch-over now: the VM stops, and QEMU's migration sends what is left, then completes.
// Raising downtime-limit instead would leave the moment to QEMU's next estimate; under TCG that path also loses
// guest writes in QEMU 7.2 (bench/tcg_artifact_test.go). The time of the stop is recorded, because QEMU's own
// downtime figure does not see a stop it did not make.
func switchOver(q *qmp.Client, stopped func(time.Time)) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	at := time.Now()
	if err := q.Stop(ctx); err == nil && stopped != nil {
		stopped(at)
	}
}

// applyPolicy sets the source's capabilities and parameters before `migrate`. downtime is the limit QEMU starts
// with (the downtime guard's first value, converge.StartingDowntime).
func applyPolicy(ctx context.Context, q *qmp.Client, p converge.Policy, caps map[string]bool, maxBandwidth int64, downtime time.Duration) error {
	if err := q.SetCapabilities(ctx, caps); err != nil {
		return err
	}
	// Every policy keeps QEMU's own switch-over at the downtime limit, as the downtime guard translates it to
	// QEMU's view of the link: when the rest fits, finishing early is as good for timebound and membound as for
	// precopy. Their steering forces the switch-over when QEMU does not converge. (A 1 ms limit for the whole
	// migration, which would leave the moment to the steering alone, makes QEMU sync its dirty bitmap many times in
	// quick succession, and under TCG every sync can lose guest writes.)
	params := qmp.MigrationParameters{DowntimeLimit: new(max(time.Millisecond, downtime)), MaxBandwidth: new(converge.QEMUMaxBandwidth(maxBandwidth))}
	if caps["auto-converge"] {
		initial, increment := p.Throttle()
		params.CPUThrottleInitial, params.CPUThrottleIncrement = new(initial), new(increment)
	}
	return q.SetParameters(ctx, params)
}

// watch reads the source's migration every steerPeriod while it is active, until ctx ends, and hands each reading
// to the policy's steering and to the downtime guard: one reader of QEMU per VM. The caller joins it before it
// reports the VM's outcome or rolls it back, so no decision of either lands after that.
func (m *vmMigration) watch(ctx context.Context, log *slog.Logger) {
	select { // the stream flows, and the link's share is known, once the prime is over
	case <-m.s.primed:
	case <-ctx.Done():
		return
	}
	q, p := m.vm.qmp, m.s.cfg.Policy
	// A migration started during the prime got the policy's own downtime limit; before its stream flows, QEMU gets
	// the one the link's share calls for (QEMU's first rate sample, at reference speed, would otherwise take the
	// whole limit and stop the VM with its literals still to send).
	if d := max(time.Millisecond, converge.StartingDowntime(p.Downtime, m.s.linkShare())); d != m.mig.downtime {
		if err := q.SetParameters(ctx, qmp.MigrationParameters{DowntimeLimit: new(d)}); err == nil {
			m.mig.downtime = d
		}
	}
	close(m.mig.tuned)
	steering := p.Steering()
	guard := m.newGuardWatch(log)
	// The policy's clock runs from the start of the run (timebound's deadline covers the whole send), or from now
	// when there is none.
	start := m.s.runStart
	if start.IsZero() {
		start = time.Now()
	}
	var restore func()
	defer func() {
		if restore != nil {
			restore() // the vCPUs get their CPUs back, whether the source runs on or is about to quit
		}
	}()
	steered := !p.Acts()
	throttled := p.ThrottlesVCPUs(m.mig.vcpus)
	watchMigration(ctx, q, func(mi qmp.MigrationInfo) bool {
		guard.observe(ctx, mi)
		if steered {
			return false
		}
		st := steering.Observe(converge.Progress{Elapsed: time.Since(start), PagesSent: mi.RAM.Normal + mi.RAM.Duplicate,
			Remaining: mi.RAM.Remaining, Total: mi.RAM.Total, Transferred: mi.RAM.Transferred, Iterations: mi.RAM.DirtySyncCount,
			PageSize: mi.RAM.PageSize, Throttle: mi.CPUThrottlePercentage, AutoConverge: throttled})
		if st.PinVCPUs > 0 && m.mig.vcpus != 0 && m.mig.vcpus <= st.PinVCPUs {
			log.Info("timebound: marker passed; pinning cannot slow this VM, QEMU's throttle does", "vcpus", m.mig.vcpus,
				"throttle", mi.CPUThrottlePercentage)
		} else if st.PinVCPUs > 0 {
			if r, err := pinVCPUs(ctx, q, st.PinVCPUs); err != nil {
				log.Warn("timebound: pinning vCPUs failed", "err", err)
			} else {
				log.Info(st.Reason, "cpus", st.PinVCPUs)
				restore = r
			}
		}
		if st.Reason != "" && !st.SwitchOver && st.PinVCPUs == 0 {
			log.Info(st.Reason, "remaining", mi.RAM.Remaining, "pass", mi.RAM.DirtySyncCount, "throttle", mi.CPUThrottlePercentage)
		}
		if st.SwitchOver {
			log.Info(st.Reason, "remaining", mi.RAM.Remaining, "elapsed", time.Since(start).Round(time.Millisecond),
				"pass", mi.RAM.DirtySyncCount, "pages_per_s", int64(steering.Rate()), "throttle", mi.CPUThrottlePercentage)
			switchOver(q, m.setStopped)
			steered = true
		}
		return false
	})
}

// pinVCPUs pins every vCPU thread of the VM onto the first n CPUs it may use, and returns a function that restores
// each thread's original affinity.
func pinVCPUs(ctx context.Context, q *qmp.Client, n int) (func(), error) {
	threads, err := q.VCPUThreads(ctx)
	if err != nil {
		return nil, err
	}
	return host.PinThreads(threads, n)
}

const steerPeriod = 100 * time.Millisecond

// watchMigration calls f with QEMU's migration state every steerPeriod while the migration is active, until f
// says it is done or ctx ends.
func watchMigration(ctx context.Context, q *qmp.Client, f func(mi qmp.MigrationInfo) (done bool)) {
	t := time.NewTicker(steerPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		mi, err := q.QueryMigrate(ctx)
		if err != nil || !mi.Status.Active() {
			continue
		}
		if f(mi) {
			return
		}
	}
}
