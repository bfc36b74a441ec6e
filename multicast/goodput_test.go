package multicast

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/bench/lab"
)

// TestGoodput measures the multicast binding in namespaces: goodput against the configured rate, repair
// overhead against loss, and the bytes the source puts on its link for content that k receivers need.
// It runs only with VMSCATTER_MCBENCH=1 (it takes a minute):
//
//	VMSCATTER_MCBENCH=1 go test -run TestGoodput -v ./multicast/
func TestGoodput(t *testing.T) {
	if os.Getenv("VMSCATTER_MCBENCH") != "1" {
		t.Skip("skipping: set VMSCATTER_MCBENCH=1 to run the goodput benchmark")
	}
	const rate = 200e6
	const mib = 24
	rng := rand.New(rand.NewPCG(1, 2))
	objs := testObjects(rng, 0, 0)
	for i := range mib * 256 {
		p := make([]byte, 4096)
		for j := 0; j < len(p); j += 8 {
			v := rng.Uint64()
			for k := range 8 {
				p[j+k] = byte(v >> (8 * k))
			}
		}
		objs = append(objs, Object{ID: uint64(i), Payload: p})
	}
	payload := float64(len(objs) * 4096)
	var rows []string
	row := func(mode string, mtu, n int, loss float64, el time.Duration, st SenderStats, srcBytes uint64) {
		good := payload * 8 / el.Seconds()
		t.Logf("%s mtu %d receivers %d loss %v%%: %v, engine %+v", mode, mtu, n, loss, el, st.Engine)
		rows = append(rows, fmt.Sprintf("| %s | %d | %d | %.0f%% | %.1f | %.0f%% | %.1f%% | %.2f |",
			mode, mtu, n, loss, good/1e6, 100*good/rate,
			100*float64(st.Engine.RepairBytes)/float64(st.Engine.DataBytes), float64(srcBytes)/payload))
	}
	run := func(tn testNet, n int) (time.Duration, SenderStats, uint64) {
		var el time.Duration
		var st SenderStats
		var src *lab.Host
		tn.cfg.RateBps = rate
		setup := tn.setup
		tn.setup = func(t *testing.T, n int) (Transport, []Transport) {
			s, rs := setup(t, n)
			src = benchSrc
			return s, rs
		}
		str, rtrs := tn.setup(t, n)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		got := make([]int, n)
		for i := range n {
			r, err := NewReceiver(tn.cfg, ReceiverID(i), rtrs[i])
			if err != nil {
				t.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.Run(ctx, func(Object) error { got[i]++; return nil })
			}()
		}
		snd, err := NewSender(tn.cfg, str)
		if err != nil {
			t.Fatal(err)
		}
		members := make([]ReceiverID, n)
		for i := range members {
			members[i] = ReceiverID(i)
		}
		rx0, _, _ := src.PortCounters()
		start := time.Now()
		res, err := snd.Send(ctx, members, objs)
		el = time.Since(start)
		rx1, _, _ := src.PortCounters()
		st = snd.Stats()
		snd.Close()
		cancel()
		wg.Wait()
		if err != nil || len(res.Completed) != n {
			t.Fatalf("send: %v %+v", err, res)
		}
		for i, g := range got {
			if g != len(objs) {
				t.Fatalf("receiver %d got %d of %d objects", i, g, len(objs))
			}
		}
		return el, st, rx1 - rx0
	}
	for _, n := range benchReceivers() {
		for _, loss := range []float64{0, 1, 5} {
			el, st, src := run(benchMulticast(loss, 9000), n)
			row("multicast", 9000, n, loss, el, st, src)
		}
	}
	for _, n := range []int{1, 4} {
		el, st, src := run(benchMulticast(0, 1500), n)
		row("multicast", 1500, n, 0, el, st, src)
		el, st, src = run(benchUnicast(), n)
		row("unicast", 1500, n, 0, el, st, src)
	}
	table := "| binding | MTU | receivers | loss | goodput Mbit/s | of rate | repair bytes | source bytes / payload |\n" +
		"|---|---|---|---|---|---|---|---|\n" + strings.Join(rows, "\n")
	t.Logf("%d MiB of 4 KiB pages to every receiver at %v Mbit/s:\n%s", mib, rate/1e6, table)
}

var benchSrc *lab.Host

// benchReceivers is the receiver counts of the multicast matrix; VMSCATTER_MCBENCH_QUICK=1 runs 1 only.
func benchReceivers() []int {
	if os.Getenv("VMSCATTER_MCBENCH_QUICK") == "1" {
		return []int{1}
	}
	return []int{1, 2, 4, 8}
}

func benchMulticast(loss float64, mtu int) testNet {
	return testNet{cfg: testConfig(8), setup: func(t *testing.T, n int) (Transport, []Transport) {
		_, src, rcv := newLab(t, n, mtu, loss)
		benchSrc = src
		mc := MulticastConfig{Group: netip.MustParseAddrPort("239.255.2.1:7403"), Iface: "eth0"}
		rs := make([]Transport, n)
		for i, h := range rcv {
			inHost(t, h, func() (err error) { rs[i], err = ListenMulticast(context.Background(), mc); return })
		}
		var s Transport
		inHost(t, src, func() (err error) { s, err = ListenMulticast(context.Background(), mc); return })
		return s, rs
	}}
}

func benchUnicast() testNet {
	tn := labUnicast(0)
	setup := tn.setup
	tn.setup = func(t *testing.T, n int) (Transport, []Transport) {
		s, rs := setup(t, n)
		benchSrc = benchLabSrc
		return s, rs
	}
	return tn
}

var benchLabSrc *lab.Host
