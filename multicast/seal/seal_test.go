package seal

import (
	"bytes"
	"errors"
	"testing"

	"github.com/vmscatter/vmscatter/multicast/wire"
)

var key = [32]byte{1, 2, 3}

func pair(t testing.TB) (*Sealer, *Opener) {
	s, err := NewSealer(key, 7, wire.SenderNode, 1000)
	if err != nil {
		t.Fatal(err)
	}
	o, err := NewOpener(key, 7, 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s, o
}

func TestSealOpen(t *testing.T) {
	s, o := pair(t)
	msg := &wire.Data{Transfer: 1, Total: 1, ObjectLen: 5, Block: 1, Members: wire.Mask{8}, Payload: []byte("hello")}
	p, err := s.Seal(make([]byte, 0, 2048), msg)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(p, []byte("hello")) {
		t.Fatal("payload in clear")
	}
	keep := append([]byte(nil), p...)
	h, m, err := o.Open(p)
	if err != nil || h.PN != 1000 || string(m.(*wire.Data).Payload) != "hello" {
		t.Fatalf("open: %v %+v", err, h)
	}
	// The same bytes again: replay.
	if _, _, err := o.Open(append([]byte(nil), keep...)); !errors.Is(err, ErrReplayed) {
		t.Fatalf("replay: %v", err)
	}
	// One flipped bit anywhere: forged (header bits may also fail the header checks first).
	for i := range keep {
		b := append([]byte(nil), keep...)
		b[i] ^= 0x10
		if _, _, err := o.Open(b); err == nil {
			t.Fatalf("bit %d flipped still opens", i)
		}
	}
	// Wrong key.
	s2, _ := NewSealer([32]byte{9}, 7, wire.SenderNode, 5000)
	p2, _ := s2.Seal(nil, &wire.Complete{Transfer: 1})
	if _, _, err := o.Open(p2); !errors.Is(err, ErrForged) {
		t.Fatalf("wrong key: %v", err)
	}
	if _, _, err := o.Open(keep[:20]); !errors.Is(err, ErrTruncated) {
		t.Fatalf("truncated: %v", err)
	}
	if _, _, err := o.Open(make([]byte, wire.MaxPacket+1)); !errors.Is(err, ErrOversized) {
		t.Fatalf("oversized: %v", err)
	}
	c := o.C.Snapshot()
	if c.Opened != 1 || c.Replayed != 1 || c.Forged < 2 || c.Truncated != 1 || c.Oversized != 1 {
		t.Fatalf("counters %+v", c)
	}
}

func TestOwnAndSession(t *testing.T) {
	me, _ := NewSealer(key, 7, 3, 1)
	o, _ := NewOpener(key, 7, 3, nil)
	p, _ := me.Seal(nil, &wire.Join{})
	if _, _, err := o.Open(p); !errors.Is(err, ErrOwn) {
		t.Fatalf("own: %v", err)
	}
	other, _ := NewSealer(key, 8, 4, 1)
	p, _ = other.Seal(nil, &wire.Join{})
	if _, _, err := o.Open(p); !errors.Is(err, ErrSession) {
		t.Fatalf("session: %v", err)
	}
}

func FuzzOpen(f *testing.F) {
	s, _ := pair(f)
	for _, m := range []wire.Message{&wire.Complete{Transfer: 3}, &wire.Nak{Transfer: 1, Ranges: []wire.Range{{First: 1, Last: 2}}},
		&wire.Data{Transfer: 1, Total: 2, ObjectLen: 3, Block: 1, Members: wire.Mask{1}, Payload: []byte("abc")}} {
		p, _ := s.Seal(nil, m)
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_, o := pair(t)
		h, m, err := o.Open(b)
		if err == nil && (m == nil || h.Session != 7) {
			t.Fatal("opened without a message")
		}
	})
}

func TestGroupKeyAndSession(t *testing.T) {
	run := [32]byte{7}
	s1, s2 := GroupSession(0x1122334455667788, 1), GroupSession(0x1122334455667788, 2)
	if s1 != 0x1122334455660001 || s2 != 0x1122334455660002 {
		t.Fatalf("sessions %x %x", s1, s2)
	}
	k1, k2 := GroupKey(run, s1), GroupKey(run, s2)
	if k1 == k2 || k1 == run || GroupKey(run, s1) != k1 || GroupKey([32]byte{8}, s1) == k1 {
		t.Fatal("group keys are not distinct per group and run, or not deterministic")
	}
}
