package scatter

import (
	"testing"
	"time"
)

// TestTimeBudget drives the time-bound switch-over decision with samples, no clock and no QEMU.
func TestTimeBudget(t *testing.T) {
	var b timeBudget
	deadline := 20 * time.Second
	// 6,400 pages/s measured; 25,600 pages left would take 4 s (4.8 s with the margin).
	for i := range 6 {
		b.observe(int64(i)*640, time.Duration(i+1)*100*time.Millisecond)
	}
	if b.mustSwitch(25600, 10*time.Second, deadline) {
		t.Error("switched at 10 s with 4.8 s of copy left before a 20 s deadline")
	}
	if !b.mustSwitch(25600, 15300*time.Millisecond, deadline) {
		t.Error("did not switch at 15.3 s with 4.8 s of copy left before a 20 s deadline")
	}
	if !b.mustSwitch(0, deadline, deadline) {
		t.Error("did not switch at the deadline")
	}
	// A start-up sample alone decides nothing: one slow first tenth of a second would predict 40 s.
	var early timeBudget
	early.observe(0, 100*time.Millisecond)
	early.observe(64, 200*time.Millisecond)
	if early.mustSwitch(25600, time.Second, deadline) {
		t.Error("switched on a single start-up sample")
	}
	var fresh timeBudget
	if fresh.mustSwitch(25600, time.Second, deadline) {
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
