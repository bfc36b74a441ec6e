package dedup

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/hex"
	"sync"
)

// Digest is the exact-content check of one page: GHASH over the page under a per-session secret key, as AES-GCM
// computes it for additional data (GMAC). It is a keyed universal hash: for any two different pages of PageSize
// bytes, the share of keys under which their digests are equal is at most 257/2¹²⁸ (GHASH of a message of n
// 16-byte blocks is a polynomial of degree n+1 in the hash key with the blocks as coefficients, so two messages
// agree only at the at most n+1 roots of their difference; the AES-encrypted mask GMAC adds is the same for
// both). A guest chooses its pages without knowing the key, and no digest is ever shown to it: it can craft
// fingerprint (xxhash) collisions at will, but each comparison of digests is wrong with probability below 2⁻¹²⁰.
// A run compares at most MaxCandidates digests per page it streams, so even 10⁹ pages leave a chance below 2⁻⁸⁷
// of one false match. Measured: 0.46 µs per page, against 3.2 µs for SHA-256 (docs/dedup.md).
type Digest [16]byte

// String returns the digest in hex.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// Digester computes page digests under one session key. It is safe for concurrent use, and Sum does not allocate
// in the steady state.
type Digester struct {
	salt [32]byte
	pool sync.Pool // of *digestState: GCM instances, one per concurrent Sum
}

type digestState struct {
	gcm cipher.AEAD
	out [16]byte
}

// digestNonce is GMAC's nonce. It is the same for every page: the digest is a keyed hash of the page, compared for
// equality on trusted hosts, never a tag an adversary sees (GCM's rule of a fresh nonce per message protects tags
// that an attacker observes).
var digestNonce [12]byte

// NewDigester returns a Digester for one session. The salt is its key (AES-256): it must come from a cryptographic
// random source (crypto/rand) and be shared with the session's receivers only.
func NewDigester(salt [32]byte) *Digester {
	d := &Digester{salt: salt}
	d.pool.New = func() any {
		blk, err := aes.NewCipher(salt[:])
		if err != nil {
			panic("dedup: AES-256 with a 32-byte key: " + err.Error()) // cannot happen
		}
		g, err := cipher.NewGCM(blk)
		if err != nil {
			panic("dedup: GCM: " + err.Error())
		}
		return &digestState{gcm: g}
	}
	return d
}

// Salt returns the session key, for sending it to receivers over the authenticated control channel.
func (d *Digester) Salt() [32]byte { return d.salt }

// Sum returns the digest of page.
func (d *Digester) Sum(page []byte) Digest {
	s := d.pool.Get().(*digestState)
	s.gcm.Seal(s.out[:0], digestNonce[:], nil, page)
	dg := Digest(s.out)
	d.pool.Put(s)
	return dg
}

// Verify reports whether page has digest dg.
func (d *Digester) Verify(page []byte, dg Digest) bool { return d.Sum(page) == dg }
