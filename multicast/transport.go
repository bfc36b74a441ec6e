package multicast

import (
	"errors"
	"sync/atomic"

	"github.com/vmscatter/vmscatter/multicast/reliable"
	"github.com/vmscatter/vmscatter/multicast/wire"
)

// Transport carries sealed packets between the sender and the receivers. Every binding implements it:
// UDP multicast (ListenMulticast), TCP unicast fan-out (DialUnicast, ListenUnicast), the auto receiver
// (ListenAuto) and the in-memory network of the tests (NewMemNet).
//
// A Transport is owned by one Sender or Receiver, which calls Send from one goroutine and Recv from
// another; Close unblocks Recv.
type Transport interface {
	// Send sends one sealed packet to an address class. members names the receivers that need a ToGroup
	// packet (nil: all); a multicast binding ignores it, a unicast binding sends to each of them.
	// Send must not keep pkt after it returns. A full queue drops the packet (the engine repairs it).
	Send(to reliable.Dest, members wire.Mask, pkt []byte) error
	// Recv copies the next packet into buf and returns its length. A packet longer than buf is
	// reported with a length over len(buf) and dropped by the caller.
	Recv(buf []byte) (int, error)
	// Datagram is the largest packet the transport carries whole.
	Datagram() int
	// Mode names the binding: "multicast", "unicast" or "memory".
	Mode() string
	// Stats counts packets and bytes.
	Stats() TransportStats
	Close() error
}

// TransportStats counts a transport's traffic. Bytes are packet bytes, without IP/UDP/TCP headers.
type TransportStats struct {
	PacketsSent, BytesSent, PacketsRecv, BytesRecv, SendDrops uint64
}

// ErrClosed is returned by a closed transport.
var ErrClosed = errors.New("multicast: transport closed")

// counters is the shared implementation of TransportStats, safe for concurrent use.
type counters struct {
	packetsSent, bytesSent, packetsRecv, bytesRecv, sendDrops atomic.Uint64
}

func (c *counters) sent(n int) { c.packetsSent.Add(1); c.bytesSent.Add(uint64(n)) }
func (c *counters) recv(n int) { c.packetsRecv.Add(1); c.bytesRecv.Add(uint64(n)) }

func (c *counters) stats() TransportStats {
	return TransportStats{c.packetsSent.Load(), c.bytesSent.Load(), c.packetsRecv.Load(), c.bytesRecv.Load(), c.sendDrops.Load()}
}
