package reliable

import (
	"bytes"
	"container/heap"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/multicast/wire"
)

// simnet is an in-process network with a virtual clock: every packet is an event at a time; links drop,
// duplicate and reorder from a seeded RNG. Nothing sleeps.

type event struct {
	at   time.Time
	seq  int
	to   int // receiver index, or -1 for the sender
	from uint16
	msg  wire.Message
}

type queue []event

func (q queue) Len() int { return len(q) }
func (q queue) Less(i, j int) bool {
	if q[i].at.Equal(q[j].at) {
		return q[i].seq < q[j].seq
	}
	return q[i].at.Before(q[j].at)
}
func (q queue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *queue) Push(x any)   { *q = append(*q, x.(event)) }
func (q *queue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

type link struct {
	loss, dup float64
	delay     time.Duration // base one-way delay
	jitter    time.Duration // uniform extra delay: reorders packets
	// capacity, when set, is how many packets per second the receiver can take; a backlog over
	// buffer packets is dropped (a receiver too slow for the sender's rate).
	capacity float64
	buffer   int
	busy     time.Time
	dead     bool
}

type sim struct {
	t      *testing.T
	rng    *rand.Rand
	now    time.Time
	q      queue
	seq    int
	snd    *Sender
	rcv    []*Receiver
	links  []*link
	got    []map[uint64][]byte
	dups   int
	nakOut int
	// sharedLoss drops a group packet for everyone (loss before the fan-out).
	sharedLoss float64
}

func newSim(t *testing.T, seed uint64, n int, cfg Config, mk func(i int) *link) *sim {
	s := &sim{t: t, rng: rand.New(rand.NewPCG(seed, 99)), now: time.Unix(1000, 0)}
	s.snd = NewSender(cfg, wire.Seq(s.rng.Uint32()))
	for i := 0; i < n; i++ {
		s.rcv = append(s.rcv, NewReceiver(cfg, uint16(i), seed+uint64(i)))
		s.links = append(s.links, mk(i))
		s.got = append(s.got, make(map[uint64][]byte))
	}
	return s
}

func (s *sim) push(at time.Time, to int, from uint16, m wire.Message) {
	s.seq++
	heap.Push(&s.q, event{at: at, seq: s.seq, to: to, from: from, msg: m})
}

// transmit sends m over the link of receiver i (both directions use that link's loss).
func (s *sim) transmit(i int, to int, from uint16, m wire.Message) {
	l := s.links[i]
	if l.dead || s.rng.Float64() < l.loss {
		return
	}
	copies := 1
	if s.rng.Float64() < l.dup {
		copies = 2
	}
	for c := 0; c < copies; c++ {
		at := s.now.Add(l.delay)
		if l.jitter > 0 {
			at = at.Add(time.Duration(s.rng.Int64N(int64(l.jitter))))
		}
		if to >= 0 && l.capacity > 0 {
			per := time.Duration(float64(time.Second) / l.capacity)
			if l.busy.Before(at) {
				l.busy = at
			}
			if l.busy.Sub(at) > time.Duration(l.buffer)*per {
				continue // receive buffer overflow
			}
			l.busy = l.busy.Add(per)
			at = l.busy
		}
		s.push(at, to, from, m)
	}
}

func (s *sim) senderOut(rd SenderReady) []BatchResult {
	for _, p := range rd.Packets {
		if p.To != ToGroup {
			s.t.Fatalf("sender sent to %v", p.To)
		}
		if s.sharedLoss > 0 && s.rng.Float64() < s.sharedLoss {
			continue
		}
		for i := range s.rcv {
			s.transmit(i, i, wire.SenderNode, p.Msg)
		}
	}
	return rd.Done
}

func (s *sim) receiverOut(i int, rd ReceiverReady) {
	for _, o := range rd.Delivered {
		if _, dup := s.got[i][o.ID]; dup {
			s.dups++
		}
		s.got[i][o.ID] = o.Payload
	}
	for _, p := range rd.Packets {
		if _, ok := p.Msg.(*wire.Nak); ok {
			s.nakOut++
		}
		s.transmit(i, -1, uint16(i), p.Msg)
		if p.To == ToGroup { // other receivers hear NAKs sent to the group
			for j := range s.rcv {
				if j != i {
					s.transmit(j, j, uint16(i), p.Msg)
				}
			}
		}
	}
}

// run drives the network until want batches are done or limit of virtual time passes.
func (s *sim) run(want int, limit time.Duration) []BatchResult {
	var done []BatchResult
	end := s.now.Add(limit)
	rdS := s.snd.Tick(s.now)
	done = append(done, s.senderOut(rdS)...)
	nextR := make([]time.Time, len(s.rcv))
	nextS := rdS.Next
	stuck := 0
	for len(done) < want && s.now.Before(end) {
		next := end
		if s.q.Len() > 0 && s.q[0].at.Before(next) {
			next = s.q[0].at
		}
		if !nextS.IsZero() && nextS.Before(next) {
			next = nextS
		}
		for _, t := range nextR {
			if !t.IsZero() && t.Before(next) {
				next = t
			}
		}
		if next.After(s.now) {
			s.now = next
			stuck = 0
		} else if stuck++; stuck > 100000 {
			s.t.Fatalf("time stands still at %v", s.now)
		}
		tickS := !nextS.IsZero() && !s.now.Before(nextS)
		tickR := make([]bool, len(s.rcv))
		for i, t := range nextR {
			tickR[i] = !t.IsZero() && !s.now.Before(t)
		}
		for s.q.Len() > 0 && !s.q[0].at.After(s.now) {
			e := heap.Pop(&s.q).(event)
			if e.to < 0 {
				s.snd.OnPacket(s.now, e.from, e.msg)
				tickS = true
			} else {
				s.rcv[e.to].OnPacket(s.now, e.from, e.msg)
				tickR[e.to] = true
			}
		}
		for i := range s.rcv {
			if tickR[i] {
				rd := s.rcv[i].Tick(s.now)
				nextR[i] = rd.Next
				s.receiverOut(i, rd)
			}
		}
		if tickS {
			rd := s.snd.Tick(s.now)
			nextS = rd.Next
			done = append(done, s.senderOut(rd)...)
		}
	}
	return done
}

func objects(rng *rand.Rand, base uint64, n int) []Object {
	objs := make([]Object, n)
	for i := range objs {
		size := 4096
		switch rng.IntN(4) {
		case 0:
			size = rng.IntN(4096) // compressed
		case 1:
			size = rng.IntN(wire.MaxObject + 1)
		}
		p := make([]byte, size)
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		objs[i] = Object{ID: base + uint64(i), Payload: p}
	}
	return objs
}

type batchSpec struct {
	members []int
	objs    []Object
}

// checkDelivery verifies every member holds exactly its batches' objects, byte for byte.
func checkDelivery(t *testing.T, s *sim, specs []batchSpec) {
	t.Helper()
	want := make([]map[uint64][]byte, len(s.rcv))
	for i := range want {
		want[i] = map[uint64][]byte{}
	}
	for _, b := range specs {
		for _, m := range b.members {
			for _, o := range b.objs {
				want[m][o.ID] = o.Payload
			}
		}
	}
	for i := range s.rcv {
		if len(s.got[i]) != len(want[i]) {
			t.Fatalf("receiver %d holds %d objects, want %d", i, len(s.got[i]), len(want[i]))
		}
		for id, p := range want[i] {
			if !bytes.Equal(s.got[i][id], p) {
				t.Fatalf("receiver %d object %d differs", i, id)
			}
		}
	}
	if s.dups != 0 {
		t.Fatalf("%d objects delivered twice", s.dups)
	}
}

func mask(ids ...int) wire.Mask {
	var m wire.Mask
	for _, id := range ids {
		m = m.With(uint16(id))
	}
	return m
}

func TestSimDeliversEverything(t *testing.T) {
	for _, loss := range []float64{0, 0.01, 0.05, 0.2} {
		for seed := uint64(1); seed <= 12; seed++ {
			t.Run(fmt.Sprintf("loss%v/seed%d", loss, seed), func(t *testing.T) {
				cfg := Config{RateBps: 200e6, DeadAfter: 10 * time.Second}
				s := newSim(t, seed, 5, cfg, func(int) *link {
					return &link{loss: loss, dup: 0.02, delay: 200 * time.Microsecond, jitter: 300 * time.Microsecond}
				})
				rng := rand.New(rand.NewPCG(seed, 7))
				specs := []batchSpec{
					{members: []int{0, 1, 2, 3, 4}, objs: objects(rng, 0, 300)},
					{members: []int{1, 3}, objs: objects(rng, 1000, 200)},
					{members: []int{4}, objs: objects(rng, 2000, 50)},
					{members: []int{0, 2}, objs: nil},
				}
				ids := map[uint64]batchSpec{}
				for _, b := range specs {
					id, err := s.snd.Start(s.now, mask(b.members...), b.objs)
					if err != nil {
						t.Fatal(err)
					}
					ids[id] = b
				}
				done := s.run(len(specs), time.Minute)
				if len(done) != len(specs) {
					t.Fatalf("%d of %d batches done; stats %+v", len(done), len(specs), s.snd.Stats())
				}
				for _, d := range done {
					if len(d.Dropped) != 0 || !maskEqual(d.Completed, mask(ids[d.Batch].members...)) {
						t.Fatalf("batch %d: completed %v dropped %v", d.Batch, d.Completed, d.Dropped)
					}
				}
				checkDelivery(t, s, specs)
				st := s.snd.Stats()
				over := float64(st.RepairBytes) / float64(st.DataBytes)
				// Independent loss at each of 5 receivers: a chunk needs repair when any of them lost it.
				anyLost := 1 - pow(1-loss, 5)
				if over > 1.5*anyLost+0.02 {
					t.Errorf("repair overhead %.3f over 1.5×%.3f+2%%; stats %+v", over, anyLost, st)
				}
			})
		}
	}
}

func pow(x float64, n int) float64 {
	r := 1.0
	for i := 0; i < n; i++ {
		r *= x
	}
	return r
}

func TestSimSharedLossNakSuppression(t *testing.T) {
	cfg := Config{RateBps: 100e6}
	s := newSim(t, 3, 8, cfg, func(int) *link { return &link{delay: 100 * time.Microsecond} })
	s.sharedLoss = 0.05
	rng := rand.New(rand.NewPCG(3, 3))
	spec := batchSpec{members: []int{0, 1, 2, 3, 4, 5, 6, 7}, objs: objects(rng, 0, 500)}
	if _, err := s.snd.Start(s.now, mask(spec.members...), spec.objs); err != nil {
		t.Fatal(err)
	}
	if done := s.run(1, time.Minute); len(done) != 1 || len(done[0].Dropped) != 0 {
		t.Fatalf("done %+v", done)
	}
	checkDelivery(t, s, []batchSpec{spec})
	st := s.snd.Stats()
	sup := uint64(0)
	for _, r := range s.rcv {
		sup += r.Stats().Suppressed
	}
	// Every loss is shared by the 8 receivers: without suppression each would NAK it.
	if sup == 0 || s.nakOut >= 8*int(st.RepairPackets) {
		t.Fatalf("no suppression: %d NAKs for %d repairs, %d suppressed", s.nakOut, st.RepairPackets, sup)
	}
	if over := float64(st.RepairPackets) / float64(st.DataPackets); over > 1.5*0.05+0.02 {
		t.Fatalf("repair overhead %.3f", over)
	}
}

func TestSimDeadReceiverDropped(t *testing.T) {
	cfg := Config{RateBps: 100e6, DeadAfter: time.Second}
	s := newSim(t, 5, 4, cfg, func(i int) *link { return &link{loss: 0.01, delay: 100 * time.Microsecond, dead: i == 2} })
	rng := rand.New(rand.NewPCG(5, 5))
	spec := batchSpec{members: []int{0, 1, 2, 3}, objs: objects(rng, 0, 200)}
	id, _ := s.snd.Start(s.now, mask(spec.members...), spec.objs)
	done := s.run(1, time.Minute)
	if len(done) != 1 || done[0].Batch != id || !maskEqual(done[0].Dropped, mask(2)) || !maskEqual(done[0].Completed, mask(0, 1, 3)) {
		t.Fatalf("done %+v", done)
	}
	s.got[2] = nil
	checkDelivery(t, s, []batchSpec{{members: []int{0, 1, 3}, objs: spec.objs}})
	// A later batch naming the dropped receiver reports it dropped at once.
	spec2 := batchSpec{members: []int{1, 2}, objs: objects(rng, 500, 20)}
	s.snd.Start(s.now, mask(1, 2), spec2.objs)
	done = s.run(1, time.Minute)
	if len(done) != 1 || !maskEqual(done[0].Dropped, mask(2)) || !maskEqual(done[0].Completed, mask(1)) {
		t.Fatalf("second batch %+v", done)
	}
}

func TestSimSlowReceiverDropped(t *testing.T) {
	cfg := Config{RateBps: 400e6, MinRateBps: 100e6, SlowAfter: 500 * time.Millisecond}
	// Receiver 1 takes 2,000 packets per second, far below the 100 Mbit/s floor (~9,000 per second).
	s := newSim(t, 11, 3, cfg, func(i int) *link {
		l := &link{delay: 100 * time.Microsecond}
		if i == 1 {
			l.capacity, l.buffer = 2000, 500
		}
		return l
	})
	rng := rand.New(rand.NewPCG(11, 11))
	spec := batchSpec{members: []int{0, 1, 2}, objs: objects(rng, 0, 3000)}
	s.snd.Start(s.now, mask(0, 1, 2), spec.objs)
	done := s.run(1, 5*time.Minute)
	if len(done) != 1 || !maskEqual(done[0].Dropped, mask(1)) || !maskEqual(done[0].Completed, mask(0, 2)) {
		t.Fatalf("done %+v, stats %+v", done, s.snd.Stats())
	}
	s.got[1] = nil
	checkDelivery(t, s, []batchSpec{{members: []int{0, 2}, objs: spec.objs}})
}

func TestSimSlowestGoverns(t *testing.T) {
	// Receiver 0 takes 10,000 packets per second (about 110 Mbit/s): the sender settles near it and
	// everyone completes without being dropped.
	cfg := Config{RateBps: 400e6, MinRateBps: 20e6}
	s := newSim(t, 13, 3, cfg, func(i int) *link {
		l := &link{delay: 100 * time.Microsecond}
		if i == 0 {
			l.capacity, l.buffer = 10000, 2000
		}
		return l
	})
	rng := rand.New(rand.NewPCG(13, 13))
	spec := batchSpec{members: []int{0, 1, 2}, objs: objects(rng, 0, 5000)}
	s.snd.Start(s.now, mask(0, 1, 2), spec.objs)
	done := s.run(1, 5*time.Minute)
	if len(done) != 1 || len(done[0].Dropped) != 0 {
		t.Fatalf("done %+v", done)
	}
	checkDelivery(t, s, []batchSpec{spec})
	st := s.snd.Stats()
	if st.RateCuts == 0 {
		t.Fatalf("the rate never came down: %+v", st)
	}
	t.Logf("stats %+v", st)
}

func TestSimTransferIDsWrap(t *testing.T) {
	s := newSim(t, 17, 2, Config{RateBps: 100e6}, func(int) *link { return &link{loss: 0.05, delay: 50 * time.Microsecond} })
	s.snd = NewSender(Config{RateBps: 100e6}, 0xFFFFFFF0)
	rng := rand.New(rand.NewPCG(17, 17))
	var specs []batchSpec
	for b := 0; b < 40; b++ {
		spec := batchSpec{members: []int{b % 2}, objs: objects(rng, uint64(b*100), 5)}
		if b%3 == 0 {
			spec.members = []int{0, 1}
		}
		specs = append(specs, spec)
		s.snd.Start(s.now, mask(spec.members...), spec.objs)
	}
	if done := s.run(len(specs), time.Minute); len(done) != len(specs) {
		t.Fatalf("%d batches done", len(done))
	}
	checkDelivery(t, s, specs)
}

func TestSimCancel(t *testing.T) {
	s := newSim(t, 19, 2, Config{RateBps: 10e6}, func(int) *link { return &link{delay: 50 * time.Microsecond} })
	rng := rand.New(rand.NewPCG(19, 19))
	id, _ := s.snd.Start(s.now, mask(0, 1), objects(rng, 0, 2000))
	s.run(1, 50*time.Millisecond)
	s.snd.Cancel(id)
	spec := batchSpec{members: []int{0, 1}, objs: objects(rng, 5000, 10)}
	id2, _ := s.snd.Start(s.now, mask(0, 1), spec.objs)
	done := s.run(1, time.Minute)
	if len(done) != 1 || done[0].Batch != id2 {
		t.Fatalf("done %+v", done)
	}
	for i, r := range s.rcv {
		if r.Stats().Dropped != 1 {
			t.Fatalf("receiver %d was not told to leave the cancelled transfer: %+v", i, r.Stats())
		}
		for _, o := range spec.objs {
			if !bytes.Equal(s.got[i][o.ID], o.Payload) {
				t.Fatalf("receiver %d lacks object %d", i, o.ID)
			}
		}
	}
}

func TestStartRejects(t *testing.T) {
	s := NewSender(Config{}, 0)
	if _, err := s.Start(time.Now(), mask(0), []Object{{ID: 1, Payload: make([]byte, wire.MaxObject+1)}}); err == nil {
		t.Fatal("oversized object accepted")
	}
	if _, err := s.Start(time.Now(), mask(0), []Object{{ID: 1}, {ID: 1}}); err == nil {
		t.Fatal("repeated id accepted")
	}
}

// LimitRate lowers the maximum (and the current rate with it), never raises it, and never goes below MinRateBps.
func TestSenderLimitRate(t *testing.T) {
	s := NewSender(Config{RateBps: 1e9}, 0)
	s.LimitRate(100e6)
	if st := s.Stats(); st.RateBps != 100e6 || s.cfg.RateBps != 100e6 {
		t.Fatalf("after LimitRate(100M): rate %d, max %d", st.RateBps, s.cfg.RateBps)
	}
	s.LimitRate(500e6)
	if s.cfg.RateBps != 100e6 {
		t.Fatalf("LimitRate raised the maximum to %d", s.cfg.RateBps)
	}
	s.LimitRate(1)
	if s.cfg.RateBps != s.cfg.MinRateBps {
		t.Fatalf("LimitRate(1): max %d, want the minimum %d", s.cfg.RateBps, s.cfg.MinRateBps)
	}
}
