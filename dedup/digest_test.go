package dedup

import (
	"crypto/sha256"
	"testing"
)

func TestDigesterMatchesSHA256(t *testing.T) {
	var salt [32]byte
	for i := range salt {
		salt[i] = byte(i * 7)
	}
	d := NewDigester(salt)
	page := make([]byte, PageSize)
	for i := range page {
		page[i] = byte(i)
	}
	want := sha256.Sum256(append(salt[:], page...))
	if got := d.Sum(page); got != Digest(want) {
		t.Fatalf("Sum = %v, want %x", got, want)
	}
	if !d.Verify(page, Digest(want)) {
		t.Fatal("Verify rejected the right digest")
	}
	page[100] ^= 1
	if d.Verify(page, Digest(want)) {
		t.Fatal("Verify accepted a changed page")
	}
	other := NewDigester([32]byte{1})
	if other.Sum(page) == d.Sum(page) {
		t.Fatal("different salts gave equal digests")
	}
}

func TestDigesterSumDoesNotAllocate(t *testing.T) {
	d := NewDigester([32]byte{9})
	page := make([]byte, PageSize)
	d.Sum(page)
	if n := testing.AllocsPerRun(100, func() { d.Sum(page) }); n != 0 {
		t.Fatalf("Sum allocates %v times per call", n)
	}
}
