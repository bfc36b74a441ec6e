package wire

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func samples() []Message {
	return []Message{
		&Data{Transfer: 7, Total: 3, Index: 2, Object: 0xdeadbeef, ObjectLen: 4096, Offset: 2790, Block: 64, Members: Mask{5}, Payload: bytes.Repeat([]byte{9}, 1306)},
		&Data{Transfer: 1, Total: 1, Index: 0, Object: 1, ObjectLen: 0, Block: 1, Members: Mask{}, Payload: []byte{}},
		&Nak{Transfer: 0xffffffff, Ranges: []Range{{0, 0}, {5, 9}}},
		&Nak{Transfer: 3, Ranges: []Range{}},
		&Complete{Transfer: 42},
		&Poll{Transfer: 9, Total: 100, Block: 64, Members: Mask{3, 1}, Pending: Mask{1}},
		&Parity{Transfer: 9, Total: 100, Block: 64, BlockIndex: 1, Index: 219, Members: Mask{3}, Shard: bytes.Repeat([]byte{7}, 40)},
		&Parity{Transfer: 2, Total: 1, Block: 255, BlockIndex: 0, Index: 254, Members: Mask{}, Shard: make([]byte, ShardHeaderLen)},
		&Leave{Transfer: 9, Dropped: Mask{0, 2}},
		&Probe{Nonce: 77, Nanos: -5},
		&ProbeReply{Nonce: 77, Nanos: 123456789},
		&Join{},
	}
}

func TestRoundTrip(t *testing.T) {
	for _, m := range samples() {
		h := Header{Node: 3, Session: 0x0102030405060708, PN: 99}
		b := AppendPacket(nil, h, m)
		h2, m2, err := ParsePacket(b)
		if err != nil {
			t.Fatalf("%v: %v", m.Type(), err)
		}
		h.Type = m.Type()
		if h2 != h {
			t.Fatalf("header %+v != %+v", h2, h)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("%v: %#v != %#v", m.Type(), m2, m)
		}
	}
}

func TestErrors(t *testing.T) {
	good := AppendPacket(nil, Header{Session: 1}, &Complete{Transfer: 1})
	cases := map[string]struct {
		b    []byte
		kind error
	}{
		"short":    {good[:10], ErrShort},
		"magic":    {append([]byte{0}, good[1:]...), ErrMagic},
		"version":  {append(append([]byte{}, good[:4]...), append([]byte{9}, good[5:]...)...), ErrVersion},
		"huge":     {make([]byte, MaxPacket+1), ErrTooLarge},
		"body":     {good[:len(good)-1], ErrShort},
		"nakcount": {AppendPacket(nil, Header{}, &Nak{Ranges: make([]Range, 200)}), ErrTooLarge},
		"datatot":  {AppendPacket(nil, Header{}, &Data{Total: MaxTransferChunks + 1, Block: 1}), ErrTooLarge},
		"dataidx":  {AppendPacket(nil, Header{}, &Data{Total: 2, Index: 2, Block: 1}), ErrInvalid},
		"datalen":  {AppendPacket(nil, Header{}, &Data{Total: 1, ObjectLen: 3, Offset: 2, Block: 1, Payload: []byte{1, 2}}), ErrInvalid},
		"datablk":  {AppendPacket(nil, Header{}, &Data{Total: 1}), ErrInvalid},
		"pollblk":  {AppendPacket(nil, Header{}, &Poll{Total: 1}), ErrInvalid},
		"parblk":   {AppendPacket(nil, Header{}, &Parity{Total: 64, Block: 32, BlockIndex: 2, Shard: make([]byte, ShardHeaderLen)}), ErrInvalid},
		"parzero":  {AppendPacket(nil, Header{}, &Parity{Total: 64, Shard: make([]byte, ShardHeaderLen)}), ErrInvalid},
		"paridx":   {AppendPacket(nil, Header{}, &Parity{Total: 64, Block: 32, BlockIndex: 1, Index: 224, Shard: make([]byte, ShardHeaderLen)}), ErrTooLarge},
		"parshard": {AppendPacket(nil, Header{}, &Parity{Total: 64, Block: 32, Shard: make([]byte, ShardHeaderLen-1)}), ErrShort},
		"mask":     {AppendPacket(nil, Header{}, &Leave{Dropped: make(Mask, MaxMaskWords+1)}), ErrTooLarge},
		"badrange": {AppendPacket(nil, Header{}, &Nak{Ranges: []Range{{5, 4}}}), ErrInvalid},
	}
	for name, c := range cases {
		_, _, err := ParsePacket(c.b)
		var fe *FormatError
		if !errors.Is(err, c.kind) || !errors.As(err, &fe) {
			t.Errorf("%s: got %v, want %v", name, err, c.kind)
		}
	}
}

func TestSeqWrap(t *testing.T) {
	if !Seq(0xfffffff0).LessThan(5) || Seq(5).LessThan(0xfffffff0) || Seq(3).LessThan(3) {
		t.Fatal("wrap-around order broken")
	}
	if Seq(0xffffffff).Next() != 0 {
		t.Fatal("Next does not wrap")
	}
}

func TestMask(t *testing.T) {
	var m Mask
	m = m.With(0).With(64).With(1023)
	if !m.Has(0) || !m.Has(64) || !m.Has(1023) || m.Has(1) || m.Has(2000) || m.Count() != 3 {
		t.Fatalf("mask %v", m)
	}
	if got := m.IDs(); !reflect.DeepEqual(got, []uint16{0, 64, 1023}) {
		t.Fatalf("ids %v", got)
	}
}

func TestDataFitsMTU(t *testing.T) {
	for _, mtu := range []int{1500, 9000} {
		dg := mtu - IPv4UDPOverhead
		p := MaxDataPayload(dg, 1)
		b := AppendPacket(nil, Header{}, &Data{Total: 1, ObjectLen: uint32(p), Block: 1, Members: Mask{1}, Payload: make([]byte, p)})
		if len(b)+TagLen > dg {
			t.Fatalf("sealed data %d bytes, datagram %d", len(b)+TagLen, dg)
		}
		shard := AppendShard(nil, Shard{ObjectLen: uint32(p), Payload: make([]byte, p)})
		b = AppendPacket(nil, Header{}, &Parity{Total: 1, Block: 1, Members: Mask{1}, Shard: shard})
		if len(b)+TagLen != dg {
			t.Fatalf("sealed parity %d bytes, datagram %d", len(b)+TagLen, dg)
		}
	}
}

func TestShard(t *testing.T) {
	s := Shard{Object: 5, ObjectLen: 100, Offset: 90, Payload: bytes.Repeat([]byte{1}, 10)}
	b := append(AppendShard(nil, s), 0, 0, 0) // padded
	got, err := ParseShard(b)
	if err != nil || !reflect.DeepEqual(got, s) {
		t.Fatalf("%+v %v", got, err)
	}
	bad := AppendShard(nil, Shard{ObjectLen: 5, Offset: 4, Payload: []byte{1, 2}})
	if _, err := ParseShard(bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("payload past the object: %v", err)
	}
	if _, err := ParseShard(bad[:len(bad)-1]); !errors.Is(err, ErrInvalid) {
		t.Fatalf("payload past the shard: %v", err)
	}
	if _, err := ParseShard(AppendShard(nil, Shard{ObjectLen: MaxObject + 1})); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("huge object: %v", err)
	}
}

func FuzzShard(f *testing.F) {
	f.Add(AppendShard(nil, Shard{Object: 1, ObjectLen: 4096, Offset: 1389, Payload: make([]byte, 1389)}))
	f.Add(append(AppendShard(nil, Shard{ObjectLen: 3, Payload: []byte{1, 2, 3}}), 0, 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseShard(b)
		if err != nil {
			return
		}
		again := AppendShard(nil, s)
		if !bytes.Equal(again, b[:len(again)]) {
			t.Fatalf("round trip differs:\n%x\n%x", b, again)
		}
	})
}

func FuzzPacket(f *testing.F) {
	for _, m := range samples() {
		f.Add(AppendPacket(nil, Header{Node: 1, Session: 2, PN: 3}, m))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, m, err := ParsePacket(b)
		if err != nil {
			return
		}
		again := AppendPacket(nil, h, m)
		if !bytes.Equal(again, b) {
			t.Fatalf("round trip differs:\n%x\n%x", b, again)
		}
	})
}
