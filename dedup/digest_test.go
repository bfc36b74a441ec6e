package dedup

import (
	"crypto/aes"
	"encoding/binary"
	"testing"
)

// gfMul multiplies in GF(2^128) as GCM defines it (NIST SP 800-38D, algorithm 1: bit-reflected, R = 0xE1 || 0^120).
func gfMul(x, y [16]byte) [16]byte {
	var z [16]byte
	v := y
	for i := range 128 {
		if x[i/8]&(0x80>>(i%8)) != 0 {
			for k := range z {
				z[k] ^= v[k]
			}
		}
		lsb := v[15] & 1
		for k := 15; k > 0; k-- {
			v[k] = v[k]>>1 | v[k-1]<<7
		}
		v[0] >>= 1
		if lsb == 1 {
			v[0] ^= 0xE1
		}
	}
	return z
}

// referenceGMAC computes GMAC(key, nonce = 0^96, additional data = msg) from the specification, independently of
// crypto/cipher: GHASH_H(msg padded, then the length block), masked with E_K(J0).
func referenceGMAC(key [32]byte, msg []byte) Digest {
	blk, _ := aes.NewCipher(key[:])
	var h, y, j0, mask [16]byte
	blk.Encrypt(h[:], h[:])
	for off := 0; off < len(msg); off += 16 {
		var b [16]byte
		copy(b[:], msg[off:])
		for k := range y {
			y[k] ^= b[k]
		}
		y = gfMul(y, h)
	}
	var lens [16]byte
	binary.BigEndian.PutUint64(lens[:8], uint64(len(msg))*8)
	for k := range y {
		y[k] ^= lens[k]
	}
	y = gfMul(y, h)
	j0[15] = 1
	blk.Encrypt(mask[:], j0[:])
	for k := range y {
		y[k] ^= mask[k]
	}
	return Digest(y)
}

func TestDigesterIsGMAC(t *testing.T) {
	var key [32]byte
	for i := range key {
		key[i] = byte(i * 7)
	}
	d := NewDigester(key)
	page := make([]byte, PageSize)
	for i := range page {
		page[i] = byte(i * 13)
	}
	want := referenceGMAC(key, page)
	if got := d.Sum(page); got != want {
		t.Fatalf("Sum = %v, want %v (GMAC from the specification)", got, want)
	}
	if !d.Verify(page, want) {
		t.Fatal("Verify rejected the right digest")
	}
	page[100] ^= 1
	if d.Verify(page, want) {
		t.Fatal("Verify accepted a changed page")
	}
	other := NewDigester([32]byte{1})
	if other.Sum(page) == d.Sum(page) {
		t.Fatal("different keys gave equal digests")
	}
}

// GHASH is linear in the page: pages that differ only by a pattern the attacker chose still get unrelated digests
// under a key it does not know, and the digests of many pages one bit apart are all different.
func TestDigestOfNearbyPagesDiffer(t *testing.T) {
	d := NewDigester([32]byte{3, 1, 4, 1, 5})
	page := make([]byte, PageSize)
	seen := map[Digest]int{}
	for bit := range PageSize * 8 / 16 {
		page[bit/8] ^= 1 << (bit % 8)
		dg := d.Sum(page)
		if prev, ok := seen[dg]; ok {
			t.Fatalf("pages %d and %d bits flipped share a digest", prev, bit)
		}
		seen[dg] = bit
		page[bit/8] ^= 1 << (bit % 8)
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
