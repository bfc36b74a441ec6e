package commit

import (
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"testing"
)

// The property test. A world holds both machines, a model of each QEMU (as QEMU 7.2 behaves: it resumes after a
// failed or cancelled migration only a VM it stopped itself; `cont` is refused in finish-migrate), both journals,
// and a network that drops, delays, reorders and duplicates frames, and breaks the connection. Either process may
// crash, also between the actions of one step; the sender stays dead (`vmscatter recover` takes over), the
// receiver restarts from its journal. Seeded random choices drive it; then, with the faults off, the world runs
// until every live machine is terminal (the drivers' timeouts firing), and then recover runs Decide to the end.
//
// Checked: the VM never runs on both sides at once; the destination starts only after the sender journaled
// Finish; the source is resumed only once the destination is gone, and never in finish-migrate; a destination
// that ran is never killed; every live machine ends terminal with one report; a run with no crash and nothing
// Unresolved needs no recovery; recover always reaches exactly one copy (running if the VM ran before), and it
// agrees with every outcome already reported; frames still in flight after recover start nothing.

const modelEpoch = 7

type srcVM struct {
	run          string // running paused finish post gone
	mig          string // none active completed failed cancelled
	stoppedByMig bool   // QEMU stopped the VM for the switch-over, and resumes it if the migration fails
	needSettle   bool   // an end status was reported: the runstate follows once the VM leaves finish-migrate
}

type msg struct {
	toDest bool
	ev     Event
}

type world struct {
	t          *testing.T
	rng        *rand.Rand
	trace      []string
	faults     bool
	faultRate  float64 // the chance that the next move is a fault, for this run
	wasRunning bool
	seen       outcomes
	final      bool // recover is done: late frames only
	// A double fault no journal can see through: the destination QEMU died while loaded, and the receiver
	// crashed after it journaled Finish (it may have run `cont` before it died: recover cannot know).
	destDied, rcvCrashedInFinish bool

	src      *Source
	srcAlive bool
	dst      *Dest
	rcvAlive bool
	crashed  bool
	// A journal write failed: the run's record may be left unsettled, for recover to settle.
	journalFailed bool
	srcJ, dstJ    Entry
	sq            srcVM
	dq            string // the destination QEMU: none starting failed incoming fed loaded started running gone
	net           []msg
	srcQ, dstQ    []Event // outcomes the drivers will deliver, in order
	connected     bool
	redial        bool
	srcReport     *Action
	dstReport     *Action // this receiver process's
	reports       []Action
}

func newWorld(t *testing.T, seed int64, seen outcomes) *world {
	rng := rand.New(rand.NewSource(seed))
	u := rng.Float64()
	w := &world{t: t, rng: rng, faults: true, faultRate: 0.15 * u * u, wasRunning: rng.Intn(5) != 0,
		seen: seen, srcAlive: true, rcvAlive: true, connected: true, dq: "none"}
	w.src = NewSource(modelEpoch, w.wasRunning)
	w.sq = srcVM{run: "paused", mig: "none"}
	if w.wasRunning {
		w.sq.run = "running"
	}
	return w
}

func (w *world) logf(format string, args ...any) {
	w.trace = append(w.trace, fmt.Sprintf(format, args...))
}

func (w *world) fatalf(format string, args ...any) {
	w.t.Helper()
	tr := w.trace
	if len(tr) > 120 {
		tr = tr[len(tr)-120:]
	}
	w.t.Fatalf("%s\ntrace (last %d):\n  %s", fmt.Sprintf(format, args...), len(tr), strings.Join(tr, "\n  "))
}

func (w *world) check() {
	if w.sq.run == "running" && w.dq == "running" {
		w.fatalf("the VM runs on both sides")
	}
}

func (w *world) destGone() bool { return w.dq == "none" || w.dq == "gone" }

func (w *world) pushSrc(ev Event) {
	if w.srcAlive {
		w.srcQ = append(w.srcQ, ev)
	}
}

func (w *world) pushDst(ev Event) {
	if w.rcvAlive {
		w.dstQ = append(w.dstQ, ev)
	}
}

func (w *world) stepSource(ev Event) {
	if !w.srcAlive {
		return
	}
	acts := w.src.Step(ev)
	w.logf("S %v: %s => %v", ev, formatActions(acts), w.src.Phase())
	for _, a := range acts {
		if w.faults && w.rng.Float64() < w.faultRate/20 {
			w.logf("S crashes before %v", a)
			w.crashSender()
			return
		}
		if w.journalFails(a) {
			w.stepSource(Event{Kind: JournalFailed, Reason: "no space left on device"})
			return
		}
		w.doSource(a)
		w.check()
	}
}

func (w *world) stepDest(ev Event) {
	if !w.rcvAlive {
		return
	}
	if w.dst == nil {
		if ev.Kind != Recv {
			return
		}
		w.dst = NewDest(ev.Epoch) // the receiver's first word of this VM and epoch
	}
	if ev.Kind == Recv && ev.Frame == FrameStreamEnd && w.dq == "incoming" {
		w.dq = "fed" // the rebuilder gave the destination the whole stream
	}
	acts := w.dst.Step(ev)
	w.logf("R %v: %s => %v", ev, formatActions(acts), w.dst.Phase())
	w.doDestActions(acts)
}

func (w *world) doDestActions(acts []Action) {
	for _, a := range acts {
		if w.faults && w.rng.Float64() < w.faultRate/20 {
			w.logf("R crashes before %v", a)
			w.crashReceiver()
			return
		}
		if w.journalFails(a) {
			w.stepDest(Event{Kind: JournalFailed, Reason: "no space left on device"})
			return
		}
		w.doDest(a)
		w.check()
	}
}

// journalFails decides whether a Journal action fails (a full disk): the driver then carries out nothing after it
// and delivers JournalFailed at once. The record on disk stays as it was.
func (w *world) journalFails(a Action) bool {
	if a.Kind != Journal || !w.faults || w.rng.Float64() >= w.faultRate/10 {
		return false
	}
	w.logf("journal %v fails", a.Entry)
	w.journalFailed = true
	return true
}

func (w *world) report(slot **Action, a Action, p Phase, side string) {
	if !w.final {
		w.seen[side+" "+string(a.Status)]++
	}
	// Unresolved is provisional: the word that settles it (from the sender or recover) may still come, and then
	// the side reports again. Any other outcome is final.
	if *slot != nil && (*slot).Status != StatusUnresolved {
		w.fatalf("%s reported twice: %v, %v", side, **slot, a)
	}
	if !p.Terminal() {
		w.fatalf("%s reported %v in %v", side, a, p)
	}
	*slot = &a
	w.reports = append(w.reports, a)
}

func (w *world) doSource(a Action) {
	switch a.Kind {
	case Journal:
		w.srcJ = a.Entry
	case Send:
		if w.connected {
			w.net = append(w.net, msg{true, Received(a.Frame, a.Epoch, a.Reason)})
		}
	case StartSourceMigration:
		w.sq.mig = "active"
		w.pushSrc(Event{Kind: SrcActive})
	case CancelSourceMigration:
		w.cancelSource()
	case RestoreSource, Answer, ProtocolError:
	case ResumeSource:
		if w.sq.run == "finish" {
			w.fatalf("cont while the source is in finish-migrate")
		}
		if !w.destGone() {
			w.fatalf("the source resumed while its destination is %s", w.dq)
		}
		if w.rng.Intn(20) == 0 {
			w.pushSrc(Event{Kind: SrcRefused})
			return
		}
		w.sq.run = "running"
		w.pushSrc(Event{Kind: SrcRunning})
	case QuitSource:
		if w.rng.Intn(20) == 0 {
			w.pushSrc(Event{Kind: SrcRefused})
			return
		}
		w.sq.run = "gone"
		w.pushSrc(Event{Kind: SrcExited})
	case Reconnect:
		w.redial = true
	case Report:
		w.report(&w.srcReport, a, w.src.Phase(), "source")
	default:
		w.fatalf("the source side asked for %v", a)
	}
}

// cancelSource is migrate_cancel, and the driver reporting the migration's end status.
func (w *world) cancelSource() {
	q := &w.sq
	if q.mig == "active" {
		q.mig = "cancelled"
		if q.run == "finish" {
			q.run = map[bool]string{true: "running", false: "post"}[q.stoppedByMig]
		}
	}
	kind := map[string]EventKind{"active": SrcCancelled, "none": SrcCancelled, "cancelled": SrcCancelled,
		"failed": SrcFailed, "completed": SrcCompleted}[q.mig]
	w.pushSrc(Event{Kind: kind})
	q.needSettle = true
}

func (w *world) doDest(a Action) {
	switch a.Kind {
	case Journal:
		w.dstJ = a.Entry
	case Send:
		if w.connected {
			w.net = append(w.net, msg{false, Received(a.Frame, a.Epoch, a.Reason)})
		}
	case LaunchDest:
		switch w.rng.Intn(20) {
		case 0:
			w.dq = "failed"
			w.pushDst(Event{Kind: DestFailed})
		case 1:
			w.dq = "gone"
			w.pushDst(Event{Kind: DestExited})
		default:
			w.dq = "incoming"
			w.pushDst(Event{Kind: DestReady})
		}
	case KillDest:
		if w.dq == "running" || w.dq == "started" {
			w.fatalf("killed a destination that ran")
		}
		w.dq = "gone"
		w.pushDst(Event{Kind: DestExited})
	case StartDest:
		if p := w.srcJ.Phase; p != Finish && p != Confirm && p != Committed {
			w.fatalf("the destination starts but the sender journaled %v", w.srcJ)
		}
		switch w.dq {
		case "loaded":
			if w.rng.Intn(10) == 0 {
				w.pushDst(Event{Kind: DestFailed}) // `cont` refused: the guest did not run
				return
			}
			w.dq = map[bool]string{true: "running", false: "started"}[w.wasRunning]
			w.pushDst(Event{Kind: DestStarted})
		case "running", "started":
			w.pushDst(Event{Kind: DestStarted})
		case "gone":
			w.pushDst(Event{Kind: DestFailed}) // gone before `cont` was sent
		default:
			w.fatalf("StartDest on a destination that is %s", w.dq)
		}
	case AwaitResolution, Answer, ProtocolError:
	case Report:
		w.report(&w.dstReport, a, w.dst.Phase(), "dest")
	default:
		w.fatalf("the destination side asked for %v", a)
	}
}

func (w *world) crashSender() {
	w.crashed = true
	w.srcAlive, w.srcQ, w.redial = false, nil, false
	if w.sq.mig == "active" { // its socket closes: the migration fails
		w.sq.mig = "failed"
		if w.sq.run == "finish" {
			w.sq.run = map[bool]string{true: "running", false: "post"}[w.sq.stoppedByMig]
		}
	}
	w.breakConnection()
}

func (w *world) crashReceiver() {
	w.crashed = true
	w.rcvCrashedInFinish = w.rcvCrashedInFinish || (w.dstJ.Phase == Finish && !w.final)
	w.rcvAlive, w.dst, w.dstQ = false, nil, nil
	switch w.dq {
	case "starting", "failed", "incoming", "fed": // its stream closes: it exits
		w.dq = "gone"
	}
	w.breakConnection()
}

func (w *world) breakConnection() {
	if !w.connected {
		return
	}
	w.connected = false
	w.logf("connection lost")
	w.pushSrc(Event{Kind: PeerLost})
	if w.dst != nil {
		w.pushDst(Event{Kind: PeerLost})
	}
}

func (w *world) restartReceiver() {
	w.rcvAlive, w.dstReport = true, nil
	w.logf("R restarts with %v", w.dstJ)
	if w.dstJ.Phase == Begin {
		return
	}
	d, acts := RestoreDest(w.dstJ)
	w.dst = d
	w.logf("R restored: %s => %v", formatActions(acts), d.Phase())
	w.doDestActions(acts)
	if w.rcvAlive && w.destGone() {
		w.pushDst(Event{Kind: DestExited})
	}
}

// moves lists what may happen next.
func (w *world) moves() []func() {
	var m []func()
	for i := range w.net {
		m = append(m, func() { w.deliver(i, false) })
	}
	if len(w.srcQ) > 0 {
		m = append(m, func() { ev := w.srcQ[0]; w.srcQ = w.srcQ[1:]; w.stepSource(ev) })
	}
	if len(w.dstQ) > 0 {
		m = append(m, func() { ev := w.dstQ[0]; w.dstQ = w.dstQ[1:]; w.stepDest(ev) })
	}
	m = append(m, w.qemuMoves()...)
	if !w.rcvAlive && !w.faults {
		m = append(m, w.restartReceiver)
	}
	if w.redial && !w.connected && w.srcAlive && w.rcvAlive {
		m = append(m, func() {
			w.connected, w.redial = true, false
			w.logf("reconnected")
			w.pushSrc(Event{Kind: Reconnected})
			if w.dst != nil {
				w.pushDst(Event{Kind: Reconnected})
			}
		})
	}
	return m
}

// faultMoves lists what may go wrong next.
func (w *world) faultMoves() []func() {
	var m []func()
	for i := range w.net {
		m = append(m, func() { w.deliver(i, true) })
	}
	if len(w.net) > 0 {
		m = append(m, func() {
			i := w.rng.Intn(len(w.net))
			w.logf("drop %v", w.net[i].ev)
			w.net = append(w.net[:i], w.net[i+1:]...)
		})
	}
	m = append(m, w.breakConnection, w.crashSender, w.crashReceiver,
		func() { w.pushSrc(Event{Kind: Stop}) }, func() { w.pushDst(Event{Kind: Stop}) })
	// A driver delivers a phase's Timeout only while no outcome of an action is pending.
	if len(w.srcQ) == 0 {
		m = append(m, func() { w.stepSource(Event{Kind: Timeout}) })
	}
	if len(w.dstQ) == 0 && w.dst != nil {
		m = append(m, func() { w.stepDest(Event{Kind: Timeout}) })
	}
	if q := &w.sq; q.mig == "active" {
		m = append(m, func() {
			q.mig = "failed"
			if q.run == "finish" {
				q.run = map[bool]string{true: "running", false: "post"}[q.stoppedByMig]
			}
			w.logf("source migration failed")
			w.pushSrc(Event{Kind: SrcFailed})
			q.needSettle = true
		})
		if w.srcAlive {
			m = append(m, func() { w.logf("pump fails"); w.pushSrc(Event{Kind: StreamFailed}) })
		}
	}
	if w.dq == "incoming" || w.dq == "fed" || (w.dq == "loaded" && w.dstJ.Phase != Finish && w.dstJ.Phase != Committed) {
		// a destination whose guest cannot have run yet dies
		m = append(m, func() {
			w.destDied = w.destDied || w.dq == "loaded"
			w.dq = "gone"
			w.logf("destination QEMU dies")
			w.pushDst(Event{Kind: DestExited})
		})
	}
	if !w.rcvAlive {
		m = append(m, w.restartReceiver)
	}
	return m
}

// deliver hands frame i to its side; dup keeps a copy in flight.
func (w *world) deliver(i int, dup bool) {
	m := w.net[i]
	if !dup {
		w.net = append(w.net[:i], w.net[i+1:]...)
	}
	if m.toDest {
		w.stepDest(m.ev)
	} else {
		w.stepSource(m.ev)
	}
}

func (w *world) qemuMoves() []func() {
	q := &w.sq
	var m []func()
	if q.mig == "active" {
		if q.run == "running" && w.srcAlive {
			m = append(m, func() { q.run = "paused"; w.logf("the policy stops the source") })
		}
		if q.run == "running" || q.run == "paused" {
			m = append(m, func() { q.stoppedByMig, q.run = q.run == "running", "finish"; w.logf("source in finish-migrate") })
		}
		if q.run == "finish" {
			m = append(m, func() {
				q.mig = "completed"
				w.logf("source migration completed")
				w.pushSrc(Event{Kind: SrcCompleted})
				q.needSettle = true
				if w.connected && w.srcAlive {
					w.net = append(w.net, msg{true, Received(FrameStreamEnd, modelEpoch, "")}) // the pump's
				}
			})
		}
	}
	if q.mig == "completed" && q.run == "finish" {
		m = append(m, func() { q.run = "post"; w.logf("source in postmigrate") })
	}
	if q.needSettle && q.run != "finish" {
		m = append(m, func() {
			q.needSettle = false
			switch q.run {
			case "running":
				w.pushSrc(Event{Kind: SrcRunning})
			case "gone":
			default:
				w.pushSrc(Event{Kind: SrcPaused})
			}
		})
	}
	if w.dq == "fed" {
		m = append(m, func() { w.dq = "loaded"; w.logf("destination loaded"); w.pushDst(Event{Kind: DestLoaded}) },
			func() { w.dq = "failed"; w.logf("destination refuses the stream"); w.pushDst(Event{Kind: DestFailed}) })
	}
	return m
}

func (w *world) live() (src, dst bool) {
	return w.srcAlive && !w.src.Phase().Terminal(), w.rcvAlive && w.dst != nil && !w.dst.Phase().Terminal()
}

// settle runs with the faults off until nothing is left to happen; each live machine still waiting then gets the
// driver's Timeout.
func (w *world) settle() {
	w.faults = false
	for i := 0; ; i++ {
		if i == 5000 {
			w.fatalf("the world does not settle")
		}
		if m := w.moves(); len(m) > 0 {
			m[w.rng.Intn(len(m))]()
			continue
		}
		s, d := w.live()
		switch {
		case s:
			w.stepSource(Event{Kind: Timeout})
		case d:
			w.stepDest(Event{Kind: Timeout})
		default:
			return
		}
	}
}

func (w *world) situation() Situation {
	s := Situation{Source: w.srcJ, WasRunning: w.wasRunning, DestKnown: true, Dest: w.dstJ}
	switch {
	case w.sq.run == "gone":
		s.SourceNow = SourceGone
	case w.sq.mig == "active" || w.sq.run == "finish":
		s.SourceNow = SourceMigrating
	case w.sq.run == "running":
		s.SourceNow = SourceRunning
	default:
		s.SourceNow = SourcePaused
	}
	switch w.dq {
	case "none", "gone":
		s.DestNow = DestGone
	case "running":
		s.DestNow = DestRunning
	default:
		s.DestNow = DestPaused
	}
	return s
}

func (w *world) applyFix(f Fix) {
	e := Entry{Epoch: modelEpoch}
	switch f {
	case FixCancelSource:
		w.cancelSource()
		if w.sq.run == "finish" {
			w.sq.run = "post"
		}
	case FixTearDownDest:
		e.Phase, w.dstJ = RolledBack, Entry{RolledBack, modelEpoch}
		if w.dq == "running" || w.dq == "started" {
			w.fatalf("recover killed a destination that ran")
		}
		w.dq = "gone"
	case FixResumeSource:
		if !w.destGone() {
			w.fatalf("recover resumed the source beside a destination that is %s", w.dq)
		}
		w.srcJ = Entry{RolledBack, modelEpoch}
		if w.wasRunning {
			w.sq.run = "running"
		}
	case FixStartDest:
		if w.dstJ.Phase != Finish && w.dstJ.Phase != Committed {
			w.dstJ = Entry{Finish, modelEpoch}
		}
		if w.dq != "loaded" && w.dq != "started" && w.dq != "running" {
			w.fatalf("recover starts a destination that is %s", w.dq)
		}
		w.dq = map[bool]string{true: "running", false: "started"}[w.wasRunning]
	case FixQuitSource:
		if w.srcJ.Phase != Committed {
			w.srcJ = Entry{Confirm, modelEpoch}
		}
		w.sq.run = "gone"
	case FixMarkCommitted:
		w.srcJ, w.dstJ = Entry{Committed, modelEpoch}, Entry{Committed, modelEpoch}
	}
	w.check()
}

// recover runs Decide to the end and returns the side whose copy is the VM (Nobody if it rightly asks an
// operator).
func (w *world) recover() (owner Side, steps int) {
	for ; ; steps++ {
		if steps == 10 {
			w.fatalf("recover does not settle")
		}
		s := w.situation()
		p := Decide(s)
		w.logf("recover: %+v: %v", s, p)
		checkPlan(w.t, s, p)
		switch p.Verdict {
		case Resolved:
			return p.Owner, steps
		case Act:
			w.applyFix(p.Fix)
		case Manual:
			if w.destDied && w.rcvCrashedInFinish && s.DestNow == DestGone && s.Dest.Phase == Finish {
				return Nobody, steps
			}
			fallthrough
		default:
			w.fatalf("recover cannot settle the VM: %v", p)
		}
	}
}

type outcomes map[string]int

func runWorld(t *testing.T, seed int64, seen outcomes) {
	w := newWorld(t, seed, seen)
	w.stepSource(Event{Kind: Connected})
	for i, n := 0, 5+w.rng.Intn(80); i < n; i++ {
		m := w.moves()
		if len(m) == 0 {
			break
		}
		if w.rng.Float64() < w.faultRate {
			m = w.faultMoves()
		}
		m[w.rng.Intn(len(m))]()
	}
	w.settle()
	if w.srcAlive && w.srcReport == nil {
		w.fatalf("the source side ended %v without a report", w.src.Phase())
	}
	clean := !w.crashed && !w.journalFailed
	for _, r := range w.reports {
		clean = clean && r.Status != StatusUnresolved
	}
	owner, steps := w.recover()
	if owner == Nobody {
		seen["manual after a double fault"]++
		return
	}
	if clean && steps > 0 {
		w.fatalf("a run with no crash and nothing unresolved needed recover")
	}
	srcCopy, dstCopy := w.sq.run != "gone", !w.destGone()
	if srcCopy == dstCopy {
		w.fatalf("after recover: source %s, destination %s: not exactly one copy", w.sq.run, w.dq)
	}
	if w.wasRunning && w.sq.run != "running" && w.dq != "running" {
		w.fatalf("after recover the VM that ran does not run")
	}
	for _, r := range w.reports {
		if (r.Status == StatusMigrated && owner != DestSide) || (r.Status == StatusRolledBack && owner != SourceSide) {
			w.fatalf("reported %v, but recover found the VM on the %v", r.Status, owner)
		}
	}
	// Frames still in flight (and a START sent again) reach a receiver restarted from its journal: nothing starts.
	w.final = true
	w.crashReceiver()
	w.restartReceiver()
	w.net = append(w.net, msg{true, Received(FrameStart, modelEpoch, "")})
	for _, m := range w.net {
		if m.toDest {
			w.stepDest(m.ev)
		}
	}
	for len(w.dstQ) > 0 {
		ev := w.dstQ[0]
		w.dstQ = w.dstQ[1:]
		w.stepDest(ev)
	}
	if (w.sq.run != "gone") == !w.destGone() {
		w.fatalf("late frames changed the outcome: source %s, destination %s", w.sq.run, w.dq)
	}

	if !w.srcAlive {
		seen["sender crashed"]++
	}
	if steps > 0 {
		seen["recovered to "+owner.String()]++
	}
	if w.journalFailed {
		seen["journal failed"]++
	}
}

func TestModel(t *testing.T) {
	seeds := 20000
	if testing.Short() {
		seeds = 2000
	}
	if n, err := strconv.Atoi(os.Getenv("COMMIT_MODEL_SEEDS")); err == nil { // for a longer hunt
		seeds = n
	}
	seen := outcomes{}
	for seed := int64(0); seed < int64(seeds); seed++ {
		runWorld(t, seed, seen)
	}
	t.Logf("outcomes over %d runs: %v", seeds, seen)
	// The model must reach every kind of ending, or it proves little.
	for _, k := range []string{"source migrated", "source rolled_back", "source unresolved", "sender crashed",
		"journal failed", "dest migrated", "dest rolled_back", "dest unresolved", "recovered to source", "recovered to dest"} {
		if seen[k] == 0 {
			t.Errorf("no run ended %q", k)
		}
	}
}
