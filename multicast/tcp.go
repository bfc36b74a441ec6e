package multicast

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/vmscatter/vmscatter/multicast/reliable"
	"github.com/vmscatter/vmscatter/multicast/wire"
)

// The unicast fan-out binding: the sender holds one TCP connection to each receiver and writes every
// group packet once per member. Packets are the same sealed packets as on UDP, framed by a 2-byte
// big-endian length. Each connection has a bounded write queue; when it is full the packet is dropped
// for that receiver only, so a slow receiver costs repairs to itself and never stalls the others.

const (
	tcpQueue    = 4096 // packets queued per connection
	tcpInQueue  = 256  // packets received, all connections together
	tcpMaxConns = 8    // connections a receiver keeps
	// tcpDatagram: TCP has no MTU to respect; use jumbo-sized packets.
	tcpDatagram = jumboDatagram
)

type tcpPeer struct {
	conn net.Conn
	q    chan []byte
}

type tcpTransport struct {
	mode   string
	ctx    context.Context
	cancel context.CancelFunc
	in     chan []byte
	wg     sync.WaitGroup
	ln     net.Listener
	c      counters

	mu    sync.Mutex
	peers map[ReceiverID]*tcpPeer // sender side
	conns []*tcpPeer              // receiver side, newest last
}

func newTCP() *tcpTransport {
	ctx, cancel := context.WithCancel(context.Background())
	return &tcpTransport{mode: "unicast", ctx: ctx, cancel: cancel, in: make(chan []byte, tcpInQueue),
		peers: make(map[ReceiverID]*tcpPeer)}
}

// DialUnicast connects the sender to every receiver's unicast address (ListenUnicast on their side).
func DialUnicast(ctx context.Context, addrs map[ReceiverID]string) (Transport, error) {
	t := newTCP()
	var d net.Dialer
	for id, a := range addrs {
		if int(id) >= wire.MaxReceivers {
			t.Close()
			return nil, fmt.Errorf("multicast: receiver id %d over %d", id, wire.MaxReceivers-1)
		}
		c, err := d.DialContext(ctx, "tcp", a)
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("multicast: dial receiver %d at %s: %w", id, a, err)
		}
		t.peers[id] = t.start(c)
	}
	return t, nil
}

// ListenUnicast listens for the sender's connection on addr (host:port). Addr reports the address.
func ListenUnicast(ctx context.Context, addr string) (Transport, net.Addr, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	t := newTCP()
	t.ln = ln
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p := t.start(c)
			t.mu.Lock()
			t.conns = append(t.conns, p)
			if len(t.conns) > tcpMaxConns {
				t.conns[0].conn.Close()
				t.conns = t.conns[1:]
			}
			t.mu.Unlock()
		}
	}()
	return t, ln.Addr(), nil
}

// start runs a connection's reader and writer.
func (t *tcpTransport) start(c net.Conn) *tcpPeer {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	p := &tcpPeer{conn: c, q: make(chan []byte, tcpQueue)}
	t.wg.Add(2)
	go func() { // writer
		defer t.wg.Done()
		defer c.Close()
		w := bufio.NewWriterSize(c, 64<<10)
		var hdr [2]byte
		for {
			var pkt []byte
			select {
			case pkt = <-p.q:
			case <-t.ctx.Done():
				return
			}
			for {
				binary.BigEndian.PutUint16(hdr[:], uint16(len(pkt)))
				w.Write(hdr[:])
				if _, err := w.Write(pkt); err != nil {
					return
				}
				select {
				case pkt = <-p.q:
					continue
				default:
				}
				break
			}
			if w.Flush() != nil {
				return
			}
		}
	}()
	go func() { // reader
		defer t.wg.Done()
		defer c.Close()
		r := bufio.NewReaderSize(c, 64<<10)
		var hdr [2]byte
		for {
			if _, err := io.ReadFull(r, hdr[:]); err != nil {
				return
			}
			n := int(binary.BigEndian.Uint16(hdr[:]))
			if n > wire.MaxPacket {
				return // not our framing: drop the connection
			}
			b := make([]byte, n)
			if _, err := io.ReadFull(r, b); err != nil {
				return
			}
			select {
			case t.in <- b:
			case <-t.ctx.Done():
				return
			}
		}
	}()
	return p
}

func (t *tcpTransport) enqueue(p *tcpPeer, pkt []byte) {
	select {
	case p.q <- pkt:
		t.c.sent(len(pkt))
	default:
		t.c.sendDrops.Add(1)
	}
}

func (t *tcpTransport) Send(_ reliable.Dest, members wire.Mask, pkt []byte) error {
	if t.ctx.Err() != nil {
		return ErrClosed
	}
	b := append([]byte(nil), pkt...) // shared, read-only, by every queue
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ln != nil { // receiver: to the sender, over the newest connection
		if n := len(t.conns); n > 0 {
			t.enqueue(t.conns[n-1], b)
		}
		return nil
	}
	for id, p := range t.peers {
		if members == nil || members.Has(id) {
			t.enqueue(p, b)
		}
	}
	return nil
}

func (t *tcpTransport) Recv(buf []byte) (int, error) {
	select {
	case b := <-t.in:
		t.c.recv(len(b))
		if len(b) > len(buf) {
			return len(buf) + 1, nil
		}
		return copy(buf, b), nil
	case <-t.ctx.Done():
		return 0, ErrClosed
	}
}

func (t *tcpTransport) Datagram() int         { return tcpDatagram }
func (t *tcpTransport) Mode() string          { return t.mode }
func (t *tcpTransport) Stats() TransportStats { return t.c.stats() }

// Close closes the listener and every connection and waits for their goroutines.
func (t *tcpTransport) Close() error {
	t.cancel()
	if t.ln != nil {
		t.ln.Close()
	}
	t.mu.Lock()
	for _, p := range t.peers {
		p.conn.Close()
	}
	for _, p := range t.conns {
		p.conn.Close()
	}
	t.mu.Unlock()
	t.wg.Wait()
	return nil
}
