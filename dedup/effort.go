package dedup

import "time"

// Effort is how hard CompressPages works on a bundle with zstd. The prime picks it window by window (EffortControl).
type Effort uint8

const (
	// EffortFast is zstd's fastest level: for a link that takes the bundles as fast as they are compressed.
	EffortFast Effort = iota
	// EffortMore is zstd's default level. On the bench's prime (172 MiB of bundles) it sent 2.7% fewer bytes than
	// the fastest level for about 1.8 times its CPU; zstd's next level saved 0.4% more for 1.8 times that again.
	EffortMore
)

func (e Effort) String() string {
	if e == EffortMore {
		return "more"
	}
	return "fast"
}

// EffortControl picks the prime's compression effort from where its time goes. After each window the prime says how
// long it took to prepare the window (read, digest, compress: the CPU's side, wall time, so a busy machine counts)
// and how long it then waited for the link to take bytes (sends blocked on a full socket, a multicast chunk still
// under way). While the waits clearly dominate, the link is the bottleneck and the CPU has time for fewer bytes:
// it takes EffortMore. Once preparing takes longer than the waits, the CPU is the bottleneck again: EffortFast. The
// gap between the two thresholds keeps it from flapping, and the sums decay so that the last few windows decide: a
// multicast group waits only once a chunk, every few windows.
//
// It is a pure state machine: no clock, no I/O.
type EffortControl struct {
	prep, wait float64 // decayed sums of the windows' times, seconds
	effort     Effort
	windows    [2]int // windows prepared at each effort
}

const (
	effortDecay = 0.75 // each window's weight in the sums after the next
	// effortRaise: the waits must exceed the preparation this many times over before the effort goes up; at
	// EffortMore preparing costs about 1.8 times as much, so the waits still exceed it there and it stays.
	effortRaise = 2.0
)

// Effort is the effort for the next window.
func (c *EffortControl) Effort() Effort { return c.effort }

// Observe records one window: prepare is the time it took to prepare, wait the time the prime then waited for the
// link. It returns the effort for the next window.
func (c *EffortControl) Observe(prepare, wait time.Duration) Effort {
	c.windows[c.effort]++
	c.prep = c.prep*effortDecay + prepare.Seconds()
	c.wait = c.wait*effortDecay + wait.Seconds()
	switch {
	case c.effort == EffortFast && c.wait > effortRaise*c.prep:
		c.effort = EffortMore
	case c.effort == EffortMore && c.prep > c.wait:
		c.effort = EffortFast
	}
	return c.effort
}

// Windows says how many windows were prepared at each effort.
func (c *EffortControl) Windows() (fast, more int) {
	return c.windows[EffortFast], c.windows[EffortMore]
}
