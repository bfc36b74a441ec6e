package stream

import "io"

// decodeBufferSize is the decoder's largest read buffer. It must hold the largest item read in one piece: a
// command of 64 KiB plus its header, or a page record (8 + 1 + 255 + PageSize bytes).
const (
	decodeBufferSize  = 256 << 10
	decodeInitialSize = 8 << 10
)

// maxEmptyReads bounds consecutive (0, nil) answers from a misbehaving io.Reader.
const maxEmptyReads = 100

// streamReader is a read buffer over the input that hands out slices of itself (zero copy) and tracks the stream
// offset. While recording, consumed bytes are also appended to rec (the prefix).
type streamReader struct {
	src       io.Reader
	buf       []byte
	r, w      int
	off       int64 // stream offset of buf[r]
	err       error // sticky error from src
	recording bool
	rec       []byte
}

// fill makes at least n bytes available at buf[r:]. n must not exceed decodeBufferSize. The buffer starts small
// and doubles, up to decodeBufferSize, whenever a read fills it: short streams stay cheap, long ones get big reads.
func (s *streamReader) fill(n int) error {
	empty := 0
	for s.w-s.r < n {
		if s.err != nil {
			if s.err == io.EOF {
				return io.ErrUnexpectedEOF
			}
			return s.err
		}
		if n > len(s.buf) {
			s.grow(n)
		}
		if s.r == s.w {
			s.r, s.w = 0, 0
		} else if len(s.buf)-s.r < n {
			s.w = copy(s.buf, s.buf[s.r:s.w])
			s.r = 0
		}
		m, err := s.src.Read(s.buf[s.w:])
		s.w += m
		if s.w == len(s.buf) && len(s.buf) < decodeBufferSize {
			s.grow(0) // the input has more to give than fits
		}
		if err != nil {
			s.err = err
		} else if m == 0 {
			if empty++; empty >= maxEmptyReads {
				s.err = io.ErrNoProgress
			}
		}
	}
	return nil
}

func (s *streamReader) grow(n int) {
	size := max(2*len(s.buf), n, decodeInitialSize)
	size = min(size, decodeBufferSize)
	b := make([]byte, size)
	s.w = copy(b, s.buf[s.r:s.w])
	s.r = 0
	s.buf = b
}

func (s *streamReader) peek(n int) ([]byte, error) {
	if err := s.fill(n); err != nil {
		return nil, err
	}
	return s.buf[s.r : s.r+n], nil
}

func (s *streamReader) take(n int) ([]byte, error) {
	b, err := s.peek(n)
	if err != nil {
		return nil, err
	}
	if s.recording {
		s.rec = append(s.rec, b...)
	}
	s.r += n
	s.off += int64(n)
	return b, nil
}

// takeAvailable returns the buffered bytes, or, when none are buffered, the result of one Read of the input. It
// returns io.EOF at the end of the input.
func (s *streamReader) takeAvailable() ([]byte, error) {
	for empty := 0; s.r == s.w; empty++ {
		if s.err != nil {
			return nil, s.err
		}
		if empty >= maxEmptyReads {
			s.err = io.ErrNoProgress
			continue
		}
		if len(s.buf) == 0 {
			s.grow(1)
		}
		s.r, s.w = 0, 0
		m, err := s.src.Read(s.buf)
		s.w = m
		if err != nil {
			s.err = err
		}
	}
	b := s.buf[s.r:s.w]
	s.off += int64(len(b))
	s.r = s.w
	return b, nil
}
