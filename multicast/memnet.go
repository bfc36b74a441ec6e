package multicast

import (
	"math/rand/v2"
	"sync"

	"github.com/vmscatter/vmscatter/multicast/reliable"
	"github.com/vmscatter/vmscatter/multicast/wire"
)

// MemNet is an in-memory network for tests: one sender, receivers by id, independent random loss and
// duplication per delivery from a seeded RNG, bounded inboxes (a full inbox drops, like a socket
// buffer). Safe for concurrent use.
type MemNet struct {
	mu        sync.Mutex
	rng       *rand.Rand
	loss, dup float64
	datagram  int
	sender    *memPort
	receivers map[uint16]*memPort
}

const memInbox = 4096

// NewMemNet makes a network that loses and duplicates each delivery with the given probabilities.
func NewMemNet(seed uint64, loss, dup float64) *MemNet {
	return &MemNet{rng: rand.New(rand.NewPCG(seed, 1)), loss: loss, dup: dup, datagram: 1500 - wire.IPv4UDPOverhead,
		receivers: make(map[uint16]*memPort)}
}

// Sender is the sender's transport.
func (n *MemNet) Sender() Transport {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sender = n.port(wire.SenderNode)
	return n.sender
}

// Receiver is receiver id's transport.
func (n *MemNet) Receiver(id uint16) Transport {
	n.mu.Lock()
	defer n.mu.Unlock()
	p := n.port(id)
	n.receivers[id] = p
	return p
}

func (n *MemNet) port(id uint16) *memPort {
	return &memPort{net: n, id: id, inbox: make(chan []byte, memInbox), done: make(chan struct{})}
}

func (n *MemNet) deliver(p *memPort, pkt []byte) {
	if p == nil || n.rng.Float64() < n.loss {
		return
	}
	copies := 1
	if n.rng.Float64() < n.dup {
		copies = 2
	}
	for range copies {
		select {
		case p.inbox <- pkt:
		default: // inbox full: dropped
		}
	}
}

type memPort struct {
	net   *MemNet
	id    uint16
	inbox chan []byte
	done  chan struct{}
	once  sync.Once
	c     counters
}

func (p *memPort) Send(to reliable.Dest, _ wire.Mask, pkt []byte) error {
	select {
	case <-p.done:
		return ErrClosed
	default:
	}
	b := append([]byte(nil), pkt...)
	n := p.net
	n.mu.Lock()
	defer n.mu.Unlock()
	p.c.sent(len(b))
	if p.id != wire.SenderNode {
		n.deliver(n.sender, b)
		if to == reliable.ToSender {
			return nil
		}
	}
	for id, r := range n.receivers {
		if id != p.id {
			n.deliver(r, b)
		}
	}
	return nil
}

func (p *memPort) Recv(buf []byte) (int, error) {
	select {
	case b := <-p.inbox:
		p.c.recv(len(b))
		return copy(buf, b), nil
	case <-p.done:
		return 0, ErrClosed
	}
}

func (p *memPort) Datagram() int         { return p.net.datagram }
func (p *memPort) Mode() string          { return "memory" }
func (p *memPort) Stats() TransportStats { return p.c.stats() }
func (p *memPort) Close() error          { p.once.Do(func() { close(p.done) }); return nil }
