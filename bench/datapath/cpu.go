package datapath

import (
	"syscall"
	"testing"
	"time"
)

// CPU adds up the process's CPU time (user and system, every thread: the code measured, the garbage collector, the
// runtime) over the timed parts of a benchmark. Benchmarks that run their code on one goroutine and nothing else
// meanwhile measure that code's cost per core with it, whatever else the machine runs.
type CPU struct {
	start time.Duration
	total time.Duration
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Start begins a timed part.
func (c *CPU) Start() { c.start = processCPU() }

// Stop ends a timed part.
func (c *CPU) Stop() { c.total += processCPU() - c.start }

// Report reports the benchmark's per-core figure: GB/s of guest RAM per core (GB of 10⁹ bytes, per second of the
// process's CPU time), for ramBytes of guest RAM per iteration; and the cores the process kept busy while timed.
// Call it after the loop.
func (c *CPU) Report(b *testing.B, ramBytes int64, iterations int) {
	if c.total <= 0 || iterations == 0 {
		return
	}
	b.ReportMetric(float64(ramBytes)*float64(iterations)/c.total.Seconds()/1e9, "GB/s/core")
	if wall := b.Elapsed(); wall > 0 {
		b.ReportMetric(c.total.Seconds()/wall.Seconds(), "cores")
	}
}
