package scatter

import (
	"testing"
	"time"
)

// TestTimeBudget drives the time-bound switch-over decision with samples, no clock and no QEMU.
func TestTimeBudget(t *testing.T) {
	const mb = 1 << 20
	var b timeBudget
	deadline := 20 * time.Second
	// 25 MB/s measured; 100 MB left would take 4 s (4.8 s with the margin).
	b.observe(0, 100*time.Millisecond)
	b.observe(25*mb, 1100*time.Millisecond)
	if b.mustSwitch(100*mb, 10*time.Second, deadline) {
		t.Error("switched at 10 s with 4.8 s of copy left before a 20 s deadline")
	}
	if !b.mustSwitch(100*mb, 15300*time.Millisecond, deadline) {
		t.Error("did not switch at 15.3 s with 4.8 s of copy left before a 20 s deadline")
	}
	if !b.mustSwitch(0, deadline, deadline) {
		t.Error("did not switch at the deadline")
	}
	var fresh timeBudget
	if fresh.mustSwitch(100*mb, time.Second, deadline) {
		t.Error("switched with no rate measured yet")
	}
}

func TestPolicyValidation(t *testing.T) {
	for _, p := range []Policy{{Kind: "nope"}, {Kind: PolicyTimebound}, {Kind: PolicyTimebound, Deadline: time.Second, Marker: 1.5},
		{Kind: PolicyAutoconverge, ThrottleInitial: 150}} {
		if err := p.validate(); err == nil {
			t.Errorf("%+v accepted", p)
		}
	}
	p := Policy{Kind: PolicyTimebound, Deadline: time.Minute}
	if err := p.validate(); err != nil || p.Marker != 0.5 || p.OvercommitCPUs != 1 || p.Downtime != DefaultDowntime {
		t.Errorf("defaults: %+v %v", p, err)
	}
}
