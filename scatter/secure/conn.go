// Package secure is the handshake and framing of every vmscatter TCP connection (control and per-VM data). docs/control.md has the
// byte layout. Both sides prove knowledge of the shared key with HMAC-SHA256 over fresh nonces from each side, and
// derive per-direction AES-256-GCM keys from it; every frame after the handshake is sealed with a counter nonce, so
// a forged, altered, reordered or replayed frame fails to open and ends the connection.
//
// Conn is the connection: Send is safe for concurrent use, Recv (and Expect, which bounds its wait with a context
// and a deadline) belong to one goroutine. LoadKey and WriteNewKey read and write the shared key file.
package secure

import (
	"bufio"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/vmscatter/vmscatter/scatter/wire"
)

const (
	handshakeMagic   = "VMSC"
	protocolVersion  = 3
	nonceLen         = 32
	macLen           = sha256.Size
	maxFramePayload  = 4 << 20 // a frame carries at most this many plaintext bytes
	handshakeTimeout = 10 * time.Second
)

// Connection roles, sent in the client's first bytes.
const (
	RoleControl byte = 1
	RoleVM      byte = 2
)

// ErrAuth says the peer did not prove knowledge of the shared key.
var ErrAuth = errors.New("authentication failed")

// Conn is an authenticated, encrypted, framed connection. Send is safe for concurrent use; Recv must be called
// from one goroutine.
type Conn struct {
	c      net.Conn
	r      *bufio.Reader
	sendMu sync.Mutex // guards w, seal, sendN, wbuf, bytesOut
	w      *bufio.Writer
	seal   cipher.AEAD
	open   cipher.AEAD
	sendN  uint64
	recvN  uint64
	rbuf   []byte
	wbuf   []byte // the frame being sealed, sealed in place

	bytesOut, bytesIn int64 // wire bytes after the handshake (guarded by sendMu for out; Recv's goroutine for in)
}

func hmacSum(key []byte, parts ...[]byte) []byte {
	m := hmac.New(sha256.New, key)
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(nil)
}

func newGCM(key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // key is always 32 bytes
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	return g
}

func newSecureConn(c net.Conn, sendKey, recvKey []byte) *Conn {
	return &Conn{c: c, r: bufio.NewReaderSize(c, 256<<10), w: bufio.NewWriterSize(c, 256<<10),
		seal: newGCM(sendKey), open: newGCM(recvKey)}
}

// ClientHandshake runs the initiator's side.
func ClientHandshake(c net.Conn, key []byte, role byte) (*Conn, error) {
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	defer c.SetDeadline(time.Time{})
	nc := make([]byte, nonceLen)
	if _, err := rand.Read(nc); err != nil {
		return nil, err
	}
	hello := append([]byte(handshakeMagic), protocolVersion, role)
	hello = append(hello, nc...)
	if _, err := c.Write(hello); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	resp := make([]byte, 4+1+1+nonceLen+macLen)
	if _, err := io.ReadFull(c, resp); err != nil {
		return nil, fmt.Errorf("handshake: no answer from receiver (%w); is it a vmscatter receiver of this version?", err)
	}
	if string(resp[:4]) != handshakeMagic {
		return nil, fmt.Errorf("handshake: %w: peer is not a vmscatter receiver", ErrAuth)
	}
	if resp[4] != protocolVersion {
		return nil, fmt.Errorf("handshake: receiver speaks protocol version %d, we speak %d: upgrade one side", resp[4], protocolVersion)
	}
	if resp[5] != 0 {
		return nil, fmt.Errorf("handshake: receiver refused the connection (status %d)", resp[5])
	}
	ns := resp[6 : 6+nonceLen]
	if !hmac.Equal(resp[6+nonceLen:], hmacSum(key, []byte("vmscatter receiver"), nc, ns)) {
		return nil, fmt.Errorf("%w: the receiver does not know our key: check that both sides use the same --key-file", ErrAuth)
	}
	if _, err := c.Write(hmacSum(key, []byte("vmscatter sender"), nc, ns)); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	var ok [1]byte
	if _, err := io.ReadFull(c, ok[:]); err != nil || ok[0] != 0 {
		return nil, fmt.Errorf("%w: the receiver refused our key: check that both sides use the same --key-file", ErrAuth)
	}
	c2s, s2c := hmacSum(key, []byte("c2s"), nc, ns), hmacSum(key, []byte("s2c"), nc, ns)
	return newSecureConn(c, c2s, s2c), nil
}

// ServerHandshake runs the receiver's side and returns the client's role.
func ServerHandshake(c net.Conn, key []byte) (*Conn, byte, error) {
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	defer c.SetDeadline(time.Time{})
	hello := make([]byte, 4+1+1+nonceLen)
	if _, err := io.ReadFull(c, hello); err != nil {
		return nil, 0, fmt.Errorf("handshake: %w", err)
	}
	if string(hello[:4]) != handshakeMagic {
		return nil, 0, fmt.Errorf("handshake: not a vmscatter client (magic %q)", hello[:4])
	}
	status := byte(0)
	if hello[4] != protocolVersion {
		status = 1
	}
	role := hello[5]
	if role != RoleControl && role != RoleVM {
		status = 2
	}
	nc := hello[6:]
	ns := make([]byte, nonceLen)
	if _, err := rand.Read(ns); err != nil {
		return nil, 0, err
	}
	resp := append([]byte(handshakeMagic), protocolVersion, status)
	resp = append(resp, ns...)
	resp = append(resp, hmacSum(key, []byte("vmscatter receiver"), nc, ns)...)
	if _, err := c.Write(resp); err != nil {
		return nil, 0, fmt.Errorf("handshake: %w", err)
	}
	if status != 0 {
		return nil, 0, fmt.Errorf("handshake: client speaks version %d role %d", hello[4], role)
	}
	mac := make([]byte, macLen)
	if _, err := io.ReadFull(c, mac); err != nil {
		return nil, 0, fmt.Errorf("%w: client hung up before proving the key (it has another key?)", ErrAuth)
	}
	if !hmac.Equal(mac, hmacSum(key, []byte("vmscatter sender"), nc, ns)) {
		c.Write([]byte{1})
		return nil, 0, fmt.Errorf("%w: client does not know the key", ErrAuth)
	}
	if _, err := c.Write([]byte{0}); err != nil {
		return nil, 0, err
	}
	c2s, s2c := hmacSum(key, []byte("c2s"), nc, ns), hmacSum(key, []byte("s2c"), nc, ns)
	return newSecureConn(c, s2c, c2s), role, nil
}

func counterNonce(n uint64) []byte {
	var b [12]byte
	binary.BigEndian.PutUint64(b[4:], n)
	return b[:]
}

// Send seals one frame (type + payload) and buffers it; flush writes the buffer out.
func (s *Conn) Send(typ wire.FrameType, payload []byte, flush bool) error {
	if len(payload) > maxFramePayload {
		return fmt.Errorf("%w: payload of %d bytes exceeds %d", wire.ErrFrame, len(payload), maxFramePayload)
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	s.wbuf = append(s.wbuf[:0], byte(typ))
	s.wbuf = append(s.wbuf, payload...)
	// Sealed in place: the plaintext's buffer takes the ciphertext (AEAD allows exactly overlapping dst).
	sealed := s.seal.Seal(s.wbuf[:0], counterNonce(s.sendN), s.wbuf, nil)
	s.wbuf = sealed
	s.sendN++
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(sealed)))
	if _, err := s.w.Write(hdr[:]); err != nil {
		return err
	}
	if _, err := s.w.Write(sealed); err != nil {
		return err
	}
	s.bytesOut += int64(4 + len(sealed))
	if flush {
		return s.w.Flush()
	}
	return nil
}

// Flush writes out buffered frames.
func (s *Conn) Flush() error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.w.Flush()
}

// Recv reads and opens one frame. The payload is valid until the next Recv.
func (s *Conn) Recv() (wire.FrameType, []byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(s.r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	overhead := uint32(s.open.Overhead())
	if n < overhead+1 || n > maxFramePayload+1+overhead {
		return 0, nil, fmt.Errorf("%w: length %d out of range", wire.ErrFrame, n)
	}
	if cap(s.rbuf) < int(n) {
		s.rbuf = make([]byte, n)
	}
	buf := s.rbuf[:n]
	if _, err := io.ReadFull(s.r, buf); err != nil {
		return 0, nil, fmt.Errorf("%w: truncated: %v", wire.ErrFrame, err)
	}
	plain, err := s.open.Open(buf[:0], counterNonce(s.recvN), buf, nil)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: does not authenticate (forged, corrupted or replayed)", wire.ErrFrame)
	}
	s.recvN++
	s.bytesIn += int64(4 + n)
	return wire.FrameType(plain[0]), plain[1:], nil
}

// Close closes the underlying connection.
func (s *Conn) Close() error { return s.c.Close() }

// BytesOut is the count of bytes written on the wire after the handshake.
func (s *Conn) BytesOut() int64 {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.bytesOut
}

// RemoteAddr and LocalAddr are the underlying connection's.
func (s *Conn) RemoteAddr() net.Addr { return s.c.RemoteAddr() }
func (s *Conn) LocalAddr() net.Addr  { return s.c.LocalAddr() }

// NetConn is the underlying connection, for socket options and queue probes.
func (s *Conn) NetConn() net.Conn { return s.c }

// SendJSON sends a frame whose payload is v as JSON, flushed.
func (s *Conn) SendJSON(t wire.FrameType, v any) error {
	b, err := wire.Marshal(v)
	if err != nil {
		return err
	}
	return s.Send(t, b, true)
}

// DefaultWait bounds a wait for one frame when its context has no deadline of its own.
const DefaultWait = 2 * time.Minute

// Expect receives one frame and checks its type, decoding a JSON payload into v (unless v is nil). An ERROR frame
// becomes a *wire.PeerError with the peer's text. The wait ends when ctx ends or at its deadline, and at the latest
// after DefaultWait; a frame cut short by that leaves the connection unusable, as any failed read does.
func (s *Conn) Expect(ctx context.Context, want wire.FrameType, v any) error {
	return s.ExpectWithin(ctx, want, v, DefaultWait)
}

// ExpectWithin is Expect with its own bound d on the wait.
func (s *Conn) ExpectWithin(ctx context.Context, want wire.FrameType, v any, d time.Duration) error {
	deadline := time.Now().Add(d)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = s.c.SetReadDeadline(deadline)
	defer s.c.SetReadDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { _ = s.c.SetReadDeadline(time.Now()) })
	defer stop()
	t, b, err := s.Recv()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for %s: %w", want, ctx.Err())
		}
		return fmt.Errorf("waiting for %s: %w", want, err)
	}
	if t == wire.FrameError {
		return &wire.PeerError{Msg: wire.ParseError(b)}
	}
	if t != want {
		return fmt.Errorf("%w: got %s, want %s", wire.ErrFrame, t, want)
	}
	if v == nil {
		return nil
	}
	return wire.Unmarshal(t, b, v)
}
