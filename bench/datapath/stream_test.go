package datapath

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/qemu/stream"
)

func TestGenerate(t *testing.T) {
	mix := Mix{Name: "small", Pages: 1000, Held: 0.9}
	s, err := generate(mix)
	if err != nil {
		t.Fatal(err)
	}
	again, err := generate(mix)
	if err != nil || !bytes.Equal(s.QEMU, again.QEMU) || len(s.Held) != len(again.Held) {
		t.Fatalf("two streams of one mix differ (%v)", err)
	}
	// The stream decodes as QEMU's, every page once, the held ones among them.
	held := map[string]bool{}
	for _, p := range s.Held {
		held[string(p)] = true
	}
	dec := stream.NewDecoder(bytes.NewReader(s.QEMU))
	pages, heldPages, compressed, literal := 0, 0, 0, 0
	var z []byte
	for {
		ev, err := dec.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("after %d pages: %v", pages, err)
		}
		p, ok := ev.(stream.Page)
		if !ok {
			continue
		}
		if p.Offset != stream.RAMOffset(pages)*dedup.PageSize || p.Zero {
			t.Fatalf("page %d: %+v", pages, p)
		}
		pages++
		if held[string(p.Data)] {
			heldPages++
			continue
		}
		z, _ = dedup.CodecZstd.Compress(z[:0], p.Data)
		compressed, literal = compressed+len(z), literal+len(p.Data)
	}
	if pages != mix.Pages || heldPages != len(s.Held) || heldPages < 850 || heldPages > 950 {
		t.Fatalf("%d pages, %d held (of %d contents)", pages, heldPages, len(s.Held))
	}
	// Text-like: a literal compresses alone to about half, as real guests' distinct pages do.
	if r := float64(compressed) / float64(literal); r < 0.3 || r > 0.7 {
		t.Errorf("literal pages compress to %.2f of their size, want text-like (0.3 to 0.7)", r)
	} else {
		t.Logf("literal pages compress to %.3f of their size", r)
	}
}
