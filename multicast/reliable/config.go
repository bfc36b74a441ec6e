// Package reliable is the reliability engine of vmscatter's data plane: a pure state machine, one for the
// sender and one for each receiver, in the style of etcd-raft and quic-go's loss detection. It owns no
// sockets, timers or goroutines. The caller feeds it inputs with the current time (Start, OnPacket,
// Tick) and carries out its outputs (Ready: packets to send and to which address class, objects
// delivered, batches finished, and when to call Tick next).
//
// The protocol (docs/protocol-data.md has the rules in full):
//
//   - The sender splits each batch (a member set and a list of objects) into transfers of at most
//     wire.MaxTransferChunks chunks. Every chunk fits one datagram and names its transfer, the transfer's
//     chunk count and its members, so receivers need no handshake before data.
//   - Chunks form FEC blocks of Config.Block chunks. Once a block is wholly sent, a receiver that lacks n
//     of its symbols NAKs (to the group, after a random delay) n of its missing chunks. A receiver that
//     hears another member ask for at least as many symbols of a block holds its own NAK (suppression).
//     The sender answers, ahead of new data, with new Reed-Solomon parity shards of the block: as many as
//     the neediest member asked for, less those it sent less than a repair hold ago. Any Block symbols
//     of a block rebuild it, so one parity shard repairs different losses at different members.
//   - When every chunk of a transfer was sent once, the sender POLLs the members that have not confirmed;
//     they answer with NAKs (possibly empty) or COMPLETE. Only a COMPLETE member counts as holding the data.
//   - Rate: a token bucket at the current rate, never above Config.RateBps. A member losing more than its
//     learned loss floor explains makes the sender try a rate a quarter lower; if its loss falls, or it
//     takes as many packets as before, that was congestion and the lower rate stays, else the loss is
//     random, becomes its floor, and the rate goes back (rate.go). So the slowest receiver governs and a
//     stationary random loss does not lower the rate.
//   - A member is dropped from the session, reported, and sent a LEAVE when it stays above Config.SlowLoss
//     for Config.SlowAfter, is silent for Config.DeadAfter while the sender waits on it, or still lacks
//     data Config.StragglerAfter after the others (at least three quarters of the members) confirmed. The others go on.
package reliable

import (
	"time"

	"github.com/vmscatter/vmscatter/multicast/wire"
)

// Config tunes both engines. Zero fields take the defaults of Defaults.
type Config struct {
	RateBps    int64         // maximum send rate in bits per second, counting IP and UDP headers
	MinRateBps int64         // the rate never drops below this (default RateBps/50)
	Datagram   int           // UDP payload bytes per packet (link MTU - 28); default 1472
	Block      int           // chunks per FEC block, 1..128 (default 128); only the sender's matters
	RTT        time.Duration // expected round trip; scales the timers below (default 5 ms)
	NakDelay   time.Duration // receivers wait a random time in [0, NakDelay) before a NAK (default RTT)
	NakHold    time.Duration // a chunk NAKed (by us or another) is not NAKed again for this long (default 4 RTT)
	RepairHold time.Duration // the sender repairs one chunk at most once per this (default 2 RTT)
	PollEvery  time.Duration // interval of POLLs once a transfer is fully sent (default 4 RTT)
	RateWindow time.Duration // loss is measured and the rate adapted once per window (default 20 ms)
	DeadAfter  time.Duration // a member silent this long while awaited is dropped (default 3 s)
	SlowLoss   float64       // a member losing more than this fraction ... (default 0.4)
	SlowAfter  time.Duration // ... for this long is dropped (default 5 s)
	// StragglerAfter: a member still incomplete this long after all others confirmed is dropped (default 30 s).
	StragglerAfter time.Duration
}

// Defaults fills the zero fields of c.
func (c Config) Defaults() Config {
	if c.RateBps <= 0 {
		c.RateBps = 1e9
	}
	if c.MinRateBps <= 0 {
		c.MinRateBps = c.RateBps / 50
	}
	if c.MinRateBps > c.RateBps {
		c.MinRateBps = c.RateBps
	}
	if c.Datagram <= 0 {
		c.Datagram = 1500 - wire.IPv4UDPOverhead
	}
	if c.Datagram > wire.MaxPacket {
		c.Datagram = wire.MaxPacket
	}
	if c.Block <= 0 {
		c.Block = 128
	}
	c.Block = min(c.Block, wire.MaxBlockShards/2) // at least as many parity shards as data shards
	if c.RTT <= 0 {
		c.RTT = 5 * time.Millisecond
	}
	if c.NakDelay <= 0 {
		c.NakDelay = c.RTT
	}
	if c.NakHold <= 0 {
		c.NakHold = 4 * c.RTT
	}
	if c.RepairHold <= 0 {
		c.RepairHold = 2 * c.RTT
	}
	if c.PollEvery <= 0 {
		c.PollEvery = 4 * c.RTT
	}
	if c.RateWindow <= 0 {
		c.RateWindow = 20 * time.Millisecond
	}
	if c.DeadAfter <= 0 {
		c.DeadAfter = 3 * time.Second
	}
	if c.SlowLoss <= 0 {
		c.SlowLoss = 0.4
	}
	if c.SlowAfter <= 0 {
		c.SlowAfter = 5 * time.Second
	}
	if c.StragglerAfter <= 0 {
		c.StragglerAfter = 30 * time.Second
	}
	return c
}

// Object is one content: an id and its bytes (at most wire.MaxObject).
type Object struct {
	ID      uint64
	Payload []byte
}

// Dest is the address class of an outgoing packet.
type Dest uint8

const (
	// ToGroup goes to the multicast group (a unicast binding sends it to Outgoing.Members, or to every
	// receiver when Members is nil).
	ToGroup Dest = iota
	// ToSender goes from a receiver to the sender (a multicast binding may send it to the group).
	ToSender
)

// Outgoing is one packet the caller must send.
type Outgoing struct {
	To      Dest
	Members wire.Mask // for ToGroup from the sender: the receivers that need it
	Msg     wire.Message
}

// bitset is a fixed-size set of chunk indexes.
type bitset []uint64

func newBitset(n uint32) bitset       { return make(bitset, (n+63)/64) }
func (b bitset) has(i uint32) bool    { return b[i/64]&(1<<(i%64)) != 0 }
func (b bitset) set(i uint32)         { b[i/64] |= 1 << (i % 64) }
func (b bitset) word(i uint32) uint64 { return b[i/64] }
func trimMask(m wire.Mask) wire.Mask {
	for len(m) > 0 && m[len(m)-1] == 0 {
		m = m[:len(m)-1]
	}
	return m
}

func maskMinus(a, b wire.Mask) wire.Mask {
	out := make(wire.Mask, len(a))
	for i := range a {
		out[i] = a[i]
		if i < len(b) {
			out[i] &^= b[i]
		}
	}
	return trimMask(out)
}

func maskEqual(a, b wire.Mask) bool {
	a, b = trimMask(a), trimMask(b)
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
