package dedup

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func sampleRecords() []PageRecord {
	lit := CodecS2.Append(nil, textPage(3))
	return []PageRecord{
		{Kind: RecordZero, Block: 0, Offset: 0},
		{Kind: RecordZero, Block: 2, Offset: 7 * PageSize, Fill: 0xAB},
		{Kind: RecordRef, Block: 1, Offset: 1 << 40, Ref: 0xDEADBEEF},
		{Kind: RecordLiteral, Block: 0xFFFF, Offset: 3 * PageSize, Codec: CodecS2, Data: lit},
		{Kind: RecordLiteral, Block: 0, Offset: PageSize, Codec: CodecNone, Data: textPage(4)},
	}
}

func TestRecordRoundTrip(t *testing.T) {
	var batch []byte
	for _, r := range sampleRecords() {
		batch = AppendRecord(batch, r)
	}
	var got []PageRecord
	if err := ParseRecords(batch, func(r PageRecord) error { got = append(got, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, sampleRecords()) {
		t.Fatalf("got %+v", got)
	}
	// Fixed sizes (docs/dedup.md).
	if n := len(AppendRecord(nil, sampleRecords()[0])); n != 12 {
		t.Errorf("zero record: %d bytes", n)
	}
	if n := len(AppendRecord(nil, sampleRecords()[2])); n != 15 {
		t.Errorf("ref record: %d bytes", n)
	}
	want := []byte{3, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0xDE, 0xAD, 0xBE, 0xEF}
	if b := AppendRecord(nil, sampleRecords()[2]); !bytes.Equal(b, want) {
		t.Errorf("ref record bytes % x, want % x", b, want)
	}
}

func TestParseRecordErrors(t *testing.T) {
	recs := sampleRecords()
	for _, r := range recs {
		b := AppendRecord(nil, r)
		for i := range len(b) {
			if _, _, err := ParseRecord(b[:i]); !errors.Is(err, ErrShortRecord) {
				t.Fatalf("%v record cut at %d: err = %v", r.Kind, i, err)
			}
		}
	}
	bad := map[string][]byte{
		"kind":      {9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		"offset":    {1, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 1, 0},
		"codec":     {2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 1, 0},
		"empty":     {2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0},
		"huge":      {2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xFF, 0xFF},
		"short raw": {2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0},
	}
	for name, b := range bad {
		if _, _, err := ParseRecord(b); !errors.Is(err, ErrBadRecord) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	for _, r := range []PageRecord{
		{Kind: 0},
		{Kind: RecordZero, Offset: 1},
		{Kind: RecordZero, Data: []byte{1}},
		{Kind: RecordRef, Fill: 1},
		{Kind: RecordLiteral, Codec: CodecS2},
		{Kind: RecordLiteral, Codec: CodecNone, Data: []byte{1}},
		{Kind: RecordLiteral, Codec: CodecS2, Data: make([]byte, MaxEncodedPage+1)},
	} {
		if err := r.Validate(); !errors.Is(err, ErrBadRecord) {
			t.Errorf("Validate(%+v) = %v", r, err)
		}
	}
}

func FuzzPageRecordRoundTrip(f *testing.F) {
	for _, r := range sampleRecords() {
		f.Add(AppendRecord(nil, r))
	}
	f.Add([]byte{2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 3, 1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, n, err := ParseRecord(b)
		if err != nil {
			if n != 0 {
				t.Fatalf("error with %d bytes consumed", n)
			}
			return
		}
		if n < zeroRecordLen || n > len(b) || n > MaxRecordLen {
			t.Fatalf("consumed %d of %d", n, len(b))
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("parsed record does not validate: %v", err)
		}
		if out := AppendRecord(nil, r); !bytes.Equal(out, b[:n]) {
			t.Fatalf("re-encoded % x, parsed from % x", out, b[:n])
		}
		if r.Kind == RecordLiteral {
			page := make([]byte, PageSize)
			if err := r.Codec.Decode(page, r.Data); err != nil && !errors.Is(err, ErrCorruptPage) {
				t.Fatalf("Decode error not typed: %v", err)
			}
		}
	})
}

func TestAppendPage(t *testing.T) {
	h := NewHeldIndex(nil, testDigester())
	held := textPage(10)
	h.AddPage(42, held)
	random := pageOf(11)
	cases := []struct {
		page   []byte
		method Method
		kind   RecordKind
	}{
		{nil, MethodS2, RecordZero},
		{held, MethodS2, RecordRef},
		{textPage(12), MethodS2, RecordLiteral},
		{textPage(12), MethodZstd, RecordLiteral},
		{textPage(12), MethodNone, RecordLiteral},
		{random, MethodS2, RecordLiteral},
	}
	var batch []byte
	for i, c := range cases {
		var placed Placed
		batch, placed = AppendPage(batch, Page{Block: uint16(i), Offset: uint64(i) * PageSize, Zero: c.page == nil, Data: c.page}, nil, h, c.method)
		if placed.Kind != c.kind {
			t.Fatalf("case %d: kind %v, want %v", i, placed.Kind, c.kind)
		}
		if placed.Kind == RecordRef && placed.Ref != 42 || placed.Kind != RecordZero && placed.FP != XXHash(c.page) {
			t.Fatalf("case %d: %+v", i, placed)
		}
	}
	i := 0
	page := make([]byte, PageSize)
	err := ParseRecords(batch, func(r PageRecord) error {
		c := cases[i]
		if r.Kind != c.kind || r.Block != uint16(i) || r.Offset != uint64(i)*PageSize {
			t.Fatalf("record %d: %+v", i, r)
		}
		switch r.Kind {
		case RecordRef:
			if r.Ref != 42 {
				t.Fatalf("ref %d", r.Ref)
			}
		case RecordLiteral:
			if err := r.Codec.Decode(page, r.Data); err != nil || !bytes.Equal(page, c.page) {
				t.Fatalf("record %d (%v): %v", i, r.Codec, err)
			}
			want := c.method.Codec()
			if bytes.Equal(c.page, random) {
				want = CodecNone // incompressible: sent raw
			}
			if r.Codec != want {
				t.Fatalf("record %d: codec %v, want %v", i, r.Codec, want)
			}
		}
		i++
		return nil
	})
	if err != nil || i != len(cases) {
		t.Fatalf("parsed %d records: %v", i, err)
	}
	// Without an index nothing becomes a reference.
	if _, placed := AppendPage(nil, Page{Data: held}, nil, nil, MethodS2); placed.Kind != RecordLiteral {
		t.Fatalf("kind %v without an index", placed.Kind)
	}
}
