package multicast

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"testing"

	"github.com/vmscatter/vmscatter/bench/lab"
)

// Namespace tests use bench/lab: one namespace per host, veths to a bridge in a namespace of its own,
// 198.18.0.0/24 addresses, loss from a tc filter on each host's bridge port (the kernel here has no
// sch_netem; lab's classic-BPF drop filter does the same job). Nothing touches the root namespace.

func needLab(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: network namespaces need root")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: %s not installed", tool)
		}
	}
}

// newLab makes a sender host "src" and n receiver hosts, and drops loss percent of the packets delivered
// to every host (data to the receivers, NAKs and COMPLETEs to the sender and the other receivers).
func newLab(t *testing.T, n, mtu int, loss float64) (*lab.Lab, *lab.Host, []*lab.Host) {
	t.Helper()
	needLab(t)
	names := []string{"src"}
	for i := range n {
		names = append(names, fmt.Sprintf("r%d", i))
	}
	l, err := lab.New(context.Background(), lab.Config{Hosts: names, MTU: mtu})
	if err != nil {
		t.Skipf("skipping: cannot build the namespace lab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("lab close: %v", err)
		}
	})
	if loss > 0 {
		for _, h := range l.Hosts() {
			if err := h.ShapeIngress(lab.Shaping{Loss: loss}); err != nil {
				t.Fatalf("shape %s: %v", h.Name, err)
			}
		}
	}
	hs := l.Hosts()
	return l, hs[0], hs[1:]
}

// inHost runs f inside h's namespace after checking that its interface is the lab's, never the root's.
func inHost(t *testing.T, h *lab.Host, f func() error) {
	t.Helper()
	err := h.Do(func() error {
		ifi, err := net.InterfaceByName(h.Iface)
		if err != nil {
			return err
		}
		addrs, err := ifi.Addrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if p, ok := a.(*net.IPNet); ok && p.IP.Equal(h.Addr.AsSlice()) {
				return f()
			}
		}
		return fmt.Errorf("interface %s in %s lacks %v: not the lab's namespace", h.Iface, h.NS, h.Addr)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func labMulticast(loss float64, mtu int) testNet {
	return testNet{name: fmt.Sprintf("netns-udp-mtu%d-loss%v", mtu, loss), cfg: testConfig(6), setup: func(t *testing.T, n int) (Transport, []Transport) {
		_, src, rcv := newLab(t, n, mtu, loss)
		mc := MulticastConfig{Group: netip.MustParseAddrPort("239.255.1.1:7401"), Iface: "eth0"}
		rs := make([]Transport, n)
		for i, h := range rcv {
			inHost(t, h, func() (err error) { rs[i], err = ListenMulticast(context.Background(), mc); return })
		}
		var s Transport
		inHost(t, src, func() (err error) { s, err = ListenMulticast(context.Background(), mc); return })
		return s, rs
	}}
}

func labUnicast(loss float64) testNet {
	return testNet{name: fmt.Sprintf("netns-tcp-loss%v", loss), cfg: testConfig(7), setup: func(t *testing.T, n int) (Transport, []Transport) {
		_, src, rcv := newLab(t, n, 1500, loss)
		benchLabSrc = src
		rs := make([]Transport, n)
		addrs := map[ReceiverID]string{}
		for i, h := range rcv {
			inHost(t, h, func() error {
				tr, a, err := ListenUnicast(context.Background(), h.Addr.String()+":7402")
				rs[i], addrs[ReceiverID(i)] = tr, fmt.Sprint(a)
				return err
			})
		}
		var s Transport
		inHost(t, src, func() (err error) { s, err = DialUnicast(context.Background(), addrs); return })
		return s, rs
	}}
}

func TestConformanceNamespaces(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: namespace tests in -short mode")
	}
	for _, loss := range []float64{0, 1, 5, 20} {
		tn := labMulticast(loss, 1500)
		t.Run(tn.name, func(t *testing.T) {
			session(t, tn, 3, standardBatches(uint64(loss), 3, 400))
		})
	}
	tn := labUnicast(5)
	t.Run(tn.name, func(t *testing.T) { session(t, tn, 2, standardBatches(5, 2, 200)) })
}
