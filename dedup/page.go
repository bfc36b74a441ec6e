package dedup

import (
	"bytes"

	"github.com/cespare/xxhash/v2"
)

// PageSize is the size of a guest page in bytes. Every page this package handles has
// exactly this size.
const PageSize = 4096

// Fingerprint is a fast, non-cryptographic hash of one page. Equal fingerprints make two
// pages candidates for sharing; they never prove that the pages are equal.
type Fingerprint uint64

// FingerprintFunc fingerprints one page. The default is XXHash; tests inject weak
// functions to force collisions.
type FingerprintFunc func(page []byte) Fingerprint

// XXHash is the default FingerprintFunc: xxhash64 of the page.
func XXHash(page []byte) Fingerprint { return Fingerprint(xxhash.Sum64(page)) }

// ContentID names one distinct content for one session. The sender assigns ids densely
// (the index of the content in its SharingMap); a receiver's ContentStore maps an id to the
// exact bytes it received under it.
type ContentID uint32

// PageIndex is the number of a page within a RAM block: its offset divided by PageSize.
type PageIndex uint32

// Offset returns the byte offset of the page within its block.
func (p PageIndex) Offset() uint64 { return uint64(p) * PageSize }

var zeroPage [PageSize]byte

// IsZero reports whether every byte of page is zero. It stops at the first non-zero byte
// and compares with vector instructions, so a zero page costs about as much as a memcmp.
func IsZero(page []byte) bool {
	for len(page) > PageSize {
		if !bytes.Equal(page[:PageSize], zeroPage[:]) {
			return false
		}
		page = page[PageSize:]
	}
	return bytes.Equal(page, zeroPage[:len(page)])
}
