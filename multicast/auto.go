package multicast

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmscatter/vmscatter/multicast/reliable"
	"github.com/vmscatter/vmscatter/multicast/wire"
)

// Auto mode: the sender first tries multicast and probes that every receiver hears the group; if one
// does not answer within the probe time, it falls back to the unicast fan-out. Receivers listen on both
// (ListenAuto) and answer over the path the sender last used.

// DefaultProbeTimeout is how long DialAuto waits for every receiver to answer a PROBE.
const DefaultProbeTimeout = 500 * time.Millisecond

// DialAuto starts a Sender on multicast if every receiver in unicast answers a probe on the group
// within probeTimeout (0: DefaultProbeTimeout), else on the unicast fan-out to the addresses in
// unicast. Sender.Mode says which was chosen.
func DialAuto(ctx context.Context, cfg Config, mc MulticastConfig, unicast map[ReceiverID]string, probeTimeout time.Duration) (*Sender, error) {
	if probeTimeout <= 0 {
		probeTimeout = DefaultProbeTimeout
	}
	var want []ReceiverID
	for id := range unicast {
		want = append(want, id)
	}
	tr, err := ListenMulticast(ctx, mc)
	if err == nil {
		s, err := NewSender(cfg, tr)
		if err != nil {
			tr.Close()
			return nil, err
		}
		heard, _, err := s.Probe(ctx, want, probeTimeout)
		if err != nil {
			s.Close()
			return nil, err
		}
		if len(heard) == len(want) {
			return s, nil
		}
		s.Close()
	}
	utr, uerr := DialUnicast(ctx, unicast)
	if uerr != nil {
		return nil, errors.Join(uerr, err)
	}
	return NewSender(cfg, utr)
}

// ListenAuto makes a receiver's transport that takes packets from the group (when mc.Group is set) and
// from a unicast listener on addr, and answers over whichever the sender's last packet came by.
func ListenAuto(ctx context.Context, mc MulticastConfig, addr string) (Transport, net.Addr, error) {
	u, la, err := ListenUnicast(ctx, addr)
	if err != nil {
		return nil, nil, err
	}
	subs := []Transport{u}
	if mc.Group.IsValid() {
		m, err := ListenMulticast(ctx, mc)
		if err != nil {
			u.Close()
			return nil, nil, err
		}
		subs = append(subs, m)
	}
	a := &autoTransport{subs: subs, in: make(chan autoPacket, inQueue), free: make(chan []byte, inQueue+2*len(subs)),
		done: make(chan struct{})}
	for range cap(a.free) {
		a.free <- make([]byte, bufSize)
	}
	a.last.Store(int32(len(subs) - 1))
	for i, s := range subs {
		a.wg.Add(1)
		go a.pump(i, s)
	}
	return a, la, nil
}

type autoPacket struct {
	from int
	b    []byte
	over bool // longer than b: dropped
}

type autoTransport struct {
	subs []Transport
	in   chan autoPacket
	// free holds the packet buffers: a pump takes one for each Recv and Recv gives it back once it has copied the
	// packet out, so that receiving allocates nothing (a buffer per packet was 150 MB/s of garbage at 200 Mbit/s).
	free chan []byte
	last atomic.Int32 // index of the sub the sender last used
	done chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

func (a *autoTransport) pump(i int, s Transport) {
	defer a.wg.Done()
	for {
		var b []byte
		select {
		case b = <-a.free:
		case <-a.done:
			return
		}
		n, err := s.Recv(b)
		if err != nil {
			return
		}
		over := n > len(b) // oversized: Recv reports it to its caller, which counts and drops it
		select {
		case a.in <- autoPacket{from: i, b: b[:min(n, len(b))], over: over}:
		case <-a.done:
			return
		}
	}
}

func (a *autoTransport) Recv(buf []byte) (int, error) {
	select {
	case p := <-a.in:
		defer func() { a.free <- p.b[:cap(p.b)] }()
		if p.over || len(p.b) > len(buf) {
			return len(buf) + 1, nil
		}
		// The header is clear: a packet from the sender tells which path it uses now.
		if len(p.b) >= wire.HeaderLen && binary.BigEndian.Uint16(p.b[6:]) == wire.SenderNode {
			a.last.Store(int32(p.from))
		}
		return copy(buf, p.b), nil
	case <-a.done:
		return 0, ErrClosed
	}
}

func (a *autoTransport) Send(to reliable.Dest, members wire.Mask, pkt []byte) error {
	return a.subs[a.last.Load()].Send(to, members, pkt)
}

func (a *autoTransport) Datagram() int {
	d := tcpDatagram
	for _, s := range a.subs {
		d = min(d, s.Datagram())
	}
	return d
}

func (a *autoTransport) Mode() string { return a.subs[a.last.Load()].Mode() }

func (a *autoTransport) Stats() TransportStats {
	var t TransportStats
	for _, s := range a.subs {
		st := s.Stats()
		t.PacketsSent += st.PacketsSent
		t.BytesSent += st.BytesSent
		t.PacketsRecv += st.PacketsRecv
		t.BytesRecv += st.BytesRecv
		t.SendDrops += st.SendDrops
	}
	return t
}

func (a *autoTransport) Close() error {
	var err error
	a.once.Do(func() {
		close(a.done)
		for _, s := range a.subs {
			err = errors.Join(err, s.Close())
		}
		a.wg.Wait()
	})
	return err
}
