package dedup

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"sync"
)

// Digest is the strong digest of one page: SHA-256 over the session's 32-byte salt followed
// by the page bytes. Two pages with equal digests under one salt are equal, as far as
// SHA-256 is collision resistant. The salt is secret to the session's sender and receivers,
// so a guest cannot prepare pages against it in advance.
type Digest [32]byte

// String returns the digest in hex.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// Digester computes salted page digests. It is safe for concurrent use, and Sum does not
// allocate in the steady state.
type Digester struct {
	salt [32]byte
	pool sync.Pool // of *digestState
}

type digestState struct {
	h   hash.Hash
	out [sha256.Size]byte
}

// NewDigester returns a Digester for one session. The salt must come from a
// cryptographic random source (crypto/rand) and be shared with the session's receivers only.
func NewDigester(salt [32]byte) *Digester {
	d := &Digester{salt: salt}
	d.pool.New = func() any { return &digestState{h: sha256.New()} }
	return d
}

// Salt returns the session salt, for sending it to receivers over the authenticated
// control channel.
func (d *Digester) Salt() [32]byte { return d.salt }

// Sum returns SHA-256(salt || page).
func (d *Digester) Sum(page []byte) Digest {
	s := d.pool.Get().(*digestState)
	s.h.Reset()
	s.h.Write(d.salt[:])
	s.h.Write(page)
	s.h.Sum(s.out[:0])
	dg := Digest(s.out)
	d.pool.Put(s)
	return dg
}

// Verify reports whether page has digest dg.
func (d *Digester) Verify(page []byte, dg Digest) bool { return d.Sum(page) == dg }
