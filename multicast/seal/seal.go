// Package seal authenticates and encrypts data-plane packets with AES-256-GCM and drops forged,
// replayed, truncated and oversized ones, counting each kind.
//
// The AEAD key is derived from a 32-byte session key with HKDF-SHA256 (info "vmscatter data v1"), so the
// data plane never shares a key schedule with the control channel. The 12-byte GCM nonce is the sending
// node (2 bytes), two zero bytes, and the packet number (8 bytes).
//
// A (key, nonce) pair is never used twice, by construction: every group of a run has its own session key
// (GroupKey: HKDF of the run's key and the group's session id, which names the group), within a group
// every node has its own number (the sender 0xFFFF, each receiver its id), and every node has one Sealer per
// group, whose packet numbers strictly increase and never wrap (ErrExhausted). Drivers start a node's numbers
// at the wall clock in nanoseconds; uniqueness does not rest on that, only on one Sealer per (group, node).
//
// The 24-byte clear header (wire.Header) is the additional data: it is authenticated, not encrypted. Its
// session id is the group's (GroupSession), so a packet of one group is refused by every other group
// before decryption, and could not be opened there anyway.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"slices"
	"sync/atomic"

	"github.com/vmscatter/vmscatter/multicast/replay"
	"github.com/vmscatter/vmscatter/multicast/wire"
)

// Errors returned by Open; each increments its counter.
var (
	ErrOversized = errors.New("seal: packet over the size limit")
	ErrTruncated = errors.New("seal: packet truncated")
	ErrHeader    = errors.New("seal: bad header")
	ErrSession   = errors.New("seal: other session")
	ErrOwn       = errors.New("seal: own packet")
	ErrForged    = errors.New("seal: authentication failed")
	ErrReplayed  = errors.New("seal: replayed or too old")
	ErrBody      = errors.New("seal: bad body")
	ErrExhausted = errors.New("seal: packet numbers exhausted")
)

// Counters counts what Open did. Safe for concurrent use (atomics); read them at any time.
type Counters struct {
	Opened, Oversized, Truncated, BadHeader, WrongSession, Own, Forged, Replayed, BadBody atomic.Uint64
}

// Snapshot is a plain copy of Counters.
type Snapshot struct {
	Opened, Oversized, Truncated, BadHeader, WrongSession, Own, Forged, Replayed, BadBody uint64
}

// Snapshot reads every counter.
func (c *Counters) Snapshot() Snapshot {
	return Snapshot{c.Opened.Load(), c.Oversized.Load(), c.Truncated.Load(), c.BadHeader.Load(),
		c.WrongSession.Load(), c.Own.Load(), c.Forged.Load(), c.Replayed.Load(), c.BadBody.Load()}
}

// Dropped is the number of packets refused for any reason other than being our own.
func (s Snapshot) Dropped() uint64 {
	return s.Oversized + s.Truncated + s.BadHeader + s.WrongSession + s.Forged + s.Replayed + s.BadBody
}

func newAEAD(key [32]byte) (cipher.AEAD, error) {
	k, err := hkdf.Key(sha256.New, key[:], nil, "vmscatter data v1", 32)
	if err != nil {
		return nil, err
	}
	b, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// GroupSession is the session id of prime group number group (1 or more) of a run: the run's session id with
// its low 16 bits replaced by the group number. It goes into every packet header of the group, and so into
// the AEAD's additional data.
func GroupSession(run uint64, group uint16) uint64 {
	return run&^0xFFFF | uint64(group)
}

// GroupKey derives the session key of one group from the run's data key: HKDF-SHA256(ikm = run key, salt =
// none, info = "vmscatter group v1" · be64 group session id). Groups of one run never share a key, so their
// packet numbers may overlap freely; and a target learns only the keys of the groups it joins.
func GroupKey(run [32]byte, groupSession uint64) [32]byte {
	info := binary.BigEndian.AppendUint64([]byte("vmscatter group v1"), groupSession)
	k, err := hkdf.Key(sha256.New, run[:], nil, string(info), 32)
	if err != nil {
		panic(err) // 32 bytes of SHA-256 HKDF output never fail
	}
	return [32]byte(k)
}

func nonce(n *[12]byte, node uint16, pn uint64) {
	binary.BigEndian.PutUint16(n[0:], node)
	n[2], n[3] = 0, 0
	binary.BigEndian.PutUint64(n[4:], pn)
}

// Sealer seals packets from one node. Not safe for concurrent use: one goroutine owns it.
type Sealer struct {
	aead    cipher.AEAD
	session uint64
	node    uint16
	pn      uint64
}

// NewSealer makes the sealer of node in session; its first packet number is firstPN.
func NewSealer(key [32]byte, session uint64, node uint16, firstPN uint64) (*Sealer, error) {
	a, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: a, session: session, node: node, pn: firstPN}, nil
}

// Seal appends the sealed packet carrying m to dst[:0] and returns it. The packet is encrypted in
// place, so dst should have room for the whole packet plus wire.TagLen.
func (s *Sealer) Seal(dst []byte, m wire.Message) ([]byte, error) {
	if s.pn == ^uint64(0) {
		return nil, ErrExhausted
	}
	h := wire.Header{Node: s.node, Session: s.session, PN: s.pn}
	s.pn++
	b := wire.AppendPacket(dst[:0], h, m)
	if len(b)+wire.TagLen > wire.MaxPacket {
		return nil, ErrOversized
	}
	b = slices.Grow(b, wire.TagLen)
	var n [12]byte
	nonce(&n, h.Node, h.PN)
	body := b[wire.HeaderLen:]
	return b[:wire.HeaderLen+len(s.aead.Seal(body[:0], n[:], body, b[:wire.HeaderLen]))], nil
}

// Opener opens packets for one node: it checks the header, authenticates, decrypts and filters replays
// per sending node. Not safe for concurrent use, except its Counters.
type Opener struct {
	aead    cipher.AEAD
	session uint64
	self    uint16
	windows map[uint16]*replay.Filter
	C       *Counters
}

// NewOpener makes the opener of node self in session; packets from self are refused as ErrOwn
// (multicast loops our own packets back on a shared host). counters may be shared by several openers.
func NewOpener(key [32]byte, session uint64, self uint16, counters *Counters) (*Opener, error) {
	a, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	if counters == nil {
		counters = new(Counters)
	}
	return &Opener{aead: a, session: session, self: self, windows: make(map[uint16]*replay.Filter), C: counters}, nil
}

// Open authenticates and decrypts pkt in place and parses it. The returned message may alias pkt.
func (o *Opener) Open(pkt []byte) (wire.Header, wire.Message, error) {
	if len(pkt) > wire.MaxPacket {
		o.C.Oversized.Add(1)
		return wire.Header{}, nil, ErrOversized
	}
	if len(pkt) < wire.HeaderLen+wire.TagLen {
		o.C.Truncated.Add(1)
		return wire.Header{}, nil, ErrTruncated
	}
	h, _, err := wire.ParseHeader(pkt)
	if err != nil {
		o.C.BadHeader.Add(1)
		return wire.Header{}, nil, errors.Join(ErrHeader, err)
	}
	if h.Session != o.session {
		o.C.WrongSession.Add(1)
		return wire.Header{}, nil, ErrSession
	}
	if h.Node == o.self {
		o.C.Own.Add(1)
		return wire.Header{}, nil, ErrOwn
	}
	if h.Node != wire.SenderNode && int(h.Node) >= wire.MaxReceivers {
		o.C.BadHeader.Add(1)
		return wire.Header{}, nil, ErrHeader
	}
	var n [12]byte
	nonce(&n, h.Node, h.PN)
	sealed := pkt[wire.HeaderLen:]
	body, err := o.aead.Open(sealed[:0], n[:], sealed, pkt[:wire.HeaderLen])
	if err != nil {
		o.C.Forged.Add(1)
		return wire.Header{}, nil, ErrForged
	}
	w := o.windows[h.Node]
	if w == nil {
		w = new(replay.Filter)
		o.windows[h.Node] = w
	}
	if !w.Accept(h.PN) {
		o.C.Replayed.Add(1)
		return wire.Header{}, nil, ErrReplayed
	}
	m, err := wire.ParseBody(h.Type, body)
	if err != nil {
		o.C.BadBody.Add(1)
		return wire.Header{}, nil, errors.Join(ErrBody, err)
	}
	o.C.Opened.Add(1)
	return h, m, nil
}
