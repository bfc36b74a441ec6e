package dedup

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

func TestBundleRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	random := make([]byte, MaxBundlePages*PageSize)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	var text []byte
	for i := range MaxBundlePages {
		text = append(text, textPage(i)...)
	}
	for _, c := range allCodecs {
		for name, pages := range map[string][]byte{"text": text, "random": random, "one page": text[:PageSize]} {
			enc, used := CompressPages([]byte("prefix"), pages, c)
			if string(enc[:6]) != "prefix" {
				t.Fatalf("%v %s: dst prefix lost", c, name)
			}
			enc = enc[6:]
			if len(enc) > MaxEncodedBundle || len(enc) > len(pages) {
				t.Fatalf("%v %s: %d encoded bytes for %d", c, name, len(enc), len(pages))
			}
			if name == "random" && used != CodecNone {
				t.Errorf("%v: incompressible pages sent compressed (%v)", c, used)
			}
			if name == "text" && c != CodecNone && len(enc) > len(pages)/2 {
				t.Errorf("%v: text compressed to %d of %d", c, len(enc), len(pages))
			}
			got := make([]byte, len(pages))
			if err := DecodePages(got, enc, used); err != nil || !bytes.Equal(got, pages) {
				t.Fatalf("%v %s: round trip: %v", c, name, err)
			}
			// The same data decoded as a bundle of another size is refused.
			if len(pages) > PageSize {
				if err := DecodePages(got[:len(pages)-PageSize], enc, used); !errors.Is(err, ErrCorruptPage) {
					t.Errorf("%v %s: decoded into a smaller bundle: %v", c, name, err)
				}
			}
		}
	}
}

func FuzzBundleDecode(f *testing.F) {
	var text []byte
	for i := range 4 {
		text = append(text, textPage(i)...)
	}
	for _, c := range allCodecs {
		enc, used := CompressPages(nil, text, c)
		f.Add(byte(used), uint8(4), enc)
	}
	f.Fuzz(func(t *testing.T, codec byte, pages uint8, src []byte) {
		c := Codec(codec % 4)
		n := int(pages%MaxBundlePages) + 1
		dst := make([]byte, n*PageSize+8)
		copy(dst[n*PageSize:], "canary!!")
		if err := DecodePages(dst[:n*PageSize], src, c); err == nil && !c.Valid() {
			t.Fatalf("unknown codec %d decoded", c)
		}
		if string(dst[n*PageSize:]) != "canary!!" {
			t.Fatal("DecodePages wrote past the bundle")
		}
		if !c.Valid() {
			return
		}
		// Round trip: src as n pages (padded or cut).
		in := make([]byte, n*PageSize)
		copy(in, src)
		enc, used := CompressPages(nil, in, c)
		got := make([]byte, len(in))
		if err := DecodePages(got, enc, used); err != nil || !bytes.Equal(got, in) {
			t.Fatalf("%v: round trip failed: %v", used, err)
		}
	})
}
