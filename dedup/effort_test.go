package dedup

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// The effort goes up only while the link clearly holds the prime back, comes down once preparing does, and does
// not flap between windows that sit between the two.
func TestEffortControl(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	var c EffortControl
	if c.Effort() != EffortFast {
		t.Fatal("does not start fast")
	}
	// A fast link: the windows are sent as soon as they are ready.
	for range 10 {
		if c.Observe(ms(20), 0) != EffortFast {
			t.Fatal("raised the effort with no wait for the link")
		}
	}
	// A link-bound prime (200 Mbit/s: a window takes 80 ms of link and 20 of CPU) goes to EffortMore...
	e := EffortFast
	for range 5 {
		e = c.Observe(ms(20), ms(60))
	}
	if e != EffortMore {
		t.Fatal("stayed fast behind a slow link")
	}
	// ...and stays there when its windows then take 1.8 times as long to prepare.
	for range 20 {
		if c.Observe(ms(36), ms(44)) != EffortMore {
			t.Fatal("flapped back while the link still held the prime back")
		}
	}
	// When the CPU becomes the bottleneck (the machine got busy), it comes back down.
	for range 5 {
		e = c.Observe(ms(60), ms(10))
	}
	if e != EffortFast {
		t.Fatal("stayed at more effort with the CPU as the bottleneck")
	}
	// A multicast group waits once a chunk (every fourth window here): the decayed sums see through it.
	for range 4 {
		c.Observe(ms(20), 0)
		c.Observe(ms(20), 0)
		c.Observe(ms(20), 0)
		e = c.Observe(ms(20), ms(250))
	}
	if e != EffortMore {
		t.Fatal("missed the link-bound multicast group")
	}
	fast, more := c.Windows()
	if fast+more != 10+5+20+5+16 || more == 0 || fast == 0 {
		t.Fatalf("windows counted %d fast, %d more", fast, more)
	}
}

// Bundles compressed at either effort decode to the same pages, and more effort is never larger on text-like pages.
func TestCompressPagesEffort(t *testing.T) {
	words := strings.Fields("page cache kernel guest memory target source prime bundle content zero the of and to in " +
		"migration stream reference literal digest multicast group receiver sender link rate window chunk")
	rng := rand.New(rand.NewPCG(7, 11))
	var text []byte
	for len(text) < MaxBundlePages*PageSize {
		text = append(text, words[rng.IntN(len(words))]...)
		text = append(text, " .,\n"[rng.IntN(4)])
	}
	pages := text[:MaxBundlePages*PageSize]
	fast, c1 := CompressPagesEffort(nil, pages, CodecZstd, EffortFast)
	more, c2 := CompressPagesEffort(nil, pages, CodecZstd, EffortMore)
	if c1 != CodecZstd || c2 != CodecZstd {
		t.Fatalf("codecs %v, %v", c1, c2)
	}
	if len(more) > len(fast) {
		t.Errorf("more effort gave %d bytes, the fastest %d", len(more), len(fast))
	}
	for _, enc := range [][]byte{fast, more} {
		got := make([]byte, len(pages))
		if err := DecodePages(got, enc, CodecZstd); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, pages) {
			t.Fatal("decoded pages differ")
		}
	}
}
