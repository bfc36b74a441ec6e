package wire

import (
	"encoding/binary"
	"fmt"

	"github.com/vmscatter/vmscatter/dedup"
)

// DigestRecordLen is the length of one DIGESTS record: be32 content id · 16-byte digest (dedup.Digester, under the
// salt of JOIN).
const DigestRecordLen = 4 + len(dedup.Digest{})

// AppendDigestRecord appends one DIGESTS record: the keyed digest of the exact bytes the sender multicasts under id.
func AppendDigestRecord(dst []byte, id dedup.ContentID, dg dedup.Digest) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(id))
	return append(dst, dg[:]...)
}

// ParseDigestRecords calls fn for each record of a DIGESTS frame; a payload that is not a whole number of records
// is an ErrFrame.
func ParseDigestRecords(b []byte, fn func(id dedup.ContentID, dg dedup.Digest) error) error {
	if len(b)%DigestRecordLen != 0 {
		return fmt.Errorf("%w: DIGESTS payload of %d bytes", ErrFrame, len(b))
	}
	for ; len(b) > 0; b = b[DigestRecordLen:] {
		if err := fn(dedup.ContentID(binary.BigEndian.Uint32(b)), dedup.Digest(b[4:DigestRecordLen])); err != nil {
			return err
		}
	}
	return nil
}
