package scatter_test

import (
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

// The tests inject faults through the seams the sender and receiver offer (source.Config.WrapStream,
// dest.Config.WrapConn): a connection wrapped here fails the way a dying peer or a silent link would, and the code
// under test runs unchanged.

// faultConn reads through until after bytes have passed, then ends: with io.EOF (eof, a stream cut short), or by
// closing the connection (a peer that died).
type faultConn struct {
	net.Conn
	after int64
	eof   bool
	read  int64
}

func (c *faultConn) Read(p []byte) (int, error) {
	if left := c.after - c.read; left <= 0 {
		if c.eof {
			return 0, io.EOF
		}
		c.Conn.Close()
		return 0, net.ErrClosed
	} else if int64(len(p)) > left {
		p = p[:left]
	}
	n, err := c.Conn.Read(p)
	c.read += int64(n)
	return n, err
}

// stallConn reads through until after bytes have passed, then blocks until closed, as a link that went silent.
type stallConn struct {
	net.Conn
	after  int64
	read   int64
	closed chan struct{}
	once   sync.Once
}

func newStallConn(c net.Conn, after int64) *stallConn {
	return &stallConn{Conn: c, after: after, closed: make(chan struct{})}
}

func (c *stallConn) Read(p []byte) (int, error) {
	if left := c.after - c.read; left <= 0 {
		<-c.closed
		return 0, net.ErrClosed
	} else if int64(len(p)) > left {
		p = p[:left]
	}
	n, err := c.Conn.Read(p)
	c.read += int64(n)
	return n, err
}

func (c *stallConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// secondConnBreaksAfter wraps a receiver's accepted connections so that the second one, the first VM connection
// after the sender's control connection, dies after the given bytes.
func secondConnBreaksAfter(after int64) func(net.Conn) net.Conn {
	var n atomic.Int32
	return func(c net.Conn) net.Conn {
		if n.Add(1) == 2 {
			return &faultConn{Conn: c, after: after}
		}
		return c
	}
}

// stateDir is the sender's journal for this package's runs (each run has its own directory in it).
var stateDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vmscatter-state-")
	if err != nil {
		panic(err)
	}
	stateDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
