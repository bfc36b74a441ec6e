package bench

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/bench/fixture"
	mwire "github.com/vmscatter/vmscatter/multicast/wire"
)

// primePort is the UDP port of every prime group (scatter/source's multicastPort).
const primePort = 7450

// TestNoNonceReuseOnTheWire captures the prime's multicast data plane on the source host's link while three guests
// move to three targets over multicast (several groups, one per target set), and checks the AEAD's nonce rule where
// it matters, on the wire: within a session (a group: its own key), no (node, packet number) pair — the nonce —
// comes with two different packets. Packets of every node count: the sender's and the receivers' NAKs and
// COMPLETEs that reach the source's link.
func TestNoNonceReuseOnTheWire(t *testing.T) {
	requireLab(t)
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Skip("tcpdump not installed (apt-get install tcpdump): the capture needs it")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	c := newCluster(t, ctx, ClusterConfig{Targets: 3, TargetCapacity: "200M"})
	guests, err := c.StartGuests(ctx, "vm", 3, fixture.GuestOptions{MemoryMiB: 128, Workload: workload})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range guests {
		waitOK(t, ctx, g.SerialPath, 3)
	}
	pcap := filepath.Join(t.TempDir(), "prime.pcap")
	stop := startCapture(t, ctx, c, pcap)
	res, err := c.Send(ctx, guests, "--transport", "multicast")
	dropped := stop()
	if err != nil {
		t.Fatal(err)
	}
	if res.Exit != 0 {
		t.Fatalf("exit %d\n%s", res.Exit, res.Stderr)
	}
	if res.Report.Transport != "multicast" {
		t.Fatalf("transport %q, want multicast", res.Report.Transport)
	}
	for _, v := range res.Report.VMs {
		if v.Status != "migrated" {
			t.Fatalf("%s: %s: %s", v.Name, v.Status, v.Error)
		}
	}
	st, err := checkNonces(pcap)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("captured %d prime packets (%d from the sender, %d sessions, %d repeated with the same bytes); tcpdump: %s",
		st.packets, st.fromSender, len(st.sessions), st.sameRepeats, dropped)
	for _, r := range st.reused {
		t.Errorf("nonce reused with different bytes: %s", r)
	}
	if st.fromSender == 0 {
		t.Fatal("no prime packet from the sender captured: the test saw nothing")
	}
}

// startCapture runs tcpdump on the source host's interface, on the prime's groups and port alone, until the
// function it returns is called; that stops it (SIGINT, by its PID) and returns tcpdump's own count line.
func startCapture(t *testing.T, ctx context.Context, c *Cluster, path string) func() string {
	t.Helper()
	filter := fmt.Sprintf("dst net 239.255.0.0/16 and udp dst port %d", primePort)
	cmd := c.Source.Command(ctx, "tcpdump", "-i", c.Source.Iface, "-n", "-s", "0", "-B", "16384", "-U", "-w", path, filter)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Skipf("tcpdump cannot run: %v", err)
	}
	lines := bufio.NewScanner(stderr)
	listening := false
	for lines.Scan() {
		if strings.Contains(lines.Text(), "listening on") {
			listening = true
			break
		}
	}
	if !listening {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Skip("tcpdump did not start listening on the source's link")
	}
	rest := make(chan string, 1)
	go func() {
		var b strings.Builder
		for lines.Scan() {
			if strings.Contains(lines.Text(), "dropped") || strings.Contains(lines.Text(), "captured") {
				b.WriteString(lines.Text() + "; ")
			}
		}
		rest <- b.String()
	}()
	stopped := false
	stop := func() string {
		if stopped {
			return ""
		}
		stopped = true
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		return <-rest
	}
	t.Cleanup(func() { stop() })
	return stop
}

// nonceStats is what checkNonces found.
type nonceStats struct {
	packets, fromSender, sameRepeats int
	sessions                         map[uint64]int
	reused                           []string
}

type nonceKey struct {
	session uint64
	node    uint16
	pn      uint64
}

// checkNonces reads a pcap file of Ethernet frames and checks that no (session, node, packet number) comes with
// two different datagrams.
func checkNonces(path string) (*nonceStats, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	var gh [24]byte
	if _, err := io.ReadFull(r, gh[:]); err != nil {
		return nil, fmt.Errorf("pcap header: %w", err)
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(gh[:]) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return nil, errors.New("not a pcap file")
	}
	if lt := bo.Uint32(gh[20:]); lt != 1 {
		return nil, fmt.Errorf("pcap link type %d, want Ethernet (1)", lt)
	}
	st := &nonceStats{sessions: map[uint64]int{}}
	seen := map[nonceKey][32]byte{}
	var rh [16]byte
	buf := make([]byte, 1<<16)
	for {
		if _, err := io.ReadFull(r, rh[:]); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("pcap record: %w", err)
		}
		n := int(bo.Uint32(rh[8:]))
		if n > len(buf) {
			return nil, fmt.Errorf("pcap record of %d bytes", n)
		}
		frame := buf[:n]
		if _, err := io.ReadFull(r, frame); err != nil {
			return nil, fmt.Errorf("pcap record: %w", err)
		}
		if bo.Uint32(rh[12:]) != uint32(n) {
			return nil, errors.New("a packet was captured truncated (snap length)")
		}
		payload, ok := udpPayload(frame)
		if !ok {
			continue
		}
		h, _, err := mwire.ParseHeader(payload)
		if err != nil {
			continue // not a prime packet
		}
		st.packets++
		st.sessions[h.Session]++
		if h.Node == mwire.SenderNode {
			st.fromSender++
		}
		k := nonceKey{h.Session, h.Node, h.PN}
		sum := sha256.Sum256(payload)
		if prev, ok := seen[k]; ok {
			if prev == sum {
				st.sameRepeats++
			} else {
				st.reused = append(st.reused, fmt.Sprintf("session %x node %#x packet %d", h.Session, h.Node, h.PN))
			}
			continue
		}
		seen[k] = sum
	}
	return st, nil
}

// udpPayload returns the UDP payload of an Ethernet frame carrying an unfragmented IPv4 UDP datagram.
func udpPayload(frame []byte) ([]byte, bool) {
	if len(frame) < 14+20+8 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
		return nil, false
	}
	ip := frame[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < 20 || len(ip) < ihl+8 || ip[9] != 17 {
		return nil, false
	}
	if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
		return nil, false // a fragment
	}
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if total > len(ip) || total < ihl+8 {
		return nil, false
	}
	udp := ip[ihl:total]
	return udp[8:], true
}

// TestCheckNoncesFindsReuse holds the checker itself: a synthetic capture with one nonce sent twice with the same
// bytes and one sent with different bytes gives exactly the second as reused.
func TestCheckNoncesFindsReuse(t *testing.T) {
	frame := func(node uint16, pn uint64, body byte) []byte {
		p := mwire.AppendHeader(nil, mwire.Header{Type: mwire.TypeData, Node: node, Session: 42, PN: pn})
		p = append(p, body, body, body)
		udp := binary.BigEndian.AppendUint16(nil, 40000)
		udp = binary.BigEndian.AppendUint16(udp, primePort)
		udp = binary.BigEndian.AppendUint16(udp, uint16(8+len(p)))
		udp = append(binary.BigEndian.AppendUint16(udp, 0), p...)
		ip := []byte{0x45, 0, 0, 0, 0, 0, 0x40, 0, 1, 17, 0, 0, 198, 18, 0, 1, 239, 255, 1, 1}
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
		eth := append(make([]byte, 12), 0x08, 0x00)
		return append(append(eth, ip...), udp...)
	}
	out := binary.LittleEndian.AppendUint32(nil, 0xa1b2c3d4)
	out = append(out, 2, 0, 4, 0)
	out = append(out, make([]byte, 8)...)
	out = binary.LittleEndian.AppendUint32(out, 65535)
	out = binary.LittleEndian.AppendUint32(out, 1)
	for _, f := range [][]byte{frame(mwire.SenderNode, 1, 'a'), frame(mwire.SenderNode, 1, 'a'), frame(mwire.SenderNode, 2, 'b'),
		frame(3, 2, 'c'), frame(mwire.SenderNode, 2, 'B')} {
		out = append(out, make([]byte, 8)...)
		out = binary.LittleEndian.AppendUint32(out, uint32(len(f)))
		out = binary.LittleEndian.AppendUint32(out, uint32(len(f)))
		out = append(out, f...)
	}
	path := filepath.Join(t.TempDir(), "synthetic.pcap")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := checkNonces(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.packets != 5 || st.fromSender != 4 || st.sameRepeats != 1 || len(st.reused) != 1 ||
		st.reused[0] != fmt.Sprintf("session 2a node %#x packet 2", mwire.SenderNode) {
		t.Fatalf("%+v", st)
	}
}
