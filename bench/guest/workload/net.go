package main

import (
	"bytes"
	"errors"
	"net"
	"strconv"
	"sync/atomic"
	"time"
)

// netPart exchanges UDP datagrams with a peer on the guest's network (an echo responder of the lab host the guest
// runs on): one datagram per period, "vms-echo <n>", and a count of the echoes that come back. A guest that has moved
// keeps being answered only if its NIC works at its new host: the echo counter keeps growing there. Send errors (no
// route yet, a link going down) count as sent datagrams that get no echo.
type netPart struct {
	peer   *net.UDPAddr
	conn   *net.UDPConn // nil until a dial succeeds
	period time.Duration
	next   time.Time // when the next datagram is due
	buf    []byte

	sent uint64
	recv atomic.Uint64 // echoes, counted by the reader goroutine
}

// echoPrefix starts every datagram the guest sends, and every echo it counts.
var echoPrefix = []byte("vms-echo ")

func newNetPart(peer string, period time.Duration) (*netPart, error) {
	addr, err := net.ResolveUDPAddr("udp4", peer)
	if err != nil {
		return nil, err
	}
	return &netPart{peer: addr, period: period}, nil
}

// advance sends the datagram due by now, at most one.
func (n *netPart) advance(now time.Time) {
	if now.Before(n.next) {
		return
	}
	n.next = now.Add(n.period)
	n.sent++
	if n.conn == nil {
		c, err := net.DialUDP("udp4", nil, n.peer)
		if err != nil {
			return
		}
		n.conn = c
		go n.read(c)
	}
	n.buf = strconv.AppendUint(append(n.buf[:0], echoPrefix...), n.sent, 10)
	_, _ = n.conn.Write(n.buf) // a lost datagram gets no echo, which is what the counters show
}

// read counts echoes until the connection fails. It runs on a goroutine of its own.
func (n *netPart) read(c *net.UDPConn) {
	buf := make([]byte, 512)
	for {
		k, err := c.Read(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil { // an ICMP error for an earlier datagram (ECONNREFUSED): the next one may get through
			continue
		}
		if bytes.HasPrefix(buf[:k], echoPrefix) {
			n.recv.Add(1)
		}
	}
}
