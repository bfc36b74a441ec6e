package wire

import "encoding/binary"

// FEC blocks. A transfer's chunks are grouped into blocks of Block consecutive chunks (the last block
// may be shorter). Chunk i of a block is data shard i of a systematic Reed-Solomon code over GF(2^8);
// parity shard j is sent in a Parity packet. Any BlockLen of a block's data and parity shards rebuild it.
const (
	// MaxBlockShards bounds data plus parity shards of one block (GF(2^8)).
	MaxBlockShards = 256
	// ShardHeaderLen is the size of a shard's header: object id (8), object length (4), offset (4),
	// payload length (4). The payload and zero padding to the block's shard size follow.
	ShardHeaderLen = 20
	// ParityFixedLen is a Parity body's size without its mask and shard.
	ParityFixedLen = 14
)

// BlockLen is the number of chunks in block b of a transfer of total chunks with blocks of k chunks, or 0
// when the block lies outside the transfer.
func BlockLen(total uint32, k uint8, b uint32) uint32 {
	if k == 0 {
		return 0
	}
	first := uint64(b) * uint64(k)
	if first >= uint64(total) {
		return 0
	}
	return uint32(min(uint64(k), uint64(total)-first))
}

// Parity carries parity shard Index of FEC block BlockIndex of a transfer. Body:
//
//	0  4 transfer      4  4 total chunks in the transfer
//	8  1 block: chunks per FEC block (1..255)
//	9  4 block index (the block's first chunk is block index × block)
//	13 1 parity index j: BlockLen + j < 256
//	14 mask of the transfer's members, then the parity shard to the end of the body
//
// The shard is as long as the block's longest data shard (ShardHeaderLen + its payload).
type Parity struct {
	Transfer   Seq
	Total      uint32
	Block      uint8
	BlockIndex uint32
	Index      uint8
	Members    Mask
	Shard      []byte
}

func (*Parity) Type() Type { return TypeParity }

func (p *Parity) AppendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(p.Transfer))
	b = binary.BigEndian.AppendUint32(b, p.Total)
	b = append(b, p.Block)
	b = binary.BigEndian.AppendUint32(b, p.BlockIndex)
	b = append(b, p.Index)
	b = appendMask(b, p.Members)
	return append(b, p.Shard...)
}

// ParseParity reads a Parity body. Shard aliases b.
func ParseParity(b []byte) (*Parity, error) {
	if len(b) < ParityFixedLen {
		return nil, ferr(ErrShort, "parity")
	}
	p := &Parity{
		Transfer:   Seq(binary.BigEndian.Uint32(b)),
		Total:      binary.BigEndian.Uint32(b[4:]),
		Block:      b[8],
		BlockIndex: binary.BigEndian.Uint32(b[9:]),
		Index:      b[13],
	}
	if p.Total == 0 || p.Total > MaxTransferChunks {
		return nil, ferr(ErrTooLarge, "parity.total")
	}
	n := BlockLen(p.Total, p.Block, p.BlockIndex)
	if n == 0 {
		return nil, ferr(ErrInvalid, "parity.block")
	}
	if n+uint32(p.Index) >= MaxBlockShards {
		return nil, ferr(ErrTooLarge, "parity.index")
	}
	m, rest, err := parseMask(b[ParityFixedLen:], "parity.members")
	if err != nil {
		return nil, err
	}
	if len(rest) < ShardHeaderLen {
		return nil, ferr(ErrShort, "parity.shard")
	}
	p.Members, p.Shard = m, rest
	return p, nil
}

// Shard is a data shard of an FEC block: one chunk with the fields a receiver needs to place it.
type Shard struct {
	Object    uint64
	ObjectLen uint32
	Offset    uint32
	Payload   []byte
}

// AppendShard appends the shard of one chunk (header and payload, no padding).
func AppendShard(b []byte, s Shard) []byte {
	b = binary.BigEndian.AppendUint64(b, s.Object)
	b = binary.BigEndian.AppendUint32(b, s.ObjectLen)
	b = binary.BigEndian.AppendUint32(b, s.Offset)
	b = binary.BigEndian.AppendUint32(b, uint32(len(s.Payload)))
	return append(b, s.Payload...)
}

// ParseShard reads a data shard (a rebuilt one: the bytes after the payload are padding). Payload aliases b.
func ParseShard(b []byte) (Shard, error) {
	if len(b) < ShardHeaderLen {
		return Shard{}, ferr(ErrShort, "shard")
	}
	s := Shard{Object: binary.BigEndian.Uint64(b), ObjectLen: binary.BigEndian.Uint32(b[8:]), Offset: binary.BigEndian.Uint32(b[12:])}
	n := binary.BigEndian.Uint32(b[16:])
	if s.ObjectLen > MaxObject {
		return Shard{}, ferr(ErrTooLarge, "shard.object_len")
	}
	if uint64(n) > uint64(len(b)-ShardHeaderLen) || uint64(s.Offset)+uint64(n) > uint64(s.ObjectLen) {
		return Shard{}, ferr(ErrInvalid, "shard.length")
	}
	s.Payload = b[ShardHeaderLen : ShardHeaderLen+n]
	return s, nil
}
