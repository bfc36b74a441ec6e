// Package wire is the byte layout of vmscatter's data-plane packets (docs/protocol-data.md).
//
// It is a leaf: it imports nothing of the project and works on []byte with Append/Parse pairs. Every
// length read from the wire is checked against a maximum before anything is allocated, and malformed
// input becomes a typed error (*FormatError), never a panic.
//
// A packet is a 24-byte clear header followed by a body. On the wire the body is sealed with
// AES-256-GCM (package multicast/seal) and the header is its additional data; this package only
// knows the plaintext layout.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Magic opens every packet: "VSMC" (vmscatter multicast).
const Magic uint32 = 0x56534D43

// Version is the data-plane protocol version carried in every header. Version 2 groups a transfer's
// chunks into FEC blocks: DATA and POLL carry the block size, PARITY carries Reed-Solomon parity, and a
// NAK asks for as many symbols of a block as it lists chunks of it.
const Version uint8 = 2

// HeaderLen is the size of the clear header.
const HeaderLen = 24

// TagLen is the size of the AEAD tag that follows the sealed body.
const TagLen = 16

// MaxPacket bounds a whole packet (header, body, tag). Bigger packets are refused unread.
const MaxPacket = 9216

// IPv4UDPOverhead is the IPv4 (no options) plus UDP header size, for turning a link MTU into a datagram size.
const IPv4UDPOverhead = 28

// SenderNode is the node number of the sender in every session. Receivers are 0..MaxReceivers-1.
const SenderNode uint16 = 0xFFFF

// Type is the message type, byte 5 of the header.
type Type uint8

// Message types. docs/protocol-data.md gives each body byte by byte.
const (
	TypeData       Type = 0x01 // sender → group: one chunk of one object
	TypeNak        Type = 0x02 // receiver → group: missing chunk ranges of one transfer
	TypeComplete   Type = 0x03 // receiver → sender: every chunk of a transfer is delivered
	TypePoll       Type = 0x04 // sender → group: transfer fully sent; pending members must answer
	TypeLeave      Type = 0x05 // sender → group: these members are dropped from a transfer
	TypeProbe      Type = 0x06 // sender → group: who hears the group? (auto mode, RTT)
	TypeProbeReply Type = 0x07 // receiver → sender: I hear the group
	TypeJoin       Type = 0x08 // receiver → group: I joined and am ready (hint)
	TypeParity     Type = 0x09 // sender → group: one Reed-Solomon parity shard of one FEC block
)

func (t Type) String() string {
	switch t {
	case TypeData:
		return "DATA"
	case TypeNak:
		return "NAK"
	case TypeComplete:
		return "COMPLETE"
	case TypePoll:
		return "POLL"
	case TypeLeave:
		return "LEAVE"
	case TypeProbe:
		return "PROBE"
	case TypeProbeReply:
		return "PROBE_REPLY"
	case TypeJoin:
		return "JOIN"
	case TypeParity:
		return "PARITY"
	}
	return fmt.Sprintf("type 0x%02x", uint8(t))
}

// Error kinds; a *FormatError wraps one of them, so errors.Is works.
var (
	ErrShort    = errors.New("wire: packet truncated")
	ErrMagic    = errors.New("wire: bad magic")
	ErrVersion  = errors.New("wire: unsupported version")
	ErrType     = errors.New("wire: unknown message type")
	ErrTooLarge = errors.New("wire: length over limit")
	ErrInvalid  = errors.New("wire: invalid field")
)

// FormatError says what was wrong with a packet and where.
type FormatError struct {
	Kind  error  // one of the Err* values
	Field string // the field being read
}

func (e *FormatError) Error() string { return e.Kind.Error() + ": " + e.Field }
func (e *FormatError) Unwrap() error { return e.Kind }

func ferr(kind error, field string) error { return &FormatError{Kind: kind, Field: field} }

// Seq is a wrap-safe 32-bit sequence number (transfer ids). Comparison is modulo 2^32: a is before b
// when b-a, as a signed 32-bit value, is positive.
type Seq uint32

// LessThan reports whether s comes before t in wrap-around order.
func (s Seq) LessThan(t Seq) bool { return int32(s-t) < 0 }

// Next is s+1 with wrap.
func (s Seq) Next() Seq { return s + 1 }

// Header is the clear header of every packet; it is also the AEAD's additional data.
//
//	0  4  magic "VSMC"
//	4  1  version
//	5  1  type
//	6  2  node (SenderNode, or the receiver's id)
//	8  8  session id
//	16 8  packet number (per node, strictly increasing, never reused)
type Header struct {
	Type    Type
	Node    uint16
	Session uint64
	PN      uint64
}

// AppendHeader appends h's 24 bytes to b.
func AppendHeader(b []byte, h Header) []byte {
	b = binary.BigEndian.AppendUint32(b, Magic)
	b = append(b, Version, byte(h.Type))
	b = binary.BigEndian.AppendUint16(b, h.Node)
	b = binary.BigEndian.AppendUint64(b, h.Session)
	return binary.BigEndian.AppendUint64(b, h.PN)
}

// ParseHeader reads the header at the start of b and returns it with the rest of b.
func ParseHeader(b []byte) (Header, []byte, error) {
	if len(b) > MaxPacket {
		return Header{}, nil, ferr(ErrTooLarge, "packet")
	}
	if len(b) < HeaderLen {
		return Header{}, nil, ferr(ErrShort, "header")
	}
	if binary.BigEndian.Uint32(b) != Magic {
		return Header{}, nil, ferr(ErrMagic, "magic")
	}
	if b[4] != Version {
		return Header{}, nil, ferr(ErrVersion, "version")
	}
	h := Header{
		Type:    Type(b[5]),
		Node:    binary.BigEndian.Uint16(b[6:]),
		Session: binary.BigEndian.Uint64(b[8:]),
		PN:      binary.BigEndian.Uint64(b[16:]),
	}
	if h.Type < TypeData || h.Type > TypeParity {
		return Header{}, nil, ferr(ErrType, "type")
	}
	return h, b[HeaderLen:], nil
}
