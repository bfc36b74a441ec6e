package dedup

import (
	"bytes"
	"errors"
	"testing"
)

var allCodecs = []Codec{CodecNone, CodecS2, CodecZstd}

func TestCodecRoundTrip(t *testing.T) {
	pages := [][]byte{pageOf(0), pageOf(1), textPage(0), textPage(5)}
	for _, c := range allCodecs {
		for i, p := range pages {
			enc := c.Append([]byte("prefix"), p)
			if string(enc[:6]) != "prefix" {
				t.Fatalf("%v: Append clobbered dst", c)
			}
			if len(enc)-6 > MaxEncodedPage {
				t.Fatalf("%v page %d: %d bytes, above MaxEncodedPage", c, i, len(enc)-6)
			}
			got := make([]byte, PageSize)
			if err := c.Decode(got, enc[6:]); err != nil {
				t.Fatalf("%v page %d: %v", c, i, err)
			}
			if !bytes.Equal(got, p) {
				t.Fatalf("%v page %d: round trip differs", c, i)
			}
			out, used := c.Compress(nil, p)
			if err := used.Decode(got, out); err != nil || !bytes.Equal(got, p) {
				t.Fatalf("%v page %d: Compress chose %v and did not round trip: %v", c, i, used, err)
			}
			if i == 1 && used != CodecNone { // random bytes do not compress
				t.Fatalf("%v: random page compressed to %d bytes", c, len(out))
			}
			if i == 2 && c != CodecNone && (used != c || len(out) > PageSize/2) {
				t.Fatalf("%v: text page gave %v, %d bytes", c, used, len(out))
			}
		}
	}
}

func TestCodecDecodeRejects(t *testing.T) {
	page := textPage(1)
	got := make([]byte, PageSize)
	for _, c := range allCodecs {
		enc := c.Append(nil, page)
		for _, bad := range [][]byte{nil, enc[:len(enc)-1], append(bytes.Clone(enc), 0)} {
			if err := c.Decode(got, bad); !errors.Is(err, ErrCorruptPage) {
				t.Errorf("%v: Decode of %d bytes: err = %v", c, len(bad), err)
			}
		}
		if err := c.Decode(make([]byte, 10), enc); err == nil {
			t.Errorf("%v: Decode into a short page succeeded", c)
		}
	}
	// Bombs: a small input that claims or produces more than a page.
	big := make([]byte, 1<<20)
	for _, c := range []Codec{CodecS2, CodecZstd} {
		enc := c.Append(nil, big[:PageSize])
		var bomb []byte
		switch c {
		case CodecS2:
			bomb = append(bomb, 0x80, 0x80, 0x40) // s2 header claiming 1 MiB
			bomb = append(bomb, enc[2:]...)
		case CodecZstd:
			enc2, _ := pageZstd.get()
			bomb = enc2.EncodeAll(big, nil)
		}
		if err := c.Decode(got, bomb); !errors.Is(err, ErrCorruptPage) {
			t.Errorf("%v bomb: err = %v", c, err)
		}
		// Two frames of one page each decode to two pages: refused.
		if c == CodecZstd {
			if err := c.Decode(got, append(bytes.Clone(enc), enc...)); !errors.Is(err, ErrCorruptPage) {
				t.Errorf("zstd double frame: err = %v", err)
			}
		}
	}
	if err := Codec(9).Decode(got, page); !errors.Is(err, ErrUnknownCodec) {
		t.Errorf("unknown codec: err = %v", err)
	}
}

func TestParseCodec(t *testing.T) {
	for _, c := range allCodecs {
		if got, err := ParseCodec(c.String()); err != nil || got != c {
			t.Errorf("ParseCodec(%q) = %v, %v", c.String(), got, err)
		}
	}
	if _, err := ParseCodec("lz4"); !errors.Is(err, ErrUnknownCodec) {
		t.Errorf("ParseCodec(lz4) err = %v", err)
	}
}

func FuzzCodecDecode(f *testing.F) {
	for _, c := range allCodecs {
		f.Add(byte(c), c.Append(nil, textPage(2)))
		f.Add(byte(c), c.Append(nil, pageOf(0)))
	}
	f.Add(byte(CodecS2), []byte{0x80, 0x20})
	f.Fuzz(func(t *testing.T, codec byte, src []byte) {
		c := Codec(codec % 4)
		dst := make([]byte, PageSize+8)
		copy(dst[PageSize:], "canary!!")
		if err := c.Decode(dst[:PageSize], src); err == nil && !c.Valid() {
			t.Fatalf("unknown codec %d decoded", c)
		}
		if string(dst[PageSize:]) != "canary!!" {
			t.Fatal("Decode wrote past the page")
		}
		// Round trip: src as a page (padded or cut to PageSize).
		if !c.Valid() {
			return
		}
		page := make([]byte, PageSize)
		copy(page, src)
		got := make([]byte, PageSize)
		enc, used := c.Compress(nil, page)
		if len(enc) > MaxEncodedPage {
			t.Fatalf("%v: %d encoded bytes", used, len(enc))
		}
		if err := used.Decode(got, enc); err != nil || !bytes.Equal(got, page) {
			t.Fatalf("%v: round trip failed: %v", used, err)
		}
	})
}
