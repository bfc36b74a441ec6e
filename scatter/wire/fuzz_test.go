package wire

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/vmscatter/vmscatter/dedup"
)

func FuzzSeedRecords(f *testing.F) {
	var dg dedup.Digest
	f.Add(AppendSeedRecord(AppendSeedRecord(nil, 1, []int{0, 3}, 0, 512, dg), 7, nil, 2, 8192, dg))
	f.Add([]byte{0, 0, 0, 1, 200})
	f.Fuzz(func(t *testing.T, b []byte) {
		var again []byte
		err := ParseSeedRecords(b, func(r SeedRecord) error {
			if r.Offset%dedup.FileWindowStep != 0 || r.Offset > dedup.MaxIndexedFile {
				t.Fatalf("offset %d accepted", r.Offset)
			}
			again = AppendSeedRecord(again, r.ID, r.Slots, uint16(r.File), r.Offset, r.Digest)
			return nil
		})
		checkRoundTrip(t, b, again, err)
	})
}

// checkRoundTrip is the property of every parser's fuzz test: input that parses re-encodes to itself, and input
// that does not gets a typed error (ErrFrame). It reports whether b parsed.
func checkRoundTrip(t *testing.T, b, again []byte, err error) bool {
	t.Helper()
	if err != nil {
		if !errors.Is(err, ErrFrame) {
			t.Fatalf("untyped error %v", err)
		}
		return false
	}
	if !bytes.Equal(again, b) {
		t.Fatalf("round trip: %x != %x", again, b)
	}
	return true
}

func FuzzBundles(f *testing.F) {
	pages := bytes.Repeat([]byte("vmscatter bundle "), 2*4096/17+1)[:2*4096]
	data, codec := dedup.CompressPages(nil, pages, dedup.CodecZstd)
	f.Add(AppendBundle(nil, codec, []BundleHead{{ID: 1, Slots: []int{0}}, {ID: 2}}, data))
	raw, _ := dedup.CompressPages(nil, pages[:4096], dedup.CodecNone)
	f.Add(AppendBundle(nil, dedup.CodecNone, []BundleHead{{ID: 9, Slots: []int{1, 2}}}, raw))
	f.Fuzz(func(t *testing.T, b []byte) {
		var again []byte
		err := ParseBundles(b, func(bd *Bundle) error {
			if len(bd.Heads) < 1 || len(bd.Heads) > dedup.MaxBundlePages || len(bd.Data) > dedup.MaxEncodedBundle {
				t.Fatalf("bundle of %d heads, %d bytes accepted", len(bd.Heads), len(bd.Data))
			}
			again = AppendBundle(again, bd.Codec, bd.Heads, bd.Data)
			return nil
		})
		checkRoundTrip(t, b, again, err)
	})
}

func FuzzSection(f *testing.F) {
	f.Add(AppendSection(nil, 2, 7))
	f.Add(AppendSection(nil, 3, 1<<31))
	f.Add([]byte{4, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		kind, id, err := ParseSection(b)
		var again []byte
		if err == nil {
			again = AppendSection(nil, kind, id)
		}
		checkRoundTrip(t, b, again, err)
	})
}

// FuzzMessages decodes arbitrary bytes as every JSON message of the protocol: a payload that does not decode is
// an ErrFrame, and one that does survives a round trip through Marshal.
func FuzzMessages(f *testing.F) {
	f.Add([]byte(`{"session":"00112233445566778899aabbccddeeff","vm":"a","epoch":7,"argv":["qemu-system-x86_64"]}`))
	f.Add([]byte(`{"epoch":1,"phase":"Loaded","dest":"paused"}`))
	f.Add([]byte(`{"section_id":2,"blocks":[{"id":"pc.ram","length":4096}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		for ft, msg := range payloads {
			v := reflect.New(reflect.TypeOf(msg))
			if err := Unmarshal(ft, b, v.Interface()); err != nil {
				if !errors.Is(err, ErrFrame) {
					t.Fatalf("%s: untyped error %v", ft, err)
				}
				continue
			}
			out, err := Marshal(v.Elem().Interface())
			if err != nil {
				t.Fatalf("%s: %v", ft, err)
			}
			w := reflect.New(reflect.TypeOf(msg))
			if err := Unmarshal(ft, out, w.Interface()); err != nil || !reflect.DeepEqual(v.Elem().Interface(), w.Elem().Interface()) {
				t.Fatalf("%s: round trip %s: %v", ft, out, err)
			}
		}
	})
}
