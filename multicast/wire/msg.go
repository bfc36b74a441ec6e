package wire

import (
	"encoding/binary"
	"math/bits"
)

// Limits checked before any allocation.
const (
	MaxMaskWords      = 16 // a member mask covers at most 1024 receivers
	MaxReceivers      = MaxMaskWords * 64
	MaxObject         = 1 << 16 // 64 KiB: the largest object (a page, maybe compressed, fits)
	MaxTransferChunks = 1 << 20 // chunks in one transfer; larger batches are split
	MaxNakRanges      = 128     // ranges in one NAK (fits a 1500-byte MTU)
)

// Mask is a set of receiver ids as a little bitmap of 64-bit words (bit i of word i/64 is receiver i).
// On the wire: one byte of word count, then the words big-endian.
type Mask []uint64

// Has reports whether id is in m.
func (m Mask) Has(id uint16) bool {
	w := int(id) / 64
	return w < len(m) && m[w]&(1<<(id%64)) != 0
}

// With returns m with id added (m may be reused).
func (m Mask) With(id uint16) Mask {
	w := int(id) / 64
	for len(m) <= w {
		m = append(m, 0)
	}
	m[w] |= 1 << (id % 64)
	return m
}

// Count is the number of ids in m.
func (m Mask) Count() int {
	n := 0
	for _, w := range m {
		n += bits.OnesCount64(w)
	}
	return n
}

// IDs lists the ids in m in increasing order.
func (m Mask) IDs() []uint16 {
	var ids []uint16
	for i, w := range m {
		for w != 0 {
			b := bits.TrailingZeros64(w)
			ids = append(ids, uint16(i*64+b))
			w &= w - 1
		}
	}
	return ids
}

// Len is the encoded size of m.
func (m Mask) Len() int { return 1 + 8*len(m) }

func appendMask(b []byte, m Mask) []byte {
	b = append(b, byte(len(m)))
	for _, w := range m {
		b = binary.BigEndian.AppendUint64(b, w)
	}
	return b
}

func parseMask(b []byte, field string) (Mask, []byte, error) {
	if len(b) < 1 {
		return nil, nil, ferr(ErrShort, field)
	}
	n := int(b[0])
	if n > MaxMaskWords {
		return nil, nil, ferr(ErrTooLarge, field)
	}
	b = b[1:]
	if len(b) < 8*n {
		return nil, nil, ferr(ErrShort, field)
	}
	m := make(Mask, n)
	for i := range m {
		m[i] = binary.BigEndian.Uint64(b[8*i:])
	}
	return m, b[8*n:], nil
}

// Message is the plaintext body of one packet type.
type Message interface {
	Type() Type
	AppendBody(b []byte) []byte
}

// Data carries one chunk of one object. Body:
//
//	0  4 transfer      4  4 total chunks in the transfer
//	8  4 chunk index   12 8 object id
//	20 4 object length 24 4 offset of this chunk in the object
//	28 1 block: chunks per FEC block in this transfer (1..255)
//	29 mask of the transfer's members, then the chunk payload to the end of the body
type Data struct {
	Transfer  Seq
	Total     uint32
	Index     uint32
	Object    uint64
	ObjectLen uint32
	Offset    uint32
	Block     uint8
	Members   Mask
	Payload   []byte
}

// DataFixedLen is a Data body's size without its mask and payload.
const DataFixedLen = 29

func (*Data) Type() Type { return TypeData }

func (d *Data) AppendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(d.Transfer))
	b = binary.BigEndian.AppendUint32(b, d.Total)
	b = binary.BigEndian.AppendUint32(b, d.Index)
	b = binary.BigEndian.AppendUint64(b, d.Object)
	b = binary.BigEndian.AppendUint32(b, d.ObjectLen)
	b = binary.BigEndian.AppendUint32(b, d.Offset)
	b = append(b, d.Block)
	b = appendMask(b, d.Members)
	return append(b, d.Payload...)
}

// ParseData reads a Data body. Payload aliases b.
func ParseData(b []byte) (*Data, error) {
	if len(b) < DataFixedLen {
		return nil, ferr(ErrShort, "data")
	}
	d := &Data{
		Transfer:  Seq(binary.BigEndian.Uint32(b)),
		Total:     binary.BigEndian.Uint32(b[4:]),
		Index:     binary.BigEndian.Uint32(b[8:]),
		Object:    binary.BigEndian.Uint64(b[12:]),
		ObjectLen: binary.BigEndian.Uint32(b[20:]),
		Offset:    binary.BigEndian.Uint32(b[24:]),
		Block:     b[28],
	}
	if d.Total == 0 || d.Total > MaxTransferChunks {
		return nil, ferr(ErrTooLarge, "data.total")
	}
	if d.Index >= d.Total {
		return nil, ferr(ErrInvalid, "data.index")
	}
	if d.ObjectLen > MaxObject {
		return nil, ferr(ErrTooLarge, "data.object_len")
	}
	if d.Block == 0 {
		return nil, ferr(ErrInvalid, "data.block")
	}
	m, rest, err := parseMask(b[DataFixedLen:], "data.members")
	if err != nil {
		return nil, err
	}
	d.Members = m
	if uint64(d.Offset)+uint64(len(rest)) > uint64(d.ObjectLen) {
		return nil, ferr(ErrInvalid, "data.payload")
	}
	d.Payload = rest
	return d, nil
}

// Range is an inclusive run of chunk indexes [First, Last].
type Range struct{ First, Last uint32 }

// Nak asks for the chunks in Ranges of one transfer. Body: transfer (4), range count (1), then per range
// first (4) and last (4), inclusive.
type Nak struct {
	Transfer Seq
	Ranges   []Range
}

func (*Nak) Type() Type { return TypeNak }

func (n *Nak) AppendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(n.Transfer))
	b = append(b, byte(len(n.Ranges)))
	for _, r := range n.Ranges {
		b = binary.BigEndian.AppendUint32(b, r.First)
		b = binary.BigEndian.AppendUint32(b, r.Last)
	}
	return b
}

// ParseNak reads a Nak body.
func ParseNak(b []byte) (*Nak, error) {
	if len(b) < 5 {
		return nil, ferr(ErrShort, "nak")
	}
	n := &Nak{Transfer: Seq(binary.BigEndian.Uint32(b))}
	c := int(b[4])
	if c > MaxNakRanges {
		return nil, ferr(ErrTooLarge, "nak.count")
	}
	b = b[5:]
	if len(b) != 8*c {
		return nil, ferr(ErrShort, "nak.ranges")
	}
	n.Ranges = make([]Range, c)
	for i := range n.Ranges {
		r := Range{First: binary.BigEndian.Uint32(b[8*i:]), Last: binary.BigEndian.Uint32(b[8*i+4:])}
		if r.First > r.Last || r.Last >= MaxTransferChunks {
			return nil, ferr(ErrInvalid, "nak.range")
		}
		n.Ranges[i] = r
	}
	return n, nil
}

// Complete confirms that the sending receiver holds every chunk of Transfer. Body: transfer (4).
type Complete struct{ Transfer Seq }

func (*Complete) Type() Type { return TypeComplete }

func (c *Complete) AppendBody(b []byte) []byte {
	return binary.BigEndian.AppendUint32(b, uint32(c.Transfer))
}

// ParseComplete reads a Complete body.
func ParseComplete(b []byte) (*Complete, error) {
	if len(b) != 4 {
		return nil, ferr(ErrShort, "complete")
	}
	return &Complete{Transfer: Seq(binary.BigEndian.Uint32(b))}, nil
}

// Poll says the sender has sent every chunk of Transfer once; every member in Pending must answer with
// Complete or Nak. Body: transfer (4), total chunks (4), block (1: chunks per FEC block), members mask,
// pending mask.
type Poll struct {
	Transfer Seq
	Total    uint32
	Block    uint8
	Members  Mask
	Pending  Mask
}

func (*Poll) Type() Type { return TypePoll }

func (p *Poll) AppendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(p.Transfer))
	b = binary.BigEndian.AppendUint32(b, p.Total)
	b = append(b, p.Block)
	b = appendMask(b, p.Members)
	return appendMask(b, p.Pending)
}

// ParsePoll reads a Poll body.
func ParsePoll(b []byte) (*Poll, error) {
	if len(b) < 9 {
		return nil, ferr(ErrShort, "poll")
	}
	p := &Poll{Transfer: Seq(binary.BigEndian.Uint32(b)), Total: binary.BigEndian.Uint32(b[4:]), Block: b[8]}
	if p.Total == 0 || p.Total > MaxTransferChunks {
		return nil, ferr(ErrTooLarge, "poll.total")
	}
	if p.Block == 0 {
		return nil, ferr(ErrInvalid, "poll.block")
	}
	var err error
	rest := b[9:]
	if p.Members, rest, err = parseMask(rest, "poll.members"); err != nil {
		return nil, err
	}
	if p.Pending, rest, err = parseMask(rest, "poll.pending"); err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, ferr(ErrInvalid, "poll.trailing")
	}
	return p, nil
}

// Leave tells the Dropped members that the sender gave up on them for Transfer (they were too slow or
// silent; the caller serves them another way). Body: transfer (4), dropped mask.
type Leave struct {
	Transfer Seq
	Dropped  Mask
}

func (*Leave) Type() Type { return TypeLeave }

func (l *Leave) AppendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(l.Transfer))
	return appendMask(b, l.Dropped)
}

// ParseLeave reads a Leave body.
func ParseLeave(b []byte) (*Leave, error) {
	if len(b) < 4 {
		return nil, ferr(ErrShort, "leave")
	}
	l := &Leave{Transfer: Seq(binary.BigEndian.Uint32(b))}
	m, rest, err := parseMask(b[4:], "leave.dropped")
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, ferr(ErrInvalid, "leave.trailing")
	}
	l.Dropped = m
	return l, nil
}

// Probe asks every receiver that hears the group to answer (auto mode), and measures the round trip.
// Body: nonce (8), sender clock in nanoseconds (8). ProbeReply echoes both.
type Probe struct {
	Nonce uint64
	Nanos int64
}

func (*Probe) Type() Type { return TypeProbe }

func (p *Probe) AppendBody(b []byte) []byte { return appendProbe(b, p.Nonce, p.Nanos) }

// ProbeReply answers a Probe, echoing it.
type ProbeReply Probe

func (*ProbeReply) Type() Type { return TypeProbeReply }

func (p *ProbeReply) AppendBody(b []byte) []byte { return appendProbe(b, p.Nonce, p.Nanos) }

func appendProbe(b []byte, nonce uint64, nanos int64) []byte {
	b = binary.BigEndian.AppendUint64(b, nonce)
	return binary.BigEndian.AppendUint64(b, uint64(nanos))
}

func parseProbe(b []byte) (Probe, error) {
	if len(b) != 16 {
		return Probe{}, ferr(ErrShort, "probe")
	}
	return Probe{Nonce: binary.BigEndian.Uint64(b), Nanos: int64(binary.BigEndian.Uint64(b[8:]))}, nil
}

// Join is a receiver's hint that it has joined the group and is ready. Empty body.
type Join struct{}

func (*Join) Type() Type { return TypeJoin }

func (*Join) AppendBody(b []byte) []byte { return b }

// ParseBody reads the body of a message of type t.
func ParseBody(t Type, b []byte) (Message, error) {
	switch t {
	case TypeData:
		return ParseData(b)
	case TypeNak:
		return ParseNak(b)
	case TypeComplete:
		return ParseComplete(b)
	case TypePoll:
		return ParsePoll(b)
	case TypeLeave:
		return ParseLeave(b)
	case TypeProbe:
		p, err := parseProbe(b)
		if err != nil {
			return nil, err
		}
		return &p, nil
	case TypeProbeReply:
		p, err := parseProbe(b)
		if err != nil {
			return nil, err
		}
		r := ProbeReply(p)
		return &r, nil
	case TypeParity:
		return ParseParity(b)
	case TypeJoin:
		if len(b) != 0 {
			return nil, ferr(ErrInvalid, "join.trailing")
		}
		return &Join{}, nil
	}
	return nil, ferr(ErrType, "type")
}

// AppendPacket appends a whole plaintext packet: header (with h.Type set from m) and body.
func AppendPacket(b []byte, h Header, m Message) []byte {
	h.Type = m.Type()
	return m.AppendBody(AppendHeader(b, h))
}

// ParsePacket reads a whole plaintext packet.
func ParsePacket(b []byte) (Header, Message, error) {
	h, body, err := ParseHeader(b)
	if err != nil {
		return Header{}, nil, err
	}
	m, err := ParseBody(h.Type, body)
	return h, m, err
}

// MaxDataPayload is the largest chunk payload that keeps a sealed Data packet, and a sealed Parity packet
// over chunks of that size, within datagram bytes (the UDP payload size: link MTU minus IPv4UDPOverhead)
// with a mask of maskWords words. Parity is the larger of the two: its shard carries a shard header.
func MaxDataPayload(datagram, maskWords int) int {
	return datagram - HeaderLen - TagLen - ParityFixedLen - 1 - 8*maskWords - ShardHeaderLen
}
