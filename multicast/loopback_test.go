package multicast

import (
	"context"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

var portSeq atomic.Uint32

// testGroup is a group in 239.255.0.0/16 and a port unlikely to collide with a parallel test run.
func testGroup() netip.AddrPort {
	n := portSeq.Add(1)
	pid := uint32(os.Getpid())
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{239, 255, byte(pid >> 8), byte(pid)}), uint16(20000+(pid%2000)*10+n%10))
}

func needLoopbackMulticast(t *testing.T) {
	ifi, err := net.InterfaceByName("lo")
	if err != nil || ifi.Flags&net.FlagUp == 0 {
		t.Skip("skipping: no loopback interface lo that is up")
	}
}

func loopbackMulticast() testNet {
	return testNet{name: "udp-lo", cfg: testConfig(2), setup: func(t *testing.T, n int) (Transport, []Transport) {
		needLoopbackMulticast(t)
		mc := MulticastConfig{Group: testGroup(), Iface: "lo"}
		rs := make([]Transport, n)
		for i := range rs {
			tr, err := ListenMulticast(context.Background(), mc)
			if err != nil {
				t.Fatal(err)
			}
			rs[i] = tr
		}
		s, err := ListenMulticast(context.Background(), mc)
		if err != nil {
			t.Fatal(err)
		}
		return s, rs
	}}
}

func loopbackUnicast() testNet {
	return testNet{name: "tcp-lo", cfg: testConfig(3), setup: func(t *testing.T, n int) (Transport, []Transport) {
		rs := make([]Transport, n)
		addrs := map[ReceiverID]string{}
		for i := range rs {
			tr, a, err := ListenUnicast(context.Background(), "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			rs[i] = tr
			addrs[ReceiverID(i)] = a.String()
		}
		s, err := DialUnicast(context.Background(), addrs)
		if err != nil {
			t.Fatal(err)
		}
		return s, rs
	}}
}

func TestConformanceLoopbackMulticast(t *testing.T) { conformance(t, loopbackMulticast(), 400) }
func TestConformanceLoopbackUnicast(t *testing.T)   { conformance(t, loopbackUnicast(), 400) }

// autoSession runs the auto binding: the receivers listen on unicast and (if joinGroup) on the group;
// the sender probes and picks. It checks delivery and that the mode is the expected one.
func autoSession(t *testing.T, joinGroup bool, want string) {
	needLoopbackMulticast(t)
	mc := MulticastConfig{Group: testGroup(), Iface: "lo"}
	cfg := testConfig(4)
	n := 2
	var recvGroup MulticastConfig
	if joinGroup {
		recvGroup = mc
	}
	tn := testNet{name: "auto-" + want, cfg: cfg}
	var snd *Sender
	tn.setup = func(t *testing.T, n int) (Transport, []Transport) {
		rs := make([]Transport, n)
		addrs := map[ReceiverID]string{}
		for i := range rs {
			tr, a, err := ListenAuto(context.Background(), recvGroup, "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			rs[i] = tr
			addrs[ReceiverID(i)] = a.String()
		}
		// The receivers must be running to answer probes: DialAuto happens in sendWith, below.
		autoAddrs = addrs
		return nil, rs
	}
	autoDial = func(ctx context.Context) (*Sender, error) {
		var err error
		snd, err = DialAuto(ctx, cfg, mc, autoAddrs, 300*time.Millisecond)
		return snd, err
	}
	defer func() { autoDial = nil }()
	res := session(t, tn, n, standardBatches(9, n, 100))
	for _, r := range res {
		if r.Mode != want {
			t.Fatalf("auto chose %q, want %q", r.Mode, want)
		}
	}
}

// autoDial, when set, makes session's sender after its receivers run (auto mode must probe them).
var (
	autoDial  func(ctx context.Context) (*Sender, error)
	autoAddrs map[ReceiverID]string
)

func TestAutoPicksMulticast(t *testing.T)     { autoSession(t, true, "multicast") }
func TestAutoFallsBackToUnicast(t *testing.T) { autoSession(t, false, "unicast") }
func TestGroupMustBeMulticast(t *testing.T) {
	_, err := ListenMulticast(context.Background(), MulticastConfig{Group: netip.MustParseAddrPort("127.0.0.1:9"), Iface: "lo"})
	if err == nil {
		t.Fatal("unicast address accepted as a group")
	}

}
