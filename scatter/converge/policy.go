package converge

import (
	"fmt"
	"time"
)

// Policy is a convergence policy: how QEMU is steered to switch a VM over.
//
//   - precopy: QEMU's pre-copy; it switches over once the rest fits in Downtime at the measured rate.
//   - autoconverge: pre-copy plus QEMU's vCPU throttling while dirtying outruns the link (Jin et al. 2011).
//   - timebound: finish within Deadline, counted from the start of the run (`send`), the prime included. Once the
//     first pass passes Marker (a fraction of RAM sent), the VM's vCPU threads are pinned onto OvercommitCPUs host
//     CPUs to slow dirtying (Chanchio's TLM); where pinning cannot help (a VM with no more vCPUs than
//     OvercommitCPUs) QEMU's throttle slows them instead (ThrottlesVCPUs). It switches over when the rest would
//     no longer fit before the deadline, or as soon as a pass's dirty set stops shrinking (Steering.timebound).
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

// Name is the policy's name for reports.
func (p Policy) Name() string {
	if p.Kind == "" {
		return PolicyPrecopy
	}
	return p.Kind
}

func (p *Policy) Validate() error {
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

// Capabilities are the source's migration capabilities for this policy, for a VM whose vCPU count is unknown.
func (p Policy) Capabilities() map[string]bool { return p.CapabilitiesFor(0) }

// CapabilitiesFor are the source's migration capabilities for this policy, for a VM of vcpus vCPUs (0: unknown).
// Everything the stream codec refuses stays off; the destination gets the ones it must share.
func (p Policy) CapabilitiesFor(vcpus int) map[string]bool {
	return map[string]bool{"auto-converge": p.ThrottlesVCPUs(vcpus), "events": true}
}

// Timebound's throttle steps. QEMU 7.2 counts the dirty-bitmap syncs (one per pass) that find the guest dirtying
// more than half of what it sent since the previous one, and at every second such sync sets the throttle to
// cpu-throttle-initial, then raises it by the increment, up to max-cpu-throttle (99). For a hot guest behind a
// prime, that is the start of its third dirty pass, with room for a pass or two before the deadline. Only the last
// step slows a guest that outruns the link many times over (at 60% a guest dirtying 16 times what the link sends
// still re-dirties its whole working set each pass), and a pass under a lighter step is a pass of the hot set
// re-sent for nothing: so timebound's first step is the last, 99%. Measured on the bench's hot guest (one vCPU,
// 24 MiB dirtied at 12,000 pages/s, 24 Mbit/s): docs/benchmarks.md.
const (
	TimeboundThrottleInitial   = 99
	TimeboundThrottleIncrement = 1
)

// ThrottlesVCPUs reports whether QEMU's vCPU throttle (the auto-converge capability, which must be set before
// `migrate`) is on for a VM of vcpus vCPUs. autoconverge: always. timebound: when over-committing cannot slow the
// guest, that is when it has no more vCPUs than OvercommitCPUs (one vCPU pinned onto one host CPU still runs at
// full speed), or when the count is unknown (0), since the deadline is the promise. Otherwise timebound pins and
// leaves the throttle off: pinning slows the guest only as much as the host CPUs it shares, while timebound's
// throttle stalls every vCPU for 99% of its time until the end.
func (p Policy) ThrottlesVCPUs(vcpus int) bool {
	switch p.Kind {
	case PolicyAutoconverge:
		return true
	case PolicyTimebound:
		return vcpus <= max(1, p.OvercommitCPUs)
	}
	return false
}

// Throttle is the throttle's first step and increment, percent, when ThrottlesVCPUs.
func (p Policy) Throttle() (initial, increment int) {
	if p.Kind == PolicyTimebound {
		return TimeboundThrottleInitial, TimeboundThrottleIncrement
	}
	return p.ThrottleInitial, p.ThrottleIncrement
}

// QEMUMaxBandwidth is the max-bandwidth QEMU gets for the user's --max-bandwidth (bytes/s; 0: none): with none,
// vmscatter's link governs, not QEMU's default 128 MiB/s cap.
func QEMUMaxBandwidth(user int64) int64 {
	if user <= 0 {
		return 1 << 40
	}
	return user
}
