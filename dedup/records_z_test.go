package dedup

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

// A frame of references and zero pages goes compressed and decodes to itself; a frame of literal pages, already
// compressed one by one, goes plain.
func TestRecordsCompression(t *testing.T) {
	var refs []byte
	for i := range 4000 {
		rec := PageRecord{Kind: RecordRef, Offset: uint64(i) * PageSize, Ref: ContentID(1000 + i)}
		if i%3 == 0 {
			rec = PageRecord{Kind: RecordZero, Offset: uint64(i) * PageSize}
		}
		refs = AppendRecord(refs, rec)
	}
	z := CompressRecords(nil, refs)
	if z == nil || len(z) > len(refs)/3 {
		t.Fatalf("references: %d bytes compressed to %d", len(refs), len(z))
	}
	got, err := DecodeRecords(nil, z)
	if err != nil || !bytes.Equal(got, refs) {
		t.Fatalf("round trip: %v", err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	page := make([]byte, PageSize)
	var lits []byte
	for i := range 16 {
		for j := range page {
			page[j] = byte(rng.Uint32())
		}
		data, codec := CodecZstd.Compress(nil, page)
		lits = AppendRecord(lits, PageRecord{Kind: RecordLiteral, Offset: uint64(i) * PageSize, Codec: codec, Data: data})
	}
	if z := CompressRecords(nil, lits); z != nil {
		t.Errorf("incompressible literals sent compressed: %d of %d bytes", len(z), len(lits))
	}
	// A payload that claims more than a frame may hold is refused.
	big := CompressRecords(nil, make([]byte, 2*MaxRecordsFrame))
	if _, err := DecodeRecords(nil, big); !errors.Is(err, ErrBadRecord) {
		t.Errorf("oversized frame: %v", err)
	}
}

func FuzzDecodeRecords(f *testing.F) {
	f.Add(CompressRecords(nil, bytes.Repeat([]byte{3, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 7}, 100)))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd})
	f.Fuzz(func(t *testing.T, b []byte) {
		out, err := DecodeRecords(nil, b)
		if err != nil {
			if !errors.Is(err, ErrBadRecord) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if len(out) > MaxRecordsFrame {
			t.Fatalf("decoded %d bytes", len(out))
		}
		// What decodes re-encodes to something that decodes to the same (when compression pays at all).
		if z := CompressRecords(nil, out); z != nil {
			again, err := DecodeRecords(nil, z)
			if err != nil || !bytes.Equal(again, out) {
				t.Fatalf("round trip: %v", err)
			}
		}
	})
}
