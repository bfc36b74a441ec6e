package scatter

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/vmscatter/vmscatter/dedup"
)

// A frame of references and zero pages goes compressed and decodes to itself; a frame of literal pages, already
// compressed one by one, goes plain.
func TestPagesFrameCompression(t *testing.T) {
	var refs []byte
	for i := range 4000 {
		rec := dedup.PageRecord{Kind: dedup.RecordRef, Offset: uint64(i) * dedup.PageSize, Ref: dedup.ContentID(1000 + i)}
		if i%3 == 0 {
			rec = dedup.PageRecord{Kind: dedup.RecordZero, Offset: uint64(i) * dedup.PageSize}
		}
		refs = dedup.AppendRecord(refs, rec)
	}
	z := compressPages(nil, refs)
	if z == nil || len(z) > len(refs)/3 {
		t.Fatalf("references: %d bytes compressed to %d", len(refs), len(z))
	}
	got, err := decodePages(nil, z)
	if err != nil || !bytes.Equal(got, refs) {
		t.Fatalf("round trip: %v", err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	page := make([]byte, dedup.PageSize)
	var lits []byte
	for i := range 16 {
		for j := range page {
			page[j] = byte(rng.Uint32())
		}
		data, codec := dedup.CodecZstd.Compress(nil, page)
		lits = dedup.AppendRecord(lits, dedup.PageRecord{Kind: dedup.RecordLiteral, Offset: uint64(i) * dedup.PageSize, Codec: codec, Data: data})
	}
	if z := compressPages(nil, lits); z != nil {
		t.Errorf("incompressible literals sent compressed: %d of %d bytes", len(z), len(lits))
	}
	// A payload that claims more than a frame may hold is refused.
	big := compressPages(nil, make([]byte, 2*maxPagesFrame))
	if _, err := decodePages(nil, big); !errors.Is(err, ErrFrame) {
		t.Errorf("oversized PAGES_Z: %v", err)
	}
}

func FuzzPagesZ(f *testing.F) {
	f.Add(compressPages(nil, bytes.Repeat([]byte{3, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 7}, 100)))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd})
	f.Fuzz(func(t *testing.T, b []byte) {
		out, err := decodePages(nil, b)
		if err != nil {
			if !errors.Is(err, ErrFrame) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if len(out) > maxPagesFrame {
			t.Fatalf("decoded %d bytes", len(out))
		}
		// What decodes re-encodes to something that decodes to the same (when compression pays at all).
		if z := compressPages(nil, out); z != nil {
			again, err := decodePages(nil, z)
			if err != nil || !bytes.Equal(again, out) {
				t.Fatalf("round trip: %v", err)
			}
		}
	})
}
