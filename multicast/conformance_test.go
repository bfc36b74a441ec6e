package multicast

import (
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// The conformance suite runs the same sessions over every binding: the in-memory network (under
// testing/synctest), loopback UDP multicast, loopback TCP fan-out, auto, and network namespaces with loss.

// net is one binding under test: transports for a sender and n receivers.
type testNet struct {
	name  string
	setup func(t *testing.T, n int) (Transport, []Transport)
	cfg   Config
	// virtualTime runs each session in a testing/synctest bubble: timers and pacing cost no real time.
	virtualTime bool
}

type batch struct {
	members []ReceiverID
	objs    []Object
}

func testObjects(rng *rand.Rand, base uint64, n int) []Object {
	objs := make([]Object, n)
	for i := range objs {
		size := 4096
		switch rng.IntN(5) {
		case 0:
			size = 1 + rng.IntN(4000)
		case 1:
			size = rng.IntN(65537)
		}
		p := make([]byte, size)
		for j := 0; j < len(p); j += 8 {
			v := rng.Uint64()
			for k := 0; k < 8 && j+k < len(p); k++ {
				p[j+k] = byte(v >> (8 * k))
			}
		}
		objs[i] = Object{ID: base + uint64(i), Payload: p}
	}
	return objs
}

// store is a receiver's content store in the tests: object id → sha256 of the bytes.
type store struct {
	mu   sync.Mutex
	sums map[uint64][32]byte
	dups int
}

func (s *store) put(o Object) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.sums[o.ID]; ok {
		s.dups++
	}
	s.sums[o.ID] = sha256.Sum256(o.Payload)
	return nil
}

// session runs batches over a binding and checks that every member holds every byte of its batches.
func session(t *testing.T, tn testNet, n int, batches []batch) []Result {
	t.Helper()
	str, rtrs := tn.setup(t, n)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stores := make([]*store, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	recvs := make([]*Receiver, n)
	for i := range n {
		stores[i] = &store{sums: map[uint64][32]byte{}}
		r, err := NewReceiver(tn.cfg, ReceiverID(i), rtrs[i])
		if err != nil {
			t.Fatal(err)
		}
		recvs[i] = r
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.Run(ctx, stores[i].put); err != nil {
				errs <- err
			}
		}()
	}
	var snd *Sender
	var err error
	if autoDial != nil {
		snd, err = autoDial(ctx)
	} else {
		snd, err = NewSender(tn.cfg, str)
	}
	if err != nil {
		t.Fatal(err)
	}
	results := make([]Result, len(batches))
	var swg sync.WaitGroup
	for i, b := range batches {
		swg.Add(1)
		go func() {
			defer swg.Done()
			sctx, scancel := context.WithTimeout(ctx, 2*time.Minute)
			defer scancel()
			res, err := snd.Send(sctx, b.members, b.objs)
			if err != nil {
				t.Errorf("batch %d: %v", i, err)
			}
			results[i] = res
		}()
	}
	swg.Wait()
	st := snd.Stats()
	snd.Close()
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("receiver: %v", err)
	}
	want := make([]map[uint64][32]byte, n)
	for i := range want {
		want[i] = map[uint64][32]byte{}
	}
	for i, b := range batches {
		if !slices.Equal(results[i].Completed, b.members) || len(results[i].Dropped) != 0 {
			t.Errorf("batch %d: completed %v dropped %v, want %v", i, results[i].Completed, results[i].Dropped, b.members)
		}
		for _, m := range b.members {
			for _, o := range b.objs {
				want[m][o.ID] = sha256.Sum256(o.Payload)
			}
		}
	}
	for i, s := range stores {
		if len(s.sums) != len(want[i]) {
			t.Errorf("receiver %d holds %d objects, want %d", i, len(s.sums), len(want[i]))
		}
		for id, sum := range want[i] {
			if s.sums[id] != sum {
				t.Errorf("receiver %d: object %d missing or wrong", i, id)
				break
			}
		}
		if s.dups != 0 {
			t.Errorf("receiver %d: %d objects delivered twice", i, s.dups)
		}
		// Duplicates on the network count as replays; anything else refused is a bug.
		if rs := recvs[i].Stats(); rs.Seal.Dropped() != rs.Seal.Replayed {
			t.Errorf("receiver %d refused packets: %+v", i, rs.Seal)
		}
	}
	t.Logf("%s: sender %+v", tn.name, st)
	return results
}

func standardBatches(seed uint64, n, objs int) []batch {
	rng := rand.New(rand.NewPCG(seed, 5))
	all := make([]ReceiverID, n)
	for i := range all {
		all[i] = ReceiverID(i)
	}
	bs := []batch{{members: all, objs: testObjects(rng, 0, objs)}}
	if n > 1 {
		bs = append(bs, batch{members: []ReceiverID{0}, objs: testObjects(rng, 100000, objs/4)})
		bs = append(bs, batch{members: all[1:], objs: testObjects(rng, 200000, objs/2)})
	}
	return bs
}

func testConfig(seed uint64) Config {
	c := Config{SessionID: seed, RateBps: 200e6}
	c.Key[0], c.Key[31] = byte(seed), 0x5a
	return c
}

// conformance runs the suite's sessions over one binding.
func conformance(t *testing.T, tn testNet, objs int) {
	for _, n := range []int{1, 3} {
		t.Run(fmt.Sprintf("%s/receivers%d", tn.name, n), func(t *testing.T) {
			if tn.virtualTime {
				synctest.Test(t, func(t *testing.T) { session(t, tn, n, standardBatches(uint64(n), n, objs)) })
				return
			}
			session(t, tn, n, standardBatches(uint64(n), n, objs))
		})
	}
}

func memNet(loss, dup float64) testNet {
	return testNet{name: fmt.Sprintf("memory-loss%v", loss), cfg: testConfig(1), virtualTime: true, setup: func(t *testing.T, n int) (Transport, []Transport) {
		mn := NewMemNet(uint64(n), loss, dup)
		rs := make([]Transport, n)
		for i := range rs {
			rs[i] = mn.Receiver(ReceiverID(i))
		}
		return mn.Sender(), rs
	}}
}

func TestConformanceMemory(t *testing.T) {
	for _, loss := range []float64{0, 0.05, 0.2} {
		conformance(t, memNet(loss, 0.01), 300)
	}
}
