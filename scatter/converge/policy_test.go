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

// The deadline counts from the start of the run: a migration that starts 30 s into a 40 s deadline (after the
// prime) has 10 s, not 40.
func TestTimeboundDeadlineFromRunStart(t *testing.T) {
	tb := Policy{Kind: PolicyTimebound, Deadline: 40 * time.Second, Marker: 0.5, OvercommitCPUs: 1}.Steering()
	const page = 4096
	// 6,400 pages/s; the first pass's set is 25,600 pages: 4 s to copy, 4.8 s with the margin.
	at := 30 * time.Second
	var st Step
	for i := range 20 {
		at += 100 * time.Millisecond
		st = tb.Observe(Progress{Elapsed: at, PagesSent: int64(i) * 640, Remaining: 25600 * page, Total: 400 << 20,
			Transferred: int64(i) * 640 * page, Iterations: 1, PageSize: page})
		if st.SwitchOver {
			break
		}
	}
	if st.SwitchOver {
		t.Fatalf("switched at %v, before 40 s − 4.8 s", at)
	}
	for at < 36*time.Second && !st.SwitchOver {
		at += 100 * time.Millisecond
		st = tb.Observe(Progress{Elapsed: at, PagesSent: int64(at/(100*time.Millisecond)) * 640, Remaining: 25600 * page,
			Total: 400 << 20, Iterations: 1, PageSize: page})
	}
	if !st.SwitchOver || at < 35*time.Second {
		t.Fatalf("switch-over at %v (%+v), want at 35.2 s of the run", at, st)
	}
}

// Passes whose dirty sets stop shrinking: timebound switches over at the start of the first pass that would re-send
// the hot set, long before its deadline; shrinking ones go on.
func TestTimeboundNonConvergence(t *testing.T) {
	const mib = 1 << 20
	type pass struct {
		remaining int64 // at the pass's start
		throttle  int
		want      bool // switch-over at its start
	}
	for _, tc := range []struct {
		name         string
		autoConverge bool
		passes       []pass
	}{
		{"shrinking", false, []pass{{128 * mib, 0, false}, {40 * mib, 0, false}, {20 * mib, 0, false}, {8 * mib, 0, false}}},
		{"hot set", false, []pass{{128 * mib, 0, false}, {40 * mib, 0, false}, {39 * mib, 0, true}}},
		{"shrinking by less than the margin", false, []pass{{128 * mib, 0, false}, {40 * mib, 0, false}, {37 * mib, 0, true}}},
		{"all of RAM hot", false, []pass{{128 * mib, 0, false}, {128 * mib, 0, true}}},
		// The throttle's capability is on: up to two passes wait for QEMU to throttle; the pass at whose start it
		// rose was dirtied before it and gets its chance; a pass dirtied under it that does not shrink switches over.
		{"throttle waited for, bites", true, []pass{{128 * mib, 0, false}, {40 * mib, 0, false}, {40 * mib, 0, false},
			{40 * mib, 99, false}, {4 * mib, 99, false}, {1 * mib, 99, false}}},
		{"throttle waited for, does not help", true, []pass{{128 * mib, 0, false}, {40 * mib, 0, false}, {40 * mib, 0, false},
			{40 * mib, 99, false}, {40 * mib, 99, true}}},
		{"throttle never comes", true, []pass{{128 * mib, 0, false}, {40 * mib, 0, false}, {40 * mib, 0, false},
			{40 * mib, 0, false}, {40 * mib, 0, true}}},
		{"throttle rises step by step", true, []pass{{128 * mib, 0, false}, {40 * mib, 0, false}, {40 * mib, 60, false},
			{40 * mib, 60, true}}},
	} {
		tb := Policy{Kind: PolicyTimebound, Deadline: time.Hour, Marker: 0.5, OvercommitCPUs: 1}.Steering()
		at := time.Duration(0)
		for i, p := range tc.passes {
			// The pass's first reading, then one later in the pass with less remaining.
			for j, rem := range []int64{p.remaining, p.remaining / 2} {
				at += time.Second
				st := tb.Observe(Progress{Elapsed: at, Remaining: rem, Total: 128 * mib, Iterations: int64(i + 1), PageSize: 4096,
					Throttle: p.throttle, AutoConverge: tc.autoConverge})
				want := j == 0 && p.want
				if st.SwitchOver != want {
					t.Errorf("%s: pass %d reading %d: switch-over %v, want %v (%s)", tc.name, i+1, j, st.SwitchOver, want, st.Reason)
				}
				if st.SwitchOver {
					break
				}
			}
		}
	}
}

// Where pinning cannot slow the guest, timebound throttles through QEMU's auto-converge, with its own steps.
func TestThrottlesVCPUs(t *testing.T) {
	tb := Policy{Kind: PolicyTimebound, Deadline: time.Minute}
	if err := tb.Validate(); err != nil {
		t.Fatal(err)
	}
	tb4 := tb
	tb4.OvercommitCPUs = 4
	for _, tc := range []struct {
		p     Policy
		vcpus int
		want  bool
	}{
		{tb, 1, true}, {tb, 2, false}, {tb, 0, true}, {tb4, 4, true}, {tb4, 6, false},
		{Policy{Kind: PolicyAutoconverge}, 4, true}, {Policy{Kind: PolicyPrecopy}, 1, false}, {Policy{Kind: PolicyMembound}, 1, false},
	} {
		if got := tc.p.ThrottlesVCPUs(tc.vcpus); got != tc.want || tc.p.CapabilitiesFor(tc.vcpus)["auto-converge"] != tc.want {
			t.Errorf("%s, overcommit %d, %d vCPUs: throttle %v, want %v", tc.p.Kind, tc.p.OvercommitCPUs, tc.vcpus, got, tc.want)
		}
	}
	if i, n := tb.Throttle(); i != TimeboundThrottleInitial || n != TimeboundThrottleIncrement {
		t.Errorf("timebound's throttle steps: %d, %d", i, n)
	}
	if i, n := (Policy{Kind: PolicyAutoconverge, ThrottleInitial: 20, ThrottleIncrement: 10}).Throttle(); i != 20 || n != 10 {
		t.Errorf("autoconverge's throttle steps: %d, %d", i, n)
	}
}
