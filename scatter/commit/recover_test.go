package commit

import "testing"

// allSituations enumerates every Situation recover can meet for epoch 7: every journal phase on each side
// (the receiver's also of epoch 6 and 8, or unknown), every observed QEMU state, both starting states.
func allSituations() []Situation {
	var out []Situation
	for _, sp := range Phases {
		for _, dp := range Phases {
			for _, de := range []uint64{6, 7, 8} {
				for _, known := range []bool{true, false} {
					if !known && (dp != Begin || de != 7) {
						continue
					}
					for sn := SourceGone; sn <= SourceMigrating; sn++ {
						for dn := DestUnknown; dn <= DestRunning; dn++ {
							for _, ran := range []bool{true, false} {
								s := Situation{Source: Entry{sp, 7}, WasRunning: ran, SourceNow: sn, DestKnown: known, DestNow: dn}
								if known {
									s.Dest = Entry{dp, de}
								}
								out = append(out, s)
							}
						}
					}
				}
			}
		}
	}
	return out
}

func destPhaseOf(s Situation) Phase {
	if s.DestKnown && s.Dest.Epoch == s.Source.Epoch {
		return s.Dest.Phase
	}
	return Begin
}

// checkPlan states what a plan must never do, whatever the situation.
func checkPlan(t *testing.T, s Situation, p Plan) {
	t.Helper()
	dst := destPhaseOf(s)
	startDecided := s.Source.Phase == Finish || s.Source.Phase == Confirm || s.Source.Phase == Committed
	mayHaveRun := s.DestNow == DestRunning || dst == Finish || dst == Confirm || dst == Committed
	fail := func(why string) { t.Fatalf("%+v: %v: %s", s, p, why) }
	if (p.Verdict == Act) != (p.Fix != NoFix) {
		fail("a fix without Act, or Act without a fix")
	}
	switch p.Fix {
	case FixStartDest:
		if s.SourceNow == SourceRunning {
			fail("starts the destination while the source runs")
		}
		if !startDecided && !mayHaveRun {
			fail("starts a destination no START was decided for")
		}
		if s.DestNow != DestPaused {
			fail("starts a destination that is not there, paused")
		}
	case FixTearDownDest:
		if mayHaveRun {
			fail("tears down a destination that may have run")
		}
	case FixResumeSource:
		if mayHaveRun || s.DestNow == DestPaused || s.DestNow == DestRunning {
			fail("resumes the source beside a destination copy")
		}
		if s.WasRunning && s.SourceNow == SourcePaused {
			if s.DestNow != DestGone {
				fail("resumes the source before the destination is confirmed gone")
			}
			if s.DestKnown && dst != Begin && dst != RolledBack {
				fail("resumes the source before the receiver resolved the epoch to it")
			}
			if !s.DestKnown && startDecided {
				fail("resumes the source after START, with the receiver's journal unknown")
			}
		}
	case FixQuitSource:
		live := s.DestNow == DestRunning || (s.DestNow == DestPaused && !s.WasRunning && (dst == Finish || dst == Committed))
		if !live {
			fail("quits the source before the destination's copy is the VM")
		}
	}
	if p.Verdict == Resolved && s.Source.Phase != Begin {
		srcCopy := s.SourceNow != SourceGone
		dstCopy := s.DestNow == DestPaused || s.DestNow == DestRunning
		if srcCopy == dstCopy {
			fail("resolved without exactly one copy")
		}
		if s.WasRunning && s.SourceNow != SourceRunning && s.DestNow != DestRunning {
			fail("resolved with a VM that ran before not running")
		}
	}
}

// fixEffect is what a fix does to the situation when it succeeds.
func fixEffect(s *Situation, f Fix) {
	e := s.Source.Epoch
	switch f {
	case FixCancelSource:
		s.SourceNow = SourcePaused
	case FixTearDownDest:
		s.DestKnown, s.Dest, s.DestNow = true, Entry{RolledBack, e}, DestGone
	case FixResumeSource:
		s.Source = Entry{RolledBack, e}
		if s.WasRunning && s.SourceNow == SourcePaused {
			s.SourceNow = SourceRunning
		}
	case FixStartDest:
		if p := destPhaseOf(*s); p != Finish && p != Committed {
			s.DestKnown, s.Dest = true, Entry{Finish, e}
		}
		if s.WasRunning {
			s.DestNow = DestRunning
		}
	case FixQuitSource:
		if s.Source.Phase != Committed {
			s.Source = Entry{Confirm, e}
		}
		s.SourceNow = SourceGone
	case FixMarkCommitted:
		s.Source, s.Dest, s.DestKnown = Entry{Committed, e}, Entry{Committed, e}, true
	}
}

// TestDecideIsSafe runs recover's loop from every situation: no plan ever does what checkPlan forbids, and the
// loop ends (Resolved, Wait or Manual) within a few steps.
func TestDecideIsSafe(t *testing.T) {
	counts := map[Verdict]int{}
	for _, s0 := range allSituations() {
		s := s0
		for step := 0; ; step++ {
			if step == 8 {
				t.Fatalf("%+v: recover does not settle", s0)
			}
			p := Decide(s)
			checkPlan(t, s, p)
			if p.Verdict != Act {
				counts[p.Verdict]++
				break
			}
			fixEffect(&s, p.Fix)
		}
	}
	t.Logf("situations ending resolved %d, wait %d, manual %d", counts[Resolved], counts[Wait], counts[Manual])
}
