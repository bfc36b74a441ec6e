package secure

import (
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/flynn/noise"

	"github.com/vmscatter/vmscatter/scatter/wire"
)

// The handshake (docs/control.md, Handshake) is a Noise handshake behind a 7-byte clear hello:
//
//	shared key only: Noise_NNpsk0_25519_AESGCM_SHA256   -> psk, e      <- e, ee             -> CONFIRM
//	host keys:       Noise_XXpsk0_25519_AESGCM_SHA256   -> psk, e      <- e, ee, s, es      -> s, se   <- verdict
//
// The initiator proves the shared key first: its first message is sealed under a key mixed from the PSK and its
// ephemeral, and the receiver answers nothing but a refusal until it verified it. The ephemeral X25519 exchange (ee)
// gives every connection keys that no later theft of the shared key or of a host key recovers (forward secrecy). With
// host keys each side also proves its own static key, and accepts only peers on its allow-list, so a stolen shared key
// alone opens no target. The hello (magic, version, role, mode) is the Noise prologue: it is bound into the
// transcript, so an attacker cannot change the role or downgrade the mode. A recorded first message replays, but
// only a live initiator can answer the receiver's fresh ephemeral: its third message (CONFIRM, a sealed empty frame
// of type 0, with the shared key alone; its static key, with host keys) is what makes the receiver accept.
const (
	handshakeMagic  = "VMSC"
	protocolVersion = 4
	helloLen        = 7  // "VMSC" · version · role · mode
	answerLen       = 6  // "VMSC" · version · status
	refusalPad      = 64 // zero bytes after a refusal, so that a version-3 client reads its whole answer
	psk0MsgLen      = 32 + 16
	nnMsg2Len       = 32 + 16
	xxMsg2Len       = 32 + 32 + 16 + 16
	xxMsg3Len       = 32 + 16 + 16
)

// frameConfirm is the type of the initiator's first sealed frame with the shared key alone: empty, it proves the
// initiator holds the session keys. It is no frame of the protocol proper (scatter/wire's types start at 1).
const frameConfirm wire.FrameType = 0

// Handshake modes, byte 6 of the hello.
const (
	modeSharedKey byte = 1 // Noise_NNpsk0_25519_AESGCM_SHA256
	modeHostKeys  byte = 2 // Noise_XXpsk0_25519_AESGCM_SHA256
)

// Status codes of the receiver's answer (and of its last byte with host keys).
const (
	statusOK          byte = 0
	statusBadVersion  byte = 1
	statusBadRole     byte = 2
	statusBadMode     byte = 3
	statusKeyRefused  byte = 4 // the client's first message did not authenticate under the shared key
	statusPeerRefused byte = 5 // the client's host key is not on the receiver's allow-list
	statusBusy        byte = 6 // too many handshakes in progress
)

// ErrBusy says the receiver had too many handshakes in progress: the caller may dial again after a moment.
var ErrBusy = errors.New("receiver busy")

// StatusBusy is the status a receiver answers when it has too many handshakes in progress.
const StatusBusy = statusBusy

func statusText(s byte) string {
	switch s {
	case statusBadVersion:
		return "it speaks another protocol version: upgrade one side"
	case statusBadRole:
		return "unknown connection role"
	case statusBadMode:
		return "it uses host keys and we do not, or the other way round: give both sides --host-key and --allow-peers, or neither"
	case statusKeyRefused:
		return "it does not know our key: check that both sides use the same --key-file"
	case statusPeerRefused:
		return "our host key is not on its --allow-peers list"
	case statusBusy:
		return "it has too many handshakes in progress; retry"
	}
	return fmt.Sprintf("status %d", s)
}

var cipherSuite = noise.NewCipherSuite(noise.DH25519, noise.CipherAESGCM, noise.HashSHA256)

// hello is the client's clear first bytes, also the Noise prologue.
type hello struct{ version, role, mode byte }

func appendHello(b []byte, h hello) []byte {
	return append(append(b, handshakeMagic...), h.version, h.role, h.mode)
}

// errNotVmscatter says the peer's first bytes are not a vmscatter handshake.
var errNotVmscatter = errors.New("not a vmscatter handshake")

func parseHello(b []byte) (hello, error) {
	if len(b) != helloLen || string(b[:4]) != handshakeMagic {
		return hello{}, errNotVmscatter
	}
	return hello{b[4], b[5], b[6]}, nil
}

// answer is the receiver's clear reply header.
type answer struct{ version, status byte }

func appendAnswer(b []byte, a answer) []byte {
	return append(append(b, handshakeMagic...), a.version, a.status)
}

func parseAnswer(b []byte) (answer, error) {
	if len(b) != answerLen || string(b[:4]) != handshakeMagic {
		return answer{}, errNotVmscatter
	}
	return answer{b[4], b[5]}, nil
}

// noiseConfig is one side's Noise handshake configuration.
func (cr Credentials) noiseConfig(initiator bool, prologue []byte) noise.Config {
	psk, err := hkdf.Key(sha256.New, cr.Key, nil, "vmscatter psk v4", 32)
	if err != nil {
		panic(err) // 32 bytes of SHA-256 HKDF output never fail
	}
	cfg := noise.Config{CipherSuite: cipherSuite, Pattern: noise.HandshakeNN, Initiator: initiator, Prologue: prologue,
		PresharedKey: psk, PresharedKeyPlacement: 0}
	if cr.Host != nil {
		cfg.Pattern = noise.HandshakeXX
		cfg.StaticKeypair = noise.DHKey{Private: cr.Host.Private[:], Public: cr.Host.Public[:]}
	}
	return cfg
}

func msg2Len(mode byte) int {
	if mode == modeHostKeys {
		return xxMsg2Len
	}
	return nnMsg2Len
}

// ClientHandshake runs the initiator's side: the sender's, on every control and VM connection.
func ClientHandshake(c net.Conn, cr Credentials, role byte) (*Conn, error) {
	if err := cr.Check(); err != nil {
		return nil, err
	}
	watchPeer(c)
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	defer c.SetDeadline(time.Time{})
	prologue := appendHello(nil, hello{protocolVersion, role, cr.mode()})
	hs, err := noise.NewHandshakeState(cr.noiseConfig(true, prologue))
	if err != nil {
		return nil, err
	}
	msg1, _, _, err := hs.WriteMessage(nil, nil)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write(append(prologue, msg1...)); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	head := make([]byte, answerLen)
	if _, err := io.ReadFull(c, head); err != nil {
		return nil, fmt.Errorf("handshake: no answer from receiver (%w); is it a vmscatter receiver of this version?", err)
	}
	a, err := parseAnswer(head)
	if err != nil {
		return nil, fmt.Errorf("handshake: %w: peer is not a vmscatter receiver", ErrAuth)
	}
	if a.version != protocolVersion {
		return nil, fmt.Errorf("handshake: receiver speaks protocol version %d, we speak %d: upgrade one side", a.version, protocolVersion)
	}
	if a.status != statusOK {
		switch a.status {
		case statusKeyRefused, statusPeerRefused:
			return nil, fmt.Errorf("%w: the receiver refused the connection: %s", ErrAuth, statusText(a.status))
		case statusBusy:
			return nil, fmt.Errorf("%w: %s", ErrBusy, statusText(a.status))
		}
		return nil, fmt.Errorf("handshake: the receiver refused the connection: %s", statusText(a.status))
	}
	msg2 := make([]byte, msg2Len(cr.mode()))
	if _, err := io.ReadFull(c, msg2); err != nil {
		return nil, fmt.Errorf("handshake: %w", err)
	}
	_, send, recv, err := hs.ReadMessage(nil, msg2)
	if err != nil {
		return nil, fmt.Errorf("%w: the receiver does not prove our key: check that both sides use the same --key-file", ErrAuth)
	}
	peer := ""
	if cr.mode() == modeHostKeys {
		name, ok := cr.Peers.lookup(hs.PeerStatic())
		if !ok {
			return nil, fmt.Errorf("%w: the receiver's host key (%s) is not on our --allow-peers list", ErrAuth, keyID(hs.PeerStatic()))
		}
		peer = name
		var msg3 []byte
		if msg3, send, recv, err = hs.WriteMessage(nil, nil); err != nil {
			return nil, err
		}
		if _, err := c.Write(msg3); err != nil {
			return nil, fmt.Errorf("handshake: %w", err)
		}
		var st [1]byte
		if _, err := io.ReadFull(c, st[:]); err != nil {
			return nil, fmt.Errorf("handshake: the receiver hung up after our host key (%w)", err)
		}
		if st[0] != statusOK {
			return nil, fmt.Errorf("%w: the receiver refused the connection: %s", ErrAuth, statusText(st[0]))
		}
	}
	sc := newSecureConn(c, send.UnsafeKey(), recv.UnsafeKey())
	sc.peer = peer
	if cr.mode() == modeSharedKey {
		if err := sc.Send(frameConfirm, nil, true); err != nil {
			return nil, fmt.Errorf("handshake: %w", err)
		}
	}
	return sc, nil
}

// refuse writes a refusal answer (best effort) and returns err.
func refuse(c net.Conn, status byte, err error) error {
	_, _ = c.Write(append(appendAnswer(nil, answer{protocolVersion, status}), make([]byte, refusalPad)...))
	return err
}

// Refuse answers a client's connection with a refusal status without reading anything: a receiver that has too many
// handshakes in progress says so (StatusBusy) and closes.
func Refuse(c net.Conn, status byte) {
	_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_ = refuse(c, status, nil)
}

// ServerHandshake runs the receiver's side and returns the client's role. It answers nothing but a refusal until
// the client proved the shared key.
func ServerHandshake(c net.Conn, cr Credentials) (*Conn, byte, error) {
	if err := cr.Check(); err != nil {
		return nil, 0, err
	}
	watchPeer(c)
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	defer c.SetDeadline(time.Time{})
	prologue := make([]byte, helloLen)
	if _, err := io.ReadFull(c, prologue); err != nil {
		return nil, 0, fmt.Errorf("handshake: %w", err)
	}
	h, err := parseHello(prologue)
	if err != nil {
		return nil, 0, fmt.Errorf("handshake: not a vmscatter client (first bytes %q)", prologue)
	}
	if h.version != protocolVersion { // before reading on: a version-3 client sends fewer bytes
		return nil, 0, refuse(c, statusBadVersion, fmt.Errorf("handshake: client speaks protocol version %d, we speak %d", h.version, protocolVersion))
	}
	msg1 := make([]byte, psk0MsgLen) // read before any refusal, so that the client's one write completes
	if _, err := io.ReadFull(c, msg1); err != nil {
		return nil, 0, fmt.Errorf("handshake: %w", err)
	}
	switch {
	case h.role != RoleControl && h.role != RoleVM:
		return nil, 0, refuse(c, statusBadRole, fmt.Errorf("handshake: unknown role %d", h.role))
	case h.mode != cr.mode():
		return nil, 0, refuse(c, statusBadMode, fmt.Errorf("%w: the client uses handshake mode %d, this receiver %d (host keys on one side only)", ErrAuth, h.mode, cr.mode()))
	}
	hs, err := noise.NewHandshakeState(cr.noiseConfig(false, prologue))
	if err != nil {
		return nil, 0, err
	}
	if _, _, _, err := hs.ReadMessage(nil, msg1); err != nil {
		return nil, 0, refuse(c, statusKeyRefused, fmt.Errorf("%w: client does not know the key", ErrAuth))
	}
	msg2, recv, send, err := hs.WriteMessage(nil, nil)
	if err != nil {
		return nil, 0, err
	}
	if _, err := c.Write(append(appendAnswer(nil, answer{protocolVersion, statusOK}), msg2...)); err != nil {
		return nil, 0, fmt.Errorf("handshake: %w", err)
	}
	peer := ""
	if cr.mode() == modeHostKeys {
		msg3 := make([]byte, xxMsg3Len)
		if _, err := io.ReadFull(c, msg3); err != nil {
			return nil, 0, fmt.Errorf("%w: client hung up before proving its host key (ours is not on its list?): %v", ErrAuth, err)
		}
		if _, recv, send, err = hs.ReadMessage(nil, msg3); err != nil {
			_, _ = c.Write([]byte{statusKeyRefused})
			return nil, 0, fmt.Errorf("%w: client's host key does not authenticate", ErrAuth)
		}
		name, ok := cr.Peers.lookup(hs.PeerStatic())
		if !ok {
			_, _ = c.Write([]byte{statusPeerRefused})
			return nil, 0, fmt.Errorf("%w: client's host key (%s) is not on --allow-peers", ErrAuth, keyID(hs.PeerStatic()))
		}
		peer = name
		if _, err := c.Write([]byte{statusOK}); err != nil {
			return nil, 0, fmt.Errorf("handshake: %w", err)
		}
	}
	sc := newSecureConn(c, send.UnsafeKey(), recv.UnsafeKey())
	sc.peer = peer
	if cr.mode() == modeSharedKey {
		typ, b, err := sc.Recv()
		if err != nil || typ != frameConfirm || len(b) != 0 {
			return nil, 0, fmt.Errorf("%w: client did not confirm the session keys (a replayed first message?): %v", ErrAuth, err)
		}
	}
	return sc, h.role, nil
}
