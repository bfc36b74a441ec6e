package datapath

import (
	"errors"
	"io"
	"net"
	"time"

	"github.com/vmscatter/vmscatter/scatter/secure"
)

// Pair runs secure's handshake, the client's side as the sender's VM connection, over an in-memory pipe, and then
// points both ends at memory: what the client sends goes to w, sealed as on the wire, and what the server receives
// comes from r. Give both the same bytes.Buffer to replay what the client sent into the server.
func Pair(key []byte, w io.Writer, r io.Reader) (client, server *secure.Conn, err error) {
	cp, sp := net.Pipe()
	cm, sm := &MemConn{pipe: cp}, &MemConn{pipe: sp}
	type result struct {
		c   *secure.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, _, err := secure.ServerHandshake(sm, secure.Credentials{Key: key})
		done <- result{c, err}
	}()
	client, cerr := secure.ClientHandshake(cm, secure.Credentials{Key: key}, secure.RoleVM)
	if cerr != nil {
		cp.Close() // ends the server's side too
	}
	res := <-done
	cp.Close()
	sp.Close()
	if err := errors.Join(cerr, res.err); err != nil {
		return nil, nil, err
	}
	cm.pipe, cm.W = nil, w
	sm.pipe, sm.R = nil, r
	return client, res.c, nil
}

// MemConn is a net.Conn in memory: reads come from R and writes go to W (a nil R reads EOF, a nil W discards).
// Deadlines are accepted and ignored. It is not safe for concurrent use.
type MemConn struct {
	R    io.Reader
	W    io.Writer
	pipe net.Conn // during Pair's handshake only
}

func (c *MemConn) Read(p []byte) (int, error) {
	switch {
	case c.pipe != nil:
		return c.pipe.Read(p)
	case c.R == nil:
		return 0, io.EOF
	}
	return c.R.Read(p)
}

func (c *MemConn) Write(p []byte) (int, error) {
	switch {
	case c.pipe != nil:
		return c.pipe.Write(p)
	case c.W == nil:
		return len(p), nil
	}
	return c.W.Write(p)
}

func (c *MemConn) SetDeadline(t time.Time) error {
	if c.pipe != nil {
		return c.pipe.SetDeadline(t)
	}
	return nil
}

func (c *MemConn) SetReadDeadline(t time.Time) error {
	if c.pipe != nil {
		return c.pipe.SetReadDeadline(t)
	}
	return nil
}

func (c *MemConn) SetWriteDeadline(t time.Time) error {
	if c.pipe != nil {
		return c.pipe.SetWriteDeadline(t)
	}
	return nil
}

func (c *MemConn) Close() error         { return nil }
func (c *MemConn) LocalAddr() net.Addr  { return memAddr{} }
func (c *MemConn) RemoteAddr() net.Addr { return memAddr{} }

type memAddr struct{}

func (memAddr) Network() string { return "memory" }
func (memAddr) String() string  { return "memory" }
