package secure

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestWatchPeerSetsTheBounds: a connection gives up on a silent peer after PeerTimeout, with data in flight
// (TCP_USER_TIMEOUT) and idle (keepalive).
func TestWatchPeerSetsTheBounds(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	watchPeer(c)
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var userTimeout, keepalive int
	var gerr error
	if err := raw.Control(func(fd uintptr) {
		if userTimeout, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT); gerr != nil {
			return
		}
		keepalive, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
	}); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	if time.Duration(userTimeout)*time.Millisecond != PeerTimeout || keepalive != 1 {
		t.Errorf("TCP_USER_TIMEOUT %d ms, SO_KEEPALIVE %d; want %v and 1", userTimeout, keepalive, PeerTimeout)
	}
}
