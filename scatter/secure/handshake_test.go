package secure

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/scatter/wire"
)

// hostCreds makes a host's credentials: its own key pair, named name, accepting peers.
func hostCreds(t testing.TB, key []byte) (Credentials, [32]byte) {
	t.Helper()
	h, err := NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	return Credentials{Key: key, Host: h, Peers: &Peers{}}, h.Public
}

func exchange(t *testing.T, cl, sv *Conn) {
	t.Helper()
	go cl.Send(wire.FramePages, []byte("ping"), true)
	if typ, b, err := sv.Recv(); err != nil || typ != wire.FramePages || string(b) != "ping" {
		t.Fatalf("client to receiver: %v %q %v", typ, b, err)
	}
	go sv.Send(wire.FrameReturnPath, []byte("pong"), true)
	if typ, b, err := cl.Recv(); err != nil || typ != wire.FrameReturnPath || string(b) != "pong" {
		t.Fatalf("receiver to client: %v %q %v", typ, b, err)
	}
}

// With host keys each side accepts exactly the peers on its list, and names them.
func TestHandshakeHostKeys(t *testing.T) {
	src, srcPub := hostCreds(t, testKey)
	dst, dstPub := hostCreds(t, testKey)
	src.Peers.Add(dstPub, "target-a")
	dst.Peers.Add(srcPub, "source-1")
	cl, sv, cerr, serr := credPair(t, src, dst)
	if cerr != nil || serr != nil {
		t.Fatalf("handshake: %v / %v", cerr, serr)
	}
	if cl.Peer() != "target-a" || sv.Peer() != "source-1" {
		t.Errorf("peers named %q and %q", cl.Peer(), sv.Peer())
	}
	exchange(t, cl, sv)

	// A stolen shared key with a host key the target does not list opens nothing.
	thief, _ := hostCreds(t, testKey)
	thief.Peers.Add(dstPub, "target-a")
	_, _, cerr, serr = credPair(t, thief, dst)
	if !errors.Is(cerr, ErrAuth) || !strings.Contains(cerr.Error(), "allow-peers") || !errors.Is(serr, ErrAuth) {
		t.Errorf("an unlisted source: client %v, receiver %v", cerr, serr)
	}
	// A receiver the source does not list is not given the session.
	impostor, _ := hostCreds(t, testKey)
	impostor.Peers.Add(srcPub, "source-1")
	_, _, cerr, serr = credPair(t, src, impostor)
	if !errors.Is(cerr, ErrAuth) || !strings.Contains(cerr.Error(), "not on our --allow-peers") || serr == nil {
		t.Errorf("an unlisted receiver: client %v, receiver %v", cerr, serr)
	}
	// A listed host key without the shared key is refused at the first message.
	wrongPSK := src
	wrongPSK.Key = bytes.Repeat([]byte{0xee}, 32)
	_, _, cerr, serr = credPair(t, wrongPSK, dst)
	if !errors.Is(cerr, ErrAuth) || !strings.Contains(cerr.Error(), "same --key-file") || !errors.Is(serr, ErrAuth) {
		t.Errorf("a listed host without the shared key: client %v, receiver %v", cerr, serr)
	}
	// Host keys on one side only: refused, with a message that says so.
	_, _, cerr, _ = credPair(t, Credentials{Key: testKey}, dst)
	if cerr == nil || !strings.Contains(cerr.Error(), "host keys") {
		t.Errorf("a client without host keys: %v", cerr)
	}
	_, _, cerr, _ = credPair(t, src, Credentials{Key: testKey})
	if cerr == nil || !strings.Contains(cerr.Error(), "host keys") {
		t.Errorf("a receiver without host keys: %v", cerr)
	}
}

// Two sessions with the same keys seal the same frame differently: each has keys of its own from its ephemeral
// exchange, and neither the shared key nor a host key alone derives them.
func TestHandshakeKeysAreEphemeral(t *testing.T) {
	var sealed [][]byte
	for range 2 {
		cl, sv, cerr, serr := pipePair(t, testKey, testKey)
		if cerr != nil || serr != nil {
			t.Fatal(cerr, serr)
		}
		sealed = append(sealed, cl.seal.Seal(nil, counterNonce(0), []byte("same frame"), nil))
		_ = sv
	}
	if bytes.Equal(sealed[0], sealed[1]) {
		t.Fatal("two sessions share their traffic keys")
	}
}

// capture is a net.Conn that reads the given bytes and records what is written.
type capture struct {
	r io.Reader
	w bytes.Buffer
}

func (c *capture) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *capture) Write(p []byte) (int, error)      { return c.w.Write(p) }
func (c *capture) Close() error                     { return nil }
func (c *capture) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *capture) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *capture) SetDeadline(time.Time) error      { return nil }
func (c *capture) SetReadDeadline(time.Time) error  { return nil }
func (c *capture) SetWriteDeadline(time.Time) error { return nil }
func newCapture(in []byte) *capture                 { return &capture{r: bytes.NewReader(in)} }
func clientHello(role, mode byte) []byte            { return appendHello(nil, hello{protocolVersion, role, mode}) }
func refusal(status byte) []byte {
	return append(appendAnswer(nil, answer{protocolVersion, status}), make([]byte, refusalPad)...)
}
func noiseGarbage() []byte       { return bytes.Repeat([]byte{0x42}, psk0MsgLen) }
func (c *capture) wrote() []byte { return c.w.Bytes() }
func serve(in []byte, cr Credentials) (*capture, error) {
	c := newCapture(in)
	_, _, err := ServerHandshake(c, cr)
	return c, err
}

// The initiator proves first: a client that does not prove the shared key gets a refusal and nothing else, however
// it fails, and a client of protocol version 3 gets a whole version-3-sized answer that names version 4.
func TestHandshakeReceiverAnswersOnlyAfterProof(t *testing.T) {
	shared := Credentials{Key: testKey}
	c, err := serve(append(clientHello(RoleControl, modeSharedKey), noiseGarbage()...), shared)
	if !errors.Is(err, ErrAuth) || !bytes.Equal(c.wrote(), refusal(statusKeyRefused)) {
		t.Errorf("unproven client: %v, receiver wrote %x", err, c.wrote())
	}
	// A first message made with another key: the same refusal.
	other := newCapture(nil)
	_, _ = ClientHandshake(other, Credentials{Key: bytes.Repeat([]byte{1}, 32)}, RoleVM)
	c, err = serve(other.wrote(), shared)
	if !errors.Is(err, ErrAuth) || !bytes.Equal(c.wrote(), refusal(statusKeyRefused)) {
		t.Errorf("client with another key: %v, receiver wrote %x", err, c.wrote())
	}
	// Version 3's first bytes: "VMSC" 3 role, then its 32-byte nonce.
	v3 := append([]byte("VMSC\x03\x01"), bytes.Repeat([]byte{9}, 32)...)
	c, _ = serve(v3, shared)
	if w := c.wrote(); len(w) != 4+1+1+32+32 || w[4] != protocolVersion || w[5] != statusBadVersion {
		t.Errorf("version-3 client got %x", w)
	}
	c, _ = serve(append(clientHello(7, modeSharedKey), noiseGarbage()...), shared)
	if !bytes.Equal(c.wrote(), refusal(statusBadRole)) {
		t.Errorf("bad role: %x", c.wrote())
	}
	// A recorded first message, replayed: the receiver answers it, but accepts nothing without the confirmation
	// only the live client could seal.
	recorded := newCapture(nil)
	_, _ = ClientHandshake(recorded, shared, RoleControl)
	c, err = serve(recorded.wrote(), shared)
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "confirm") {
		t.Errorf("replayed first message: %v", err)
	}
	c, err = serve([]byte("GET / HTTP/1.1\r\n\r\n"), shared)
	if err == nil || len(c.wrote()) != 0 {
		t.Errorf("HTTP: %v, wrote %q", err, c.wrote())
	}
}

func TestClientReportsRefusals(t *testing.T) {
	for status, want := range map[byte]string{statusKeyRefused: "same --key-file", statusBusy: "too many handshakes",
		statusPeerRefused: "allow-peers", statusBadMode: "host keys"} {
		_, err := ClientHandshake(newCapture(refusal(status)), Credentials{Key: testKey}, RoleControl)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("status %d: %v", status, err)
		}
	}
	if _, err := ClientHandshake(newCapture(refusal(statusBusy)), Credentials{Key: testKey}, RoleControl); !errors.Is(err, ErrBusy) {
		t.Errorf("busy: %v", err)
	}
	v3answer := append([]byte("VMSC\x03\x01"), make([]byte, 64)...)
	if _, err := ClientHandshake(newCapture(v3answer), Credentials{Key: testKey}, RoleControl); err == nil || !strings.Contains(err.Error(), "version 3") {
		t.Errorf("a version-3 receiver: %v", err)
	}
}

func TestCredentialsChecked(t *testing.T) {
	h, _ := NewHostKey()
	for name, cr := range map[string]Credentials{
		"short key":          {Key: make([]byte, 16)},
		"host key, no peers": {Key: testKey, Host: h},
		"peers, no host key": {Key: testKey, Peers: func() *Peers { p := &Peers{}; p.Add(h.Public, ""); return p }()},
	} {
		if _, err := ClientHandshake(newCapture(nil), cr, RoleVM); err == nil {
			t.Errorf("%s: client accepted", name)
		}
		if _, _, err := ServerHandshake(newCapture(nil), cr); err == nil {
			t.Errorf("%s: receiver accepted", name)
		}
	}
}

func TestLoadKeyNeedsHexOf32Bytes(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", strings.Repeat("ab", 32)+"\n", 0o600)
	if k, err := LoadKey(good); err != nil || len(k) != 32 {
		t.Fatalf("good key: %v", err)
	}
	for name, p := range map[string]string{
		"raw":       write("raw", "this is a passphrase, not a key, but it is long", 0o600),
		"short hex": write("short", strings.Repeat("ab", 16), 0o600),
		"odd hex":   write("odd", strings.Repeat("ab", 32)+"a", 0o600),
	} {
		if _, err := LoadKey(p); err == nil || !strings.Contains(err.Error(), "vmscatter keygen") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := LoadKey(write("open", strings.Repeat("ab", 32), 0o644)); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("group-readable key: %v", err)
	}
	if err := WriteNewKey(filepath.Join(dir, "new")); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKey(filepath.Join(dir, "new")); err != nil {
		t.Errorf("keygen's key: %v", err)
	}
}

func TestHostKeyFilesAndPeers(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "host")
	line, err := WriteNewHostKey(path, "target-a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := WriteNewHostKey(path, "again"); err == nil {
		t.Error("a host key was overwritten")
	}
	h, err := LoadHostKey(path)
	if err != nil {
		t.Fatal(err)
	}
	peersFile := filepath.Join(dir, "peers")
	if err := os.WriteFile(peersFile, []byte("# sources\n\n"+line+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := LoadPeers(peersFile)
	if err != nil {
		t.Fatal(err)
	}
	if name, ok := p.lookup(h.Public[:]); !ok || name != "target-a" {
		t.Errorf("the .pub line names %q (%v)", name, ok)
	}
	if err := os.WriteFile(peersFile, []byte("zz not-a-key\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPeers(peersFile); err == nil {
		t.Error("a bad line was accepted")
	}
	if err := os.WriteFile(peersFile, []byte("# nothing\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPeers(peersFile); err == nil {
		t.Error("an empty list was accepted")
	}
}

// FuzzHandshakeHeaders: the clear hello and answer parse only as what they encode.
func FuzzHandshakeHeaders(f *testing.F) {
	f.Add(clientHello(RoleControl, modeSharedKey))
	f.Add(appendAnswer(nil, answer{protocolVersion, statusBusy}))
	f.Add([]byte("VMSC\x03\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if h, err := parseHello(b); err == nil && !bytes.Equal(appendHello(nil, h), b) {
			t.Fatalf("hello %x re-encodes as %x", b, appendHello(nil, h))
		}
		if a, err := parseAnswer(b); err == nil && !bytes.Equal(appendAnswer(nil, a), b) {
			t.Fatalf("answer %x re-encodes as %x", b, appendAnswer(nil, a))
		}
	})
}

// FuzzServerHandshake feeds a receiver arbitrary client bytes, with the shared key and with host keys: it never
// panics, never accepts (nobody without the keys can, and a recorded first message, the seed, is not enough), and
// writes at most a refusal or, after a valid first message, its own second message.
func FuzzServerHandshake(f *testing.F) {
	good := newCapture(nil)
	_, _ = ClientHandshake(good, Credentials{Key: testKey}, RoleControl)
	f.Add(good.wrote())
	f.Add(append(clientHello(RoleVM, modeHostKeys), noiseGarbage()...))
	f.Add([]byte("VMSC\x03\x01"))
	dst, _ := hostCreds(f, testKey)
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, cr := range []Credentials{{Key: testKey}, dst} {
			c, err := serve(b, cr)
			if err == nil {
				t.Fatalf("a receiver accepted %x", b)
			}
			if n := len(c.wrote()); n > answerLen+xxMsg2Len+1 && n != answerLen+refusalPad {
				t.Fatalf("a receiver wrote %d bytes", n)
			}
		}
	})
}

// FuzzClientHandshake feeds a sender arbitrary receiver bytes: it never panics and never accepts.
func FuzzClientHandshake(f *testing.F) {
	f.Add(refusal(statusBusy))
	f.Add(append(appendAnswer(nil, answer{protocolVersion, statusOK}), make([]byte, xxMsg2Len+1)...))
	src, _ := hostCreds(f, testKey)
	src.Peers.Add([32]byte{1}, "x")
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, cr := range []Credentials{{Key: testKey}, src} {
			if _, err := ClientHandshake(newCapture(b), cr, RoleVM); err == nil {
				t.Fatalf("a client accepted %x", b)
			}
		}
	})
}
