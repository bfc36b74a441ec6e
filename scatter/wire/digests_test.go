package wire

import (
	"errors"
	"testing"

	"github.com/vmscatter/vmscatter/dedup"
)

func FuzzDigestRecords(f *testing.F) {
	dg := dedup.Digest{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	f.Add(AppendDigestRecord(AppendDigestRecord(nil, 1, dg), 1<<31, dedup.Digest{}))
	f.Add([]byte{0, 0, 0, 1, 200})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var again []byte
		err := ParseDigestRecords(b, func(id dedup.ContentID, dg dedup.Digest) error {
			again = AppendDigestRecord(again, id, dg)
			return nil
		})
		checkRoundTrip(t, b, again, err)
	})
}

func TestDigestRecords(t *testing.T) {
	dg := dedup.Digest{9: 7}
	b := AppendDigestRecord(AppendDigestRecord(nil, 3, dg), 5, dedup.Digest{})
	if len(b) != 2*DigestRecordLen {
		t.Fatalf("%d bytes", len(b))
	}
	var ids []dedup.ContentID
	var dgs []dedup.Digest
	if err := ParseDigestRecords(b, func(id dedup.ContentID, d dedup.Digest) error {
		ids, dgs = append(ids, id), append(dgs, d)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(ids) != 2 || ids[0] != 3 || ids[1] != 5 || dgs[0] != dg || dgs[1] != (dedup.Digest{}) {
		t.Fatalf("parsed %v %v", ids, dgs)
	}
	if err := ParseDigestRecords(b[:len(b)-1], func(dedup.ContentID, dedup.Digest) error { return nil }); !errors.Is(err, ErrFrame) {
		t.Fatalf("truncated: %v", err)
	}
}
