// Package dedup finds and proves shared guest memory.
//
// It holds the pure logic between a guest's RAM and the wire:
//
//   - page fingerprints (xxhash64, injectable for tests) and zero-page detection;
//   - Scan, which reads RAM blocks through caller-given io.ReaderAt values with a bounded
//     pipeline and builds the SharingMap: each distinct non-zero content, who holds it, and
//     which contents each VM holds;
//   - exactness: a Digester (GMAC of the page under a per-session key: a keyed universal hash) and the HeldIndex,
//     which turns page bytes into the ContentID a target holds only when the digest matches,
//     so that a crafted xxhash collision can never become a reference to other bytes;
//   - page compression (Codec: none, s2, zstd) with bounded decoding;
//   - the page record codec carried on the data channel (Zero, Literal, Ref records);
//   - the receiver's ContentStore, bounded by its budget and reference-counted per VM; its pages
//     live in memory or in a slot file the caller opened.
//
// The package opens no files and no sockets (a slot store writes to a file the caller opened).
// docs/dedup.md describes the mechanisms and the record format byte by byte; docs/store.md the
// content store and its budget.
package dedup
