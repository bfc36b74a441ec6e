package dedup

import "fmt"

// A frame of page records is mostly small records when a stream goes well: a reference is 15 bytes and a zero page
// 12, and a 128 MiB guest's stream holds about 24,000 and 8,000 of them, whose blocks, offsets and content ids run in
// order. Compressed as a whole, such a frame shrinks to about 5 bytes a record (when one content id in ten jumps); a
// frame of literal pages, already compressed one by one, does not, and goes as it is.

// MaxRecordsFrame bounds the records of one frame that DecodeRecords accepts.
const MaxRecordsFrame = 1 << 20

// recordsMinGain is the share of a frame that compression must save to be worth it.
const recordsMinGain = 0.1

// CompressRecords appends records compressed as a whole to dst[:0] if that saves a tenth or more, and returns nil
// otherwise: send the records as they are.
func CompressRecords(dst, records []byte) []byte {
	enc, _ := recordsZstd.get()
	out := enc.EncodeAll(records, dst[:0])
	if float64(len(out)) > (1-recordsMinGain)*float64(len(records)) {
		return nil
	}
	return out
}

// DecodeRecords decodes what CompressRecords made into dst (reused when large enough). It fails with ErrBadRecord
// for anything else, and never decodes more than MaxRecordsFrame bytes.
func DecodeRecords(dst, payload []byte) ([]byte, error) {
	_, dec := recordsZstd.get()
	if cap(dst) < MaxRecordsFrame {
		dst = make([]byte, 0, MaxRecordsFrame)
	}
	out, err := dec.DecodeAll(payload, dst[:0:MaxRecordsFrame])
	if err != nil {
		return nil, fmt.Errorf("%w: compressed records do not decode: %v", ErrBadRecord, err)
	}
	return out, nil
}
