// Package secure is the handshake and framing of every vmscatter TCP connection (control and per-VM data). docs/control.md has the
// byte layout. The handshake is Noise (NNpsk0 with the shared key alone, XXpsk0 with host keys; handshake.go): the
// initiator proves the shared key first, an ephemeral X25519 exchange gives each connection its own keys (forward
// secrecy), and with host keys each side accepts only the peers on its allow-list. Every frame after the handshake is
// sealed with AES-256-GCM under the key of its direction and a counter nonce, so a forged, altered, reordered or
// replayed frame fails to open and ends the connection.
//
// Conn is the connection: Send is safe for concurrent use, Recv (and Expect, which bounds its wait with a context
// and a deadline) belong to one goroutine. LoadKey, LoadHostKey and LoadPeers read the key files; WriteNewKey and
// WriteNewHostKey write them.
package secure

import (
	"bufio"
	"context"
	"crypto/aes"
	"crypto/cipher"
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
	maxFramePayload  = 4 << 20 // a frame carries at most this many plaintext bytes
	handshakeTimeout = 10 * time.Second
)

// Connection roles, sent in the client's first bytes.
const (
	RoleControl byte = 1
	RoleVM      byte = 2
)

// ErrAuth says the peer did not prove knowledge of the shared key, or its host key is not allowed.
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

	bytesOut, bytesIn int64  // wire bytes after the handshake (guarded by sendMu for out; Recv's goroutine for in)
	peer              string // the peer's name on the allow-list, with host keys
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

func newSecureConn(c net.Conn, sendKey, recvKey [32]byte) *Conn {
	return newConnKeys(c, sendKey[:], recvKey[:])
}

func newConnKeys(c net.Conn, sendKey, recvKey []byte) *Conn {
	return &Conn{c: c, r: bufio.NewReaderSize(c, 256<<10), w: bufio.NewWriterSize(c, 256<<10),
		seal: newGCM(sendKey), open: newGCM(recvKey)}
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

// Peer is the peer's name on this side's allow-list (its host key's), or "" with the shared key alone.
func (s *Conn) Peer() string { return s.peer }

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
