package wire

import (
	"encoding/binary"
	"fmt"

	"github.com/vmscatter/vmscatter/dedup"
)

// SeedRecordLen is the fixed part of a SEED record after its content-record head: file index, offset, digest.
const SeedRecordLen = 2 + 8 + len(dedup.Digest{})

// MaxSeedFiles bounds the files of one SEED_FILES frame.
const MaxSeedFiles = 64

// SeedFilesMsg opens a seed: the files its records name, by index, and the salt of the session's digests.
type SeedFilesMsg struct {
	Files []string `json:"files"`
	Salt  []byte   `json:"salt"` // 32 bytes
}

// SeedDoneMsg closes a seed.
type SeedDoneMsg struct {
	Records int `json:"records"`
}

// SeedAckMsg is the receiver's answer: how many records it holds, which it does not, and why.
type SeedAckMsg struct {
	Held    int      `json:"held"`
	Missing []uint32 `json:"missing,omitempty"` // content ids it could not read or whose bytes differ
	Errors  []string `json:"errors,omitempty"`  // per file that could not be used
}

// A SEED record: the content-record head (be32 content id · u8 n · n × be16 VM slot), then be16 file index (into
// the SEED_FILES list) · be64 offset · 16-byte digest (dedup.Digester) of the PageSize bytes at that offset.
func AppendSeedRecord(dst []byte, id dedup.ContentID, slots []int, file uint16, off int64, dg dedup.Digest) []byte {
	dst = AppendContentHead(dst, id, slots)
	dst = binary.BigEndian.AppendUint16(dst, file)
	dst = binary.BigEndian.AppendUint64(dst, uint64(off))
	return append(dst, dg[:]...)
}

// SeedRecord is one parsed SEED record.
type SeedRecord struct {
	ID     dedup.ContentID
	Slots  []int
	File   int
	Offset int64
	Digest dedup.Digest
}

// ParseSeedRecords calls fn for each record of a SEED frame.
func ParseSeedRecords(b []byte, fn func(SeedRecord) error) error {
	var r SeedRecord
	for len(b) > 0 {
		var err error
		r.ID, r.Slots, b, err = ParseContentHead(b, r.Slots[:0])
		if err != nil {
			return err
		}
		if len(b) < SeedRecordLen {
			return fmt.Errorf("%w: truncated seed record", ErrFrame)
		}
		r.File = int(binary.BigEndian.Uint16(b))
		off := binary.BigEndian.Uint64(b[2:])
		if off > dedup.MaxIndexedFile || off%dedup.FileWindowStep != 0 {
			return fmt.Errorf("%w: seed record offset %d", ErrFrame, off)
		}
		r.Offset = int64(off)
		copy(r.Digest[:], b[10:SeedRecordLen])
		b = b[SeedRecordLen:]
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}
