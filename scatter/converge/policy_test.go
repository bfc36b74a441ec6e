package converge

import (
	"testing"
	"time"
)

// TestTimeBudget drives the time-bound switch-over decision with samples, no clock and no QEMU.
func TestTimeBudget(t *testing.T) {
	var b TimeBudget
	deadline := 20 * time.Second
	// 6,400 pages/s measured; 25,600 pages left would take 4 s (4.8 s with the margin).
	for i := range 6 {
		b.Observe(int64(i)*640, time.Duration(i+1)*100*time.Millisecond)
	}
	if b.MustSwitch(25600, 10*time.Second, deadline) {
		t.Error("switched at 10 s with 4.8 s of copy left before a 20 s deadline")
	}
	if !b.MustSwitch(25600, 15300*time.Millisecond, deadline) {
		t.Error("did not switch at 15.3 s with 4.8 s of copy left before a 20 s deadline")
	}
	if !b.MustSwitch(0, deadline, deadline) {
		t.Error("did not switch at the deadline")
	}
	// A start-up sample alone decides nothing: one slow first tenth of a second would predict 40 s.
	var early TimeBudget
	early.Observe(0, 100*time.Millisecond)
	early.Observe(64, 200*time.Millisecond)
	if early.MustSwitch(25600, time.Second, deadline) {
		t.Error("switched on a single start-up sample")
	}
	var fresh TimeBudget
	if fresh.MustSwitch(25600, time.Second, deadline) {
		t.Error("switched with no rate measured yet")
	}
}

func TestPolicyValidation(t *testing.T) {
	for _, p := range []Policy{{Kind: "nope"}, {Kind: PolicyTimebound}, {Kind: PolicyTimebound, Deadline: time.Second, Marker: 1.5},
		{Kind: PolicyAutoconverge, ThrottleInitial: 150}} {
		if err := p.Validate(); err == nil {
			t.Errorf("%+v accepted", p)
		}
	}
	p := Policy{Kind: PolicyTimebound, Deadline: time.Minute}
	if err := p.Validate(); err != nil || p.Marker != 0.5 || p.OvercommitCPUs != 1 || p.Downtime != DefaultDowntime {
		t.Errorf("defaults: %+v %v", p, err)
	}
}

// TestSteering feeds the membound and timebound deciders readings, no QEMU and no clock.
func TestSteering(t *testing.T) {
	m := Policy{Kind: PolicyMembound}.Steering()
	if st := m.Observe(Progress{Iterations: 2}); st.SwitchOver {
		t.Error("membound switched during the first dirty pass")
	}
	if st := m.Observe(Progress{Iterations: 3}); !st.SwitchOver {
		t.Error("membound did not switch after one dirty pass")
	}
	if st := m.Observe(Progress{Iterations: 4}); st.SwitchOver {
		t.Error("membound switched twice")
	}
	tb := Policy{Kind: PolicyTimebound, Deadline: 20 * time.Second, Marker: 0.5, OvercommitCPUs: 1}.Steering()
	if st := tb.Observe(Progress{Elapsed: time.Second, Total: 100, Transferred: 10, Iterations: 1}); st.PinVCPUs != 0 || st.SwitchOver {
		t.Errorf("timebound acted before its marker: %+v", st)
	}
	if st := tb.Observe(Progress{Elapsed: 2 * time.Second, Total: 100, Transferred: 60, Iterations: 1}); st.PinVCPUs != 1 {
		t.Errorf("timebound did not pin at its marker: %+v", st)
	}
	if st := tb.Observe(Progress{Elapsed: 3 * time.Second, Total: 100, Transferred: 70, Iterations: 1}); st.PinVCPUs != 0 {
		t.Errorf("timebound pinned twice: %+v", st)
	}
	if st := tb.Observe(Progress{Elapsed: 20 * time.Second, Total: 100, Transferred: 90, Iterations: 2}); !st.SwitchOver {
		t.Errorf("timebound did not switch at its deadline: %+v", st)
	}
	for _, k := range []string{PolicyPrecopy, PolicyAutoconverge} {
		s := Policy{Kind: k}.Steering()
		if st := s.Observe(Progress{Elapsed: time.Hour, Iterations: 9}); st != (Step{}) {
			t.Errorf("%s acted: %+v", k, st)
		}
	}
}
