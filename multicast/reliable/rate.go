package reliable

import (
	"math"
	"time"
)

// Rate control. The sender measures each member's loss (symbols asked for ÷ packets sent) over windows
// of at least Config.RateWindow and minWindow packets, and tells a loss floor (random loss that does not
// depend on the rate) from congestion (loss that grows with the rate) by trying a lower rate:
//
//   - idle: a member whose loss is above its floor by more than noise (1.5 × floor + 2 points + 3 standard
//     deviations of a window's loss) in two windows in a row starts a probe: the rate drops to 0.75×.
//     Otherwise the rate climbs by a twentieth of the maximum, at most once per feedback delay (the
//     largest lag from a block sent to its NAK), and each member's floor follows its loss (EWMA, 1/8).
//   - settling: packets sent before the cut are still being asked for (a block is asked for once wholly
//     sent, and a slow receiver's queue delays it), so the loss of the next Block + 32 packets, and of
//     one and a half times the lag from a block sent to its NAK (the largest of the probed members), is
//     not counted.
//   - judging: over the next window, congestion shows as a loss that fell (by three standard deviations), or
//     as a member that received as many packets per second as before the cut (a receiver that takes no
//     more). Either keeps the cut. A loss that stayed where it was, on fewer packets received, is a floor:
//     the member's floor becomes that loss and the rate goes back to where it was.
//
// So the slowest receiver governs, a stationary random loss costs one probe instead of a rate at the
// floor, and a receiver that stays above Config.SlowLoss is dropped (see adaptRate).

type probeState uint8

const (
	idle probeState = iota
	settling
	judging
)

type probe struct {
	state probeState
	from  float64 // rate before the cut
	pps   float64 // packets per second sent in the window that started it
	lag   time.Duration
	// changed is when the rate last changed.
	changed time.Time
}

// minWindow is the fewest packets a loss is measured over: two blocks and the reorder tolerance, since
// members ask for a block's symbols at once.
func (s *Sender) minWindow() uint64 { return uint64(2*s.cfg.Block + reorderChunks) }

// noise is the standard deviation of a loss fraction p measured over n packets (p at least 1%).
func noise(p float64, n float64) float64 {
	p = min(max(p, 0.01), 0.99)
	return math.Sqrt(p * (1 - p) / n)
}

func (s *Sender) adaptRate(now time.Time) {
	need := s.minWindow()
	if s.probe.state == settling {
		need = uint64(s.cfg.Block + reorderChunks)
	}
	dur := now.Sub(s.winStart)
	if s.winSent < need && dur < 10*s.cfg.RateWindow {
		return // too little traffic to judge; widen the window
	}
	if s.probe.state == settling && dur < s.probe.lag*3/2 {
		return
	}
	for _, r := range s.rx {
		if r.winLag > 0 {
			r.lag, r.winLag = r.winLag, 0
		}
	}
	sent := float64(max(s.winSent, 1))
	pps := sent / max(dur.Seconds(), 1e-6)
	s.winStart = now
	s.winSent = 0
	if s.probe.state == settling {
		for _, r := range s.rx {
			r.loss = 0
		}
		s.probe.state = judging
		return
	}
	hot, responded, probed := false, false, false
	for id, r := range s.rx {
		if r.dropped {
			continue
		}
		f := min(float64(r.loss)/sent, 1)
		r.loss = 0
		if f > s.cfg.SlowLoss && sent >= 32 {
			if r.slowSince.IsZero() {
				r.slowSince = now
			} else if now.Sub(r.slowSince) >= s.cfg.SlowAfter {
				s.drop(now, id)
				continue
			}
		} else {
			r.slowSince = time.Time{}
		}
		switch s.probe.state {
		case idle:
			r.trigger = 0
			if f > 1.5*r.floor+0.02+3*noise(r.floor, sent) {
				// Above the floor for two windows in a row: a steady loss, worth a probe.
				if r.hot++; r.hot >= 2 {
					r.trigger, hot = f, true
				}
			} else {
				r.hot = 0
				r.floor += (f - r.floor) / 8
			}
		case judging:
			if r.trigger == 0 {
				continue
			}
			probed = true
			fell := f < r.trigger-3*math.Sqrt2*noise((f+r.trigger)/2, sent)
			kept := (1-f)*pps >= 0.875*(1-r.trigger)*s.probe.pps
			if fell || kept {
				responded = true
			} else {
				r.floor = max(r.floor, f)
			}
			r.trigger, r.hot = 0, 0
		}
	}
	switch {
	case s.probe.state == judging:
		s.probe.state = idle
		if probed && !responded {
			s.rate = s.probe.from // the loss did not depend on the rate
			s.stats.RateUndos++
		}
	case hot:
		s.probe = probe{state: settling, from: s.rate, pps: pps, changed: s.probe.changed}
		for _, r := range s.rx {
			if r.trigger > 0 {
				s.probe.lag = max(s.probe.lag, r.lag)
			}
		}
		s.rate = max(s.rate*0.75, float64(s.cfg.MinRateBps))
		s.stats.RateCuts++
	default:
		// Climb at most once per feedback delay, so that a rise is judged before the next.
		lag := time.Duration(0)
		for _, r := range s.rx {
			if !r.dropped {
				lag = max(lag, r.lag)
			}
		}
		if now.Sub(s.probe.changed) >= lag {
			s.rate = min(s.rate+float64(s.cfg.RateBps)/20, float64(s.cfg.RateBps))
			s.probe.changed = now
		}
		return
	}
	s.probe.changed = now
}
