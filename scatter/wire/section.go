package wire

import (
	"encoding/binary"
	"fmt"
)

func AppendSection(dst []byte, kind byte, id uint32) []byte {
	dst = append(dst, kind)
	return binary.BigEndian.AppendUint32(dst, id)
}

func ParseSection(b []byte) (kind byte, id uint32, err error) {
	if len(b) != 5 || (b[0] != 2 && b[0] != 3) {
		return 0, 0, fmt.Errorf("%w: SECTION payload %x", ErrFrame, b)
	}
	return b[0], binary.BigEndian.Uint32(b[1:]), nil
}
