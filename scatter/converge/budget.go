package converge

import "time"

// TimeBudget decides when a time-bound migration must switch over: when the time already spent plus the time to
// send what remains, at the rate measured so far (with a margin), reaches the deadline. It is pure: it learns
// from the samples it is given. Its unit is pages, not bytes: QEMU's `remaining` counts every page at full size,
// and a zero page, which QEMU sends as a flag, would make a byte rate taken over a stretch of literals
// overestimate the rest several times over (measured: a 256 MiB guest stopped 2 s into its first pass, and then
// 8.9 s of downtime while the rest of that pass went out).
type TimeBudget struct {
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

func (b *TimeBudget) Observe(pages int64, at time.Duration) {
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

// MustSwitch reports whether a migration with remaining pages still to send must stop now to finish by deadline.
func (b *TimeBudget) MustSwitch(remaining int64, elapsed, deadline time.Duration) bool {
	if elapsed >= deadline {
		return true
	}
	if b.rate <= 0 || b.samples < minBudgetSamples {
		return false
	}
	copyTime := time.Duration(switchMargin * float64(remaining) / b.rate * float64(time.Second))
	return elapsed+copyTime >= deadline
}
