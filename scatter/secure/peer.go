package secure

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// A peer that stops answering must not hold a sender or receiver for ever. TCP retransmits unacknowledged data
// for about 15 minutes by default, and a writer blocked on a full send buffer holds the connection's send lock
// all that time: every other frame for that VM (ABORT, START) waits behind it, and so does the driver. So every
// connection gives up on its peer:
//   - after PeerTimeout with data sent and not acknowledged (TCP_USER_TIMEOUT): a blocked write fails, the lock is
//     released, and the reader sees the connection's end;
//   - when idle, after keepalive probes go unanswered for about the same time.
//
// It must outlast a partition that heals: the fault campaign holds one for up to 15 s, and TCP carries the frames
// once the link is back.
const PeerTimeout = 30 * time.Second

// watchPeer sets c (a TCP connection; others are left alone) to give up on a silent peer after PeerTimeout.
func watchPeer(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: 10 * time.Second, Interval: 5 * time.Second, Count: 4})
	raw, err := tc.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(PeerTimeout/time.Millisecond))
	})
}
