package source

import (
	"bytes"
	"testing"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/qemu/stream"
)

func TestLiteralsSentLeavesOutOnlyExactRepeats(t *testing.T) {
	l := literalsSent{digester: dedup.NewDigester([32]byte{7}), at: map[uint64]dedup.Digest{}}
	x := bytes.Repeat([]byte{0xa5}, dedup.PageSize)
	y := bytes.Clone(x)
	y[4095] ^= 1 // one bit apart
	at := func(block int, off stream.RAMOffset, data []byte) stream.Page {
		return stream.Page{Block: block, Offset: off, Data: data}
	}
	steps := []struct {
		name string
		page stream.Page
		kind dedup.RecordKind // what the stream then sends, when the page is not left out
		same bool
	}{
		{"first literal", at(0, 0x1000, x), dedup.RecordLiteral, false},
		{"the same bytes again", at(0, 0x1000, x), 0, true},
		{"the same bytes at another address", at(0, 0x2000, x), dedup.RecordLiteral, false},
		{"the same bytes in another block", at(1, 0x1000, x), dedup.RecordLiteral, false},
		{"one bit apart", at(0, 0x1000, y), dedup.RecordLiteral, false},
		{"the old bytes after the new", at(0, 0x1000, x), dedup.RecordLiteral, false},
		{"a repeat (left out); then the stream sends a reference there", at(0, 0x1000, x), dedup.RecordRef, true},
		{"the literal's bytes after the reference", at(0, 0x1000, x), dedup.RecordLiteral, false},
		{"a zero page there", stream.Page{Block: 0, Offset: 0x1000, Zero: true}, dedup.RecordZero, false},
		{"the literal's bytes after the zero page", at(0, 0x1000, x), dedup.RecordLiteral, false},
	}
	for _, s := range steps {
		if got := l.same(s.page); got != s.same {
			t.Fatalf("%s: same = %v, want %v", s.name, got, s.same)
		}
		if !s.same || s.kind == dedup.RecordRef {
			l.record(s.page, s.kind)
		}
	}
}

func TestLiteralsSentWithoutDigesterTracksNothing(t *testing.T) {
	l := literalsSent{at: map[uint64]dedup.Digest{}}
	p := stream.Page{Data: make([]byte, dedup.PageSize)}
	p.Data[0] = 1
	l.record(p, dedup.RecordLiteral)
	if l.same(p) {
		t.Fatal("a repeat was left out with no digest to prove it exact")
	}
}
