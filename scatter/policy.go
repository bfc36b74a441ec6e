package scatter

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/vmscatter/vmscatter/qemu/qmp"
	"golang.org/x/sys/unix"
)

// Policy is a convergence policy: how QEMU is steered to switch a VM over.
//
//   - precopy: QEMU's pre-copy; it switches over once the rest fits in Downtime at the measured rate.
//   - autoconverge: pre-copy plus QEMU's vCPU throttling while dirtying outruns the link (Jin et al. 2011).
//   - timebound: finish within Deadline. Once the first pass passes Marker (a fraction of RAM sent), the VM's vCPU
//     threads are pinned onto OvercommitCPUs host CPUs to slow dirtying (Chanchio's TLM); at the deadline the
//     switch-over is forced.
//   - membound: send all memory once, then one dirty pass, then switch over whatever remains (MPLM, Chanchio &
//     Yaothanee 2018), unless QEMU converges under the downtime limit before that.
type Policy struct {
	Kind              string
	Downtime          time.Duration
	ThrottleInitial   int // autoconverge: cpu-throttle-initial, percent
	ThrottleIncrement int // autoconverge: cpu-throttle-increment, percent
	Deadline          time.Duration
	Marker            float64
	OvercommitCPUs    int
}

// Policy kinds.
const (
	PolicyPrecopy      = "precopy"
	PolicyAutoconverge = "autoconverge"
	PolicyTimebound    = "timebound"
	PolicyMembound     = "membound"
)

// DefaultDowntime is QEMU-precopy's downtime limit unless --downtime says otherwise.
const DefaultDowntime = 300 * time.Millisecond

// switchOver forces the switch-over now: the VM stops, and QEMU's migration sends what is left, then completes
// (with downtime-limit at 1 ms it completes only once nothing is left). This is MPLM's "stop and send the dirty
// rest". Raising downtime-limit instead would leave the moment to QEMU's next estimate; under TCG that path also
// loses guest writes in QEMU 7.2 (bench/tcg_artifact_test.go). The time of the stop is recorded, because QEMU's own
// downtime figure does not see a stop it did not make.
func switchOver(q *qmp.Client, stopped func(time.Time)) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	at := time.Now()
	if err := q.Execute(ctx, "stop", nil, nil); err == nil && stopped != nil {
		stopped(at)
	}
}

// Name is the policy's name for reports.
func (p Policy) Name() string {
	if p.Kind == "" {
		return PolicyPrecopy
	}
	return p.Kind
}

func (p *Policy) validate() error {
	if p.Kind == "" {
		p.Kind = PolicyPrecopy
	}
	if p.Downtime == 0 {
		p.Downtime = DefaultDowntime
	}
	switch p.Kind {
	case PolicyPrecopy:
	case PolicyAutoconverge:
		if p.ThrottleInitial == 0 {
			p.ThrottleInitial = 20
		}
		if p.ThrottleIncrement == 0 {
			p.ThrottleIncrement = 10
		}
		if p.ThrottleInitial < 1 || p.ThrottleInitial > 99 || p.ThrottleIncrement < 1 || p.ThrottleIncrement > 99 {
			return fmt.Errorf("throttle percentages must be within 1..99 (got initial %d, increment %d)", p.ThrottleInitial, p.ThrottleIncrement)
		}
	case PolicyTimebound:
		if p.Deadline <= 0 {
			return fmt.Errorf("policy timebound needs --deadline (e.g. --deadline 60s)")
		}
		if p.Marker == 0 {
			p.Marker = 0.5
		}
		if p.Marker <= 0 || p.Marker >= 1 {
			return fmt.Errorf("--marker must be between 0 and 1 (got %v)", p.Marker)
		}
		if p.OvercommitCPUs == 0 {
			p.OvercommitCPUs = 1
		}
		if p.OvercommitCPUs < 0 {
			return fmt.Errorf("--overcommit-cpus must be positive")
		}
	case PolicyMembound:
	default:
		return fmt.Errorf("unknown policy %q: use precopy, autoconverge, timebound or membound", p.Kind)
	}
	return nil
}

// capabilities are the source's migration capabilities for this policy. Everything the stream codec refuses stays
// off; the destination gets the ones it must share.
func (p Policy) capabilities() map[string]bool {
	return map[string]bool{"auto-converge": p.Kind == PolicyAutoconverge, "events": true}
}

// qemuMaxBandwidth is the max-bandwidth QEMU gets for the user's --max-bandwidth (bytes/s; 0: none): with none,
// vmscatter's link governs, not QEMU's default 128 MiB/s cap.
func qemuMaxBandwidth(user int64) int64 {
	if user <= 0 {
		return 1 << 40
	}
	return user
}

// apply sets the source's capabilities and parameters before `migrate`.
// downtime is the limit QEMU starts with (the downtime guard's first value, startingDowntime).
func (p Policy) apply(ctx context.Context, q *qmp.Client, caps map[string]bool, maxBandwidth int64, downtime time.Duration) error {
	if err := q.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": capabilityList(caps)}, nil); err != nil {
		return err
	}
	// Every policy keeps QEMU's own switch-over at the downtime limit, as the downtime guard (downtime.go) translates
	// it to QEMU's view of the link: when the rest fits, finishing early is as good for timebound and membound as
	// for precopy. Their steering forces the switch-over when QEMU does not converge. (A 1 ms limit for the whole
	// migration, which would leave the moment to the steering alone, makes QEMU sync its dirty bitmap many times in
	// quick succession, and under TCG every sync can lose guest writes.)
	params := map[string]any{"downtime-limit": max(1, downtime.Milliseconds()), "max-bandwidth": qemuMaxBandwidth(maxBandwidth)}
	if p.Kind == PolicyAutoconverge {
		params["cpu-throttle-initial"] = p.ThrottleInitial
		params["cpu-throttle-increment"] = p.ThrottleIncrement
	}
	return q.Execute(ctx, "migrate-set-parameters", params, nil)
}

// steer runs beside a migration until ctx ends, for the policies that act during it.
// stopped is called with the time vmscatter stopped the VM itself, if it did.
func (p Policy) steer(ctx context.Context, q *qmp.Client, log *slog.Logger, stopped func(time.Time)) {
	switch p.Kind {
	case PolicyTimebound:
		p.steerTimebound(ctx, q, log, stopped)
	case PolicyMembound:
		p.steerMembound(ctx, q, log, stopped)
	}
}

const steerPeriod = 100 * time.Millisecond

// watchMigration calls f with QEMU's migration state every steerPeriod while the migration is active, until f
// says it is done or ctx ends.
func watchMigration(ctx context.Context, q *qmp.Client, f func(mi migrateInfo) (done bool)) {
	t := time.NewTicker(steerPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var mi migrateInfo
		if q.Execute(ctx, "query-migrate", nil, &mi) != nil || !migrationActive(mi.Status) {
			continue
		}
		if f(mi) {
			return
		}
	}
}

func (p Policy) steerMembound(ctx context.Context, q *qmp.Client, log *slog.Logger, stopped func(time.Time)) {
	watchMigration(ctx, q, func(mi migrateInfo) bool {
		// dirty-sync-count is 1 during the first pass, 2 during the first dirty pass; at 3 both are done.
		if mi.RAM.Iterations < 3 {
			return false
		}
		log.Info("membound: full pass and one dirty pass done, switching over", "remaining", mi.RAM.Remaining)
		switchOver(q, stopped)
		return true
	})
}

func (p Policy) steerTimebound(ctx context.Context, q *qmp.Client, log *slog.Logger, stopped func(time.Time)) {
	start := time.Now()
	var restore func()
	defer func() {
		if restore != nil && ctx.Err() != nil {
			// Only a migration that did not finish runs on here; give its vCPUs their CPUs back.
			restore()
		}
	}()
	var tb timeBudget
	var pass, passSize int64
	watchMigration(ctx, q, func(mi migrateInfo) bool {
		pageSize := mi.RAM.PageSize
		if pageSize <= 0 {
			pageSize = 4096
		}
		tb.observe(mi.RAM.Normal+mi.RAM.Duplicate, time.Since(start))
		if mi.RAM.Iterations != pass {
			// A pass starts just after QEMU synced its dirty bitmap: what remains then is the dirty set, which is
			// what a stop will have to send; during the pass `remaining` shrinks and would underestimate it.
			pass, passSize = mi.RAM.Iterations, mi.RAM.Remaining
		}
		if tb.mustSwitch(max(mi.RAM.Remaining, passSize)/pageSize, time.Since(start), p.Deadline) {
			log.Info("timebound: switching over so that the rest fits before the deadline", "remaining", mi.RAM.Remaining,
				"elapsed", time.Since(start).Round(time.Millisecond), "pages_per_s", int64(tb.rate))
			switchOver(q, stopped)
			return true
		}
		if restore == nil && mi.RAM.Total > 0 && (float64(mi.RAM.Transferred)/float64(mi.RAM.Total) >= p.Marker || mi.RAM.Iterations >= 2) {
			r, err := pinVCPUs(ctx, q, p.OvercommitCPUs)
			if err != nil {
				log.Warn("timebound: pinning vCPUs failed", "err", err)
				restore = func() {}
				return false
			}
			log.Info("timebound: marker passed, vCPUs over-committed", "cpus", p.OvercommitCPUs)
			restore = r
		}
		return false
	})
}

// timeBudget decides when a time-bound migration must switch over: when the time already spent plus the time to
// send what remains, at the rate measured so far (with a margin), reaches the deadline. It is pure: it learns
// from the samples it is given. Its unit is pages, not bytes: QEMU's `remaining` counts every page at full size,
// and a zero page, which QEMU sends as a flag, would make a byte rate taken over a stretch of literals
// overestimate the rest several times over (measured: a 256 MiB guest stopped 2 s into its first pass, and then
// 8.9 s of downtime while the rest of that pass went out).
type timeBudget struct {
	samples   int
	lastPages int64
	lastAt    time.Duration
	rate      float64 // pages per second, smoothed
}

// switchMargin pads the estimated stop-and-copy time: the last pass also carries device state and the start-up
// of the destination.
const switchMargin = 1.2

// minBudgetSamples is how many rate samples (one per steerPeriod) the budget takes before it decides anything but
// the deadline itself: the first ones see a migration still starting up.
const minBudgetSamples = 5

func (b *timeBudget) observe(pages int64, at time.Duration) {
	if at > b.lastAt && pages >= b.lastPages && b.lastAt > 0 {
		r := float64(pages-b.lastPages) / (at - b.lastAt).Seconds()
		if b.rate == 0 {
			b.rate = r
		} else {
			b.rate = 0.7*b.rate + 0.3*r
		}
		b.samples++
	}
	b.lastPages, b.lastAt = pages, at
}

// mustSwitch reports whether a migration with remaining pages still to send must stop now to finish by deadline.
func (b *timeBudget) mustSwitch(remaining int64, elapsed, deadline time.Duration) bool {
	if elapsed >= deadline {
		return true
	}
	if b.rate <= 0 || b.samples < minBudgetSamples {
		return false
	}
	copyTime := time.Duration(switchMargin * float64(remaining) / b.rate * float64(time.Second))
	return elapsed+copyTime >= deadline
}

// pinVCPUs pins every vCPU thread of the VM onto the first n CPUs it may use, and returns a function that
// restores each thread's original affinity.
func pinVCPUs(ctx context.Context, q *qmp.Client, n int) (func(), error) {
	var cpus []struct {
		Thread int `json:"thread-id"`
	}
	if err := q.Execute(ctx, "query-cpus-fast", nil, &cpus); err != nil {
		return nil, err
	}
	var saved []unix.CPUSet
	var tids []int
	for _, c := range cpus {
		var orig unix.CPUSet
		if err := unix.SchedGetaffinity(c.Thread, &orig); err != nil {
			return nil, fmt.Errorf("affinity of vCPU thread %d: %w", c.Thread, err)
		}
		var set unix.CPUSet
		k := 0
		for cpu := 0; cpu < 1024 && k < n; cpu++ {
			if orig.IsSet(cpu) {
				set.Set(cpu)
				k++
			}
		}
		if err := unix.SchedSetaffinity(c.Thread, &set); err != nil {
			return nil, fmt.Errorf("pinning vCPU thread %d: %w", c.Thread, err)
		}
		saved = append(saved, orig)
		tids = append(tids, c.Thread)
	}
	return func() {
		for i, tid := range tids {
			_ = unix.SchedSetaffinity(tid, &saved[i])
		}
	}, nil
}
