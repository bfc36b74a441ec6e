package main

import "math"

// sweep is a verification cursor: it walks n items round and round at a rate in items per second, its credit
// capped at one period's worth so that a guest that was stopped (a migration's downtime) does not catch up in a
// burst. The working set, the disk's blocks and the cached blocks each have one.
type sweep struct {
	vcredit  float64
	vcursor  int    // next item to verify
	verified uint64 // since the last line
	pass     uint64 // full passes since start
}

// advanceSweep visits the items due after dt seconds and returns the sum of what visit returned (failures).
func (s *sweep) advanceSweep(dt, rate, period float64, n int, visit func(i int) uint64) uint64 {
	var bad uint64
	s.vcredit = math.Min(s.vcredit+dt*rate, math.Max(1, rate*period))
	for ; s.vcredit >= 1; s.vcredit-- {
		bad += visit(s.vcursor)
		s.verified++
		s.vcursor++
		if s.vcursor == n {
			s.vcursor = 0
			s.pass++
		}
	}
	return bad
}
