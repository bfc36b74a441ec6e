// Package wire owns every byte of vmscatter's control and VM-stream protocol (docs/control.md): the frame types,
// the JSON messages with their own field names (converted at the boundary, e.g. RAMStartToWire, so that renaming a
// field elsewhere never changes the protocol), and the binary payloads with Append/Parse pairs: SECTION, bundles of
// primed contents, seed records. Page records, the PAGES payload, are dedup's (dedup/record.go, docs/dedup.md).
// Every parser checks each length against a maximum before it allocates, fails with ErrFrame, and is fuzzed with a
// round trip. The frames travel sealed on a secure.Conn.
package wire
