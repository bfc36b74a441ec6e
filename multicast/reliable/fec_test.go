package reliable

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/multicast/wire"
)

// The repair overhead with FEC follows the per-link loss, not the union of every receiver's losses:
// at most 1.5 × loss + 2% for 1, 2, 4 and 8 receivers (issue #4's target).
func TestSimRepairOverheadFEC(t *testing.T) {
	for _, loss := range []float64{0.01, 0.05} {
		for _, n := range []int{1, 2, 4, 8} {
			for seed := uint64(1); seed <= 2; seed++ {
				t.Run(fmt.Sprintf("loss%v/receivers%d/seed%d", loss, n, seed), func(t *testing.T) {
					cfg := Config{RateBps: 200e6, Datagram: 9000 - 28}
					s := newSim(t, seed, n, cfg, func(int) *link {
						return &link{loss: loss, delay: 200 * time.Microsecond, jitter: 100 * time.Microsecond}
					})
					rng := rand.New(rand.NewPCG(seed, 5))
					members := make([]int, n)
					for i := range members {
						members[i] = i
					}
					spec := batchSpec{members: members, objs: pages(rng, 2000)}
					if _, err := s.snd.Start(s.now, mask(members...), spec.objs); err != nil {
						t.Fatal(err)
					}
					if done := s.run(1, time.Minute); len(done) != 1 || len(done[0].Dropped) != 0 {
						t.Fatalf("done %+v", done)
					}
					checkDelivery(t, s, []batchSpec{spec})
					st := s.snd.Stats()
					over := float64(st.RepairBytes) / float64(st.DataBytes)
					t.Logf("repair %.2f%% (%d parity of %d repairs), rate cuts %d", 100*over, st.ParityPackets, st.RepairPackets, st.RateCuts)
					if over > 1.5*loss+0.02 {
						t.Errorf("repair overhead %.3f over 1.5×%v+2%%; stats %+v", over, loss, st)
					}
				})
			}
		}
	}
}

// pages makes n random 4 KiB pages.
func pages(rng *rand.Rand, n int) []Object {
	objs := make([]Object, n)
	for i := range objs {
		p := make([]byte, 4096)
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		objs[i] = Object{ID: uint64(i), Payload: p}
	}
	return objs
}

// At a loss so high that a block's parity runs out, the sender cycles through the block's chunks and
// parity again, and every byte still arrives.
func TestSimParitySpent(t *testing.T) {
	cfg := Config{RateBps: 50e6, Block: 128, SlowLoss: 0.99, DeadAfter: time.Minute}
	s := newSim(t, 23, 2, cfg, func(int) *link {
		return &link{loss: 0.6, dup: 0.05, delay: 100 * time.Microsecond, jitter: 200 * time.Microsecond}
	})
	rng := rand.New(rand.NewPCG(23, 23))
	spec := batchSpec{members: []int{0, 1}, objs: objects(rng, 0, 150)}
	if _, err := s.snd.Start(s.now, mask(0, 1), spec.objs); err != nil {
		t.Fatal(err)
	}
	if done := s.run(1, 10*time.Minute); len(done) != 1 || len(done[0].Dropped) != 0 {
		t.Fatalf("done %+v, stats %+v", done, s.snd.Stats())
	}
	checkDelivery(t, s, []batchSpec{spec})
	if st := s.snd.Stats(); st.RepairPackets == st.ParityPackets {
		t.Fatalf("no chunk was sent again after the parity: %+v", st)
	}
}

func TestPerBlock(t *testing.T) {
	type count struct {
		b uint32
		n int
	}
	var got []count
	rg := func(first, last uint32) wire.Range { return wire.Range{First: first, Last: last} }
	ranges := []wire.Range{rg(0, 2), rg(5, 5), rg(3, 9), rg(126, 130), rg(300, 1<<19)}
	perBlock(ranges, 128, 400, func(b uint32, n int) { got = append(got, count{b, n}) })
	want := []count{{0, 6}, {1, 3}, {2, 84}, {3, 16}} // {3, 9} overlaps {5, 5}: skipped
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}
