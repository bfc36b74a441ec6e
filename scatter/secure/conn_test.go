package secure

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/vmscatter/vmscatter/scatter/wire"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

// pipePair runs both handshakes over an in-memory pipe, with the shared key alone.
func pipePair(t *testing.T, clientKey, serverKey []byte) (*Conn, *Conn, error, error) {
	return credPair(t, Credentials{Key: clientKey}, Credentials{Key: serverKey})
}

// credPair runs both handshakes over an in-memory pipe.
func credPair(t *testing.T, client, server Credentials) (*Conn, *Conn, error, error) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	type res struct {
		sc  *Conn
		err error
	}
	srv := make(chan res, 1)
	go func() {
		sc, role, err := ServerHandshake(b, server)
		if err == nil && role != RoleVM {
			err = errors.New("wrong role")
		}
		if err != nil {
			b.Close()
		}
		srv <- res{sc, err}
	}()
	cl, cerr := ClientHandshake(a, client, RoleVM)
	if cerr != nil {
		a.Close()
	}
	r := <-srv
	return cl, r.sc, cerr, r.err
}

func TestHandshakeAndFrames(t *testing.T) {
	cl, sv, cerr, serr := pipePair(t, testKey, testKey)
	if cerr != nil || serr != nil {
		t.Fatalf("handshake: %v / %v", cerr, serr)
	}
	payload := bytes.Repeat([]byte("page"), 1024)
	go func() {
		cl.Send(wire.FramePages, payload, false)
		cl.Send(wire.FrameStreamEnd, nil, true)
	}()
	typ, got, err := sv.Recv()
	if err != nil || typ != wire.FramePages || !bytes.Equal(got, payload) {
		t.Fatalf("frame 1: %v %v", typ, err)
	}
	if typ, _, err = sv.Recv(); err != nil || typ != wire.FrameStreamEnd {
		t.Fatalf("frame 2: %v %v", typ, err)
	}
	// And the other direction, with its own key.
	go sv.Send(wire.FrameReturnPath, []byte("rp"), true)
	if typ, got, err = cl.Recv(); err != nil || typ != wire.FrameReturnPath || string(got) != "rp" {
		t.Fatalf("reverse: %v %q %v", typ, got, err)
	}
}

func TestHandshakeWrongKeyRefusedBothWays(t *testing.T) {
	other := []byte("ffffffffffffffffffffffffffffffff")
	if len(other) != MinKeyLen {
		t.Fatal("test key length")
	}
	_, _, cerr, serr := pipePair(t, other, testKey)
	if !errors.Is(cerr, ErrAuth) {
		t.Fatalf("client with the wrong key: %v", cerr)
	}
	if serr == nil {
		t.Fatal("receiver accepted a client that does not know the key")
	}
}

func TestHandshakeNotVmscatter(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	go func() { b.Write([]byte("GET / HTTP/1.1\r\n\r\n")); b.Close() }()
	if _, _, err := ServerHandshake(a, Credentials{Key: testKey}); err == nil {
		t.Fatal("an HTTP request passed the handshake")
	}
}

// tamperConn lets a test see and change the raw bytes written by one side.
type recorder struct {
	net.Conn
	buf bytes.Buffer
}

func (r *recorder) Write(p []byte) (int, error) { r.buf.Write(p); return len(p), nil }

func sealedFrames(t *testing.T, frames ...[]byte) []byte {
	t.Helper()
	rec := &recorder{}
	sc := newConnKeys(rec, testKey, testKey)
	for _, f := range frames {
		if err := sc.Send(wire.FramePages, f, true); err != nil {
			t.Fatal(err)
		}
	}
	return rec.buf.Bytes()
}

func openAll(raw []byte) error {
	a, b := net.Pipe()
	defer a.Close()
	go func() { b.Write(raw); b.Close() }()
	sc := newConnKeys(a, testKey, testKey)
	for {
		if _, _, err := sc.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

func TestForgedReplayedTruncatedOversizedFramesRejected(t *testing.T) {
	good := sealedFrames(t, []byte("one"), []byte("two"))
	if err := openAll(good); err != nil {
		t.Fatalf("good frames: %v", err)
	}
	first := good[:4+int(binary.BigEndian.Uint32(good))]
	cases := map[string][]byte{
		"bit flipped": func() []byte { b := bytes.Clone(good); b[10] ^= 1; return b }(),
		"replayed":    append(bytes.Clone(first), first...),
		"reordered":   append(bytes.Clone(good[len(first):]), first...),
		"truncated":   good[:len(good)-3],
		"oversized":   binary.BigEndian.AppendUint32(nil, maxFramePayload+1000),
		"undersized":  binary.BigEndian.AppendUint32(nil, 3),
	}
	for name, raw := range cases {
		if err := openAll(raw); !errors.Is(err, wire.ErrFrame) {
			t.Errorf("%s: got %v, want wire.ErrFrame", name, err)
		}
	}
}

func FuzzFrameOpen(f *testing.F) {
	f.Add(sealedFrames(&testing.T{}, []byte("seed")))
	f.Add([]byte{0, 0, 0, 20, 1, 2, 3})
	f.Fuzz(func(t *testing.T, raw []byte) {
		_ = openAll(raw) // must never panic or allocate past the bound
	})
}
