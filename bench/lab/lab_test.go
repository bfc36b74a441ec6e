package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("namespace lab needs root")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: run scripts/install-deps.sh", tool)
		}
	}
}

func newLab(t *testing.T, cfg Config) *Lab {
	t.Helper()
	l, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
		assertGone(t, l.Prefix)
	})
	return l
}

// assertGone fails if `ip netns list` still shows a namespace of the prefix.
func assertGone(t *testing.T, prefix string) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	if strings.Contains(string(out), prefix+"-") {
		t.Fatalf("namespaces of %s left behind:\n%s", prefix, out)
	}
}

func TestTCPBetweenHosts(t *testing.T) {
	needRoot(t)
	l := newLab(t, Config{Hosts: []string{"src", "a", "b"}})
	a, b := l.Host("a"), l.Host("b")
	if a.Addr.String() != "198.18.0.2" || l.Host("nope") != nil {
		t.Fatalf("addresses: a %v", a.Addr)
	}
	var ln net.Listener
	if err := b.Do(func() (err error) { ln, err = net.Listen("tcp", b.Addr.String()+":7400"); return }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Fprintf(c, "pong %s", line)
	}()
	var c net.Conn
	if err := a.Do(func() (err error) { c, err = net.Dial("tcp", b.Addr.String()+":7400"); return }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "ping\n")
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || reply != "pong ping\n" {
		t.Fatalf("reply %q, %v", reply, err)
	}
	if c.LocalAddr().(*net.TCPAddr).IP.String() != a.Addr.String() {
		t.Fatalf("dialled from %v", c.LocalAddr())
	}
	// Nothing of the lab is in the root namespace (checked without sending anything: the root namespace's default
	// route leads off the machine).
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, ad := range addrs {
		if ipn, ok := ad.(*net.IPNet); ok && benchNet.Contains(netip.MustParseAddr(ipn.IP.String()).Unmap()) {
			t.Fatalf("root namespace holds lab address %v", ipn)
		}
	}
	// Command runs inside the namespace too.
	out, err := a.Command(context.Background(), "ip", "-o", "-4", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "198.18.0.2/24") {
		t.Fatalf("ip addr in a: %v: %s", err, out)
	}
}

func TestMulticastReachesEveryReceiver(t *testing.T) {
	needRoot(t)
	for _, snooping := range []bool{false, true} {
		t.Run(fmt.Sprintf("snooping=%v", snooping), func(t *testing.T) {
			l := newLab(t, Config{Hosts: []string{"src", "a", "b"}, MTU: 9000, Snooping: snooping})
			group := &net.UDPAddr{IP: net.IPv4(239, 255, 7, 1), Port: 7401}
			var recvs []*ipv4.PacketConn
			for _, name := range []string{"a", "b"} {
				recvs = append(recvs, joinGroup(t, l.Host(name), group))
			}
			defer func() {
				for _, p := range recvs {
					p.Close()
				}
			}()
			var send net.PacketConn
			src := l.Host("src")
			if err := src.Do(func() (err error) { send, err = net.ListenPacket("udp4", src.Addr.String()+":0"); return }); err != nil {
				t.Fatal(err)
			}
			defer send.Close()
			// Repeat until both receivers have one (bounded): with snooping the bridge learns the joins from the
			// receivers' reports, and right after set-up even a flooding bridge may drop the first datagram.
			for _, p := range recvs {
				buf := make([]byte, 100)
				deadline := time.Now().Add(10 * time.Second)
				for {
					if _, err := send.WriteTo([]byte("hello group"), group); err != nil {
						t.Fatal(err)
					}
					p.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
					n, _, from, err := p.ReadFrom(buf)
					if err == nil {
						if string(buf[:n]) != "hello group" || from.(*net.UDPAddr).IP.String() != src.Addr.String() {
							t.Fatalf("got %q from %v", buf[:n], from)
						}
						break
					}
					if !errors.Is(err, os.ErrDeadlineExceeded) || time.Now().After(deadline) {
						t.Fatalf("receiver got nothing: %v", err)
					}

				}
			}
		})
	}
}

// blast offers n datagrams of size bytes from h to dst without ever waiting (MSG_DONTWAIT: a send the socket buffer
// cannot take fails with EAGAIN and is not retried), and returns the bytes offered, counting 28 header bytes each.
func blast(t *testing.T, h *Host, dst *net.UDPAddr, n, size int) uint64 {
	t.Helper()
	var c net.PacketConn
	if err := h.Do(func() (err error) { c, err = net.ListenPacket("udp4", h.Addr.String()+":0"); return }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	sa := &unix.SockaddrInet4{Port: dst.Port}
	copy(sa.Addr[:], dst.IP.To4())
	buf := make([]byte, size)
	var sendErr error
	raw.Control(func(fd uintptr) {
		for i := 0; i < n; i++ {
			err := unix.Sendto(int(fd), buf, unix.MSG_DONTWAIT, sa)
			if err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.ENOBUFS) {
				sendErr = err
				return
			}
		}
	})
	if sendErr != nil {
		t.Fatal(sendErr)
	}
	return uint64(n * (size + 28))
}

// sink opens a UDP socket on h that drops what it gets (with a big buffer), so that no ICMP errors flow back.
func sink(t *testing.T, h *Host) *net.UDPAddr {
	t.Helper()
	var c net.PacketConn
	if err := h.Do(func() (err error) { c, err = net.ListenPacket("udp4", h.Addr.String()+":0"); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if sc, ok := c.(syscall.Conn); ok {
		raw, _ := sc.SyscallConn()
		raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) })
	}
	go func() {
		buf := make([]byte, 65536)
		for {
			if _, _, err := c.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	return c.LocalAddr().(*net.UDPAddr)
}

func txDelta(t *testing.T, h *Host, f func()) uint64 {
	t.Helper()
	_, before, err := h.Counters()
	if err != nil {
		t.Fatal(err)
	}
	f()
	_, after, err := h.Counters()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d bytes left %s", after-before, h.Name)
	return after - before
}

func TestShapingVisibleInCounters(t *testing.T) {
	needRoot(t)
	l := newLab(t, Config{Hosts: []string{"a", "b"}})
	a, b := l.Host("a"), l.Host("b")
	dst := sink(t, b)
	const n, size = 5000, 1000
	var sent uint64
	// Unshaped, (nearly) everything leaves a.
	if got := txDelta(t, a, func() { sent = blast(t, a, dst, n, size) }); got < sent*9/10 {
		t.Fatalf("unshaped: %d of %d bytes left a", got, sent)
	}
	// 1 Mbit/s: the socket buffer fills behind htb's queue and refuses the rest of the burst, so a small part of
	// what was offered leaves a (about 200 KiB queued, plus 125 KB per second of burst).
	if err := a.Shape(Shaping{Rate: 1_000_000}); err != nil {
		t.Fatal(err)
	}
	if got := txDelta(t, a, func() { sent = blast(t, a, dst, n, size) }); got > sent/2 {
		t.Fatalf("rate-limited: %d of %d bytes left a", got, sent)
	}
	// 50% loss: about half leaves.
	if err := a.Shape(Shaping{Loss: 50}); err != nil {
		t.Fatal(err)
	}
	if got := txDelta(t, a, func() { sent = blast(t, a, dst, n, size) }); got < sent/5 || got > sent*4/5 {
		t.Fatalf("50%% loss: %d of %d bytes left a", got, sent)
	}
	// Ingress loss on b: a sends everything, b's port delivers about half.
	if err := a.Shape(Shaping{}); err != nil {
		t.Fatal(err)
	}
	if err := b.ShapeIngress(Shaping{Loss: 50}); err != nil {
		t.Fatal(err)
	}
	rxBefore, _, _ := b.Counters()
	if got := txDelta(t, a, func() { sent = blast(t, a, dst, n, size) }); got < sent*9/10 {
		t.Fatalf("cleared shaping: %d of %d bytes left a", got, sent)
	}
	rxAfter, _, _ := b.Counters()
	if got := rxAfter - rxBefore; got < sent/5 || got > sent*4/5 {
		t.Fatalf("ingress 50%% loss: %d of %d bytes reached b", got, sent)
	}
	// Loss limited to a prefix the traffic does not go to: all of it reaches b.
	if err := b.ShapeIngress(Shaping{Loss: 100, To: netip.MustParsePrefix("239.255.0.0/16")}); err != nil {
		t.Fatal(err)
	}
	rxBefore, _, _ = b.Counters()
	sent = blast(t, a, dst, n, size)
	rxAfter, _, _ = b.Counters()
	if got := rxAfter - rxBefore; got < sent*9/10 {
		t.Fatalf("loss only to 239.255/16: %d of %d bytes reached b", got, sent)
	}
	// And to its own address: none does.
	if err := b.ShapeIngress(Shaping{Loss: 100, To: netip.PrefixFrom(b.Addr, 32)}); err != nil {
		t.Fatal(err)
	}
	rxBefore, _, _ = b.Counters()
	sent = blast(t, a, dst, n, size)
	rxAfter, _, _ = b.Counters()
	if got := rxAfter - rxBefore; got > sent/10 {
		t.Fatalf("loss to %v: %d of %d bytes reached b", b.Addr, got, sent)
	}
	if err := b.ShapeIngress(Shaping{}); err != nil {
		t.Fatal(err)
	}
	// Delay needs netem, which minimal kernels lack.
	if err := a.Shape(Shaping{Delay: 5 * time.Millisecond}); errors.Is(err, ErrUnsupported) {
		t.Logf("delay: %v", err)
	} else if err != nil {
		t.Fatal(err)
	}
	if err := a.Shape(Shaping{Loss: 101}); !errors.Is(err, ErrConfig) {
		t.Fatalf("loss 101%%: %v", err)
	}
}

func TestTeardown(t *testing.T) {
	needRoot(t)
	// A failure half-way (a host namespace that already exists) removes what New created, and only that.
	if out, err := exec.Command("ip", "netns", "add", "vmsfail-b").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	defer deleteNS("vmsfail-b")
	if _, err := New(context.Background(), Config{Hosts: []string{"a", "b"}, Prefix: "vmsfail"}); err == nil {
		t.Fatal("New succeeded over an existing namespace")
	}
	names, _ := namespaces()
	if strings.Contains(strings.Join(names, " "), "vmsfail-a") || strings.Contains(strings.Join(names, " "), "vmsfail-br") ||
		!strings.Contains(strings.Join(names, " "), "vmsfail-b") {
		t.Fatalf("after a failed New: %v", names)
	}

	// A lab never closed is swept by prefix; nothing else is touched.
	l, err := New(context.Background(), Config{Hosts: []string{"a", "b", "c"}, Prefix: "vmssweep"})
	if err != nil {
		t.Fatal(err)
	}
	other := newLab(t, Config{Hosts: []string{"a"}, Prefix: "vmssweepx"})
	deleted, err := Sweep("vmssweep")
	if err != nil || len(deleted) != 4 {
		t.Fatalf("swept %v, %v", deleted, err)
	}
	assertGone(t, "vmssweep")
	if err := l.Close(); err != nil { // already swept: still fine
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Host("a").Do(func() error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("Do after Close: %v", err)
	}
	if err := other.Host("a").Do(func() error { return nil }); err != nil {
		t.Fatalf("a lab with a longer prefix was swept: %v", err)
	}
}

func TestConfigRejects(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{Hosts: []string{"a", "a"}},
		{Hosts: []string{"br"}},
		{Hosts: []string{"A"}},
		{Hosts: []string{"a"}, MTU: 100},
		{Hosts: []string{"a"}, Prefix: "bad-prefix"},
	} {
		if _, err := New(context.Background(), cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
	if _, err := Sweep("x y"); !errors.Is(err, ErrConfig) {
		t.Errorf("Sweep with a bad prefix: %v", err)
	}
}

func TestLossProgram(t *testing.T) {
	if p := lossProgram(50, netip.Prefix{}); p != "4,32 0 0 4294963256,53 0 1 2147483648,6 0 0 0,6 0 0 2" {
		t.Fatalf("50%%: %s", p)
	}
	if p := lossProgram(100, netip.Prefix{}); p != "1,6 0 0 2" {
		t.Fatalf("100%%: %s", p)
	}
	groups := netip.MustParsePrefix("239.255.0.0/16")
	if p := lossProgram(100, groups); p != "7,40 0 0 12,21 0 4 2048,32 0 0 30,84 0 0 4294901760,21 0 1 4026466304,6 0 0 2,6 0 0 0" {
		t.Fatalf("100%% to %v: %s", groups, p)
	}
	if p := lossProgram(50, groups); p != "10,40 0 0 12,21 0 7 2048,32 0 0 30,84 0 0 4294901760,21 0 4 4026466304,"+
		"32 0 0 4294963256,53 0 1 2147483648,6 0 0 0,6 0 0 2,6 0 0 0" {
		t.Fatalf("50%% to %v: %s", groups, p)
	}
}

// With snooping, every member of a group gets its port in the bridge's group table, however close together the
// members join: the source joins right after its receivers, and it must hear their acknowledgements. Under an
// IGMPv2 querier one member in about ten was left out (report suppression); this asserts the IGMPv3 querier.
func TestSnoopingKeepsEveryMember(t *testing.T) {
	needRoot(t)
	l := newLab(t, Config{Hosts: []string{"src", "a", "b"}, Snooping: true})
	ports := map[string]string{}
	for i, h := range l.Hosts() {
		ports[fmt.Sprintf("v%d", i)] = h.Name
	}
	for n := 1; n <= 20; n++ {
		group := &net.UDPAddr{IP: net.IPv4(239, 255, 9, byte(n)), Port: 7401}
		var conns []*ipv4.PacketConn
		for _, name := range []string{"a", "b", "src"} { // the receivers first, as the sender asks them to
			conns = append(conns, joinGroup(t, l.Host(name), group))
		}
		var members string
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			out, err := exec.Command("ip", "netns", "exec", l.BridgeNS, "bridge", "mdb", "show").CombinedOutput()
			if err != nil {
				t.Fatalf("bridge mdb show: %v: %s", err, out)
			}
			var in []string
			for _, line := range strings.Split(string(out), "\n") {
				f := strings.Fields(line)
				if len(f) >= 6 && f[5] == group.IP.String() {
					in = append(in, ports[f[3]])
				}
			}
			slices.Sort(in)
			if members = strings.Join(in, " "); members == "a b src" {
				break
			}
		}
		for _, p := range conns {
			p.Close()
		}
		if members != "a b src" {
			t.Fatalf("group %v: the bridge forwards it to %q, want every member (a b src)", group.IP, members)
		}
	}
}

// joinGroup opens a UDP socket on group's port in h's namespace and joins the group on h's interface.
func joinGroup(t *testing.T, h *Host, group *net.UDPAddr) *ipv4.PacketConn {
	t.Helper()
	var p *ipv4.PacketConn
	err := h.Do(func() error {
		c, err := net.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", group.Port))
		if err != nil {
			return err
		}
		ifi, err := net.InterfaceByName(h.Iface)
		if err != nil {
			c.Close()
			return err
		}
		p = ipv4.NewPacketConn(c)
		if err := p.JoinGroup(ifi, group); err != nil {
			p.Close()
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}
