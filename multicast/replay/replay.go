// Package replay is a sliding-window replay filter for packet numbers, after wireguard-go's
// replay package (RFC 6479): a ring of 64-bit blocks, the newest number accepted and the 8128 before it
// remembered, anything older refused.
//
// A Filter is not safe for concurrent use. Validate a number only after the packet authenticated, or
// forged packets would move the window.
package replay

const (
	blockBitLog = 6
	blockBits   = 1 << blockBitLog
	ringBlocks  = 1 << 7
	// WindowSize is how far behind the newest number a packet may arrive and still be accepted.
	WindowSize = (ringBlocks - 1) * blockBits
	blockMask  = ringBlocks - 1
	bitMask    = blockBits - 1
)

// Filter remembers which packet numbers it has seen. The zero value is ready.
type Filter struct {
	last uint64
	ring [ringBlocks]uint64
}

// Reset forgets everything.
func (f *Filter) Reset() { *f = Filter{} }

// Accept reports whether n is new (first time seen and inside the window), and records it.
func (f *Filter) Accept(n uint64) bool {
	block := n >> blockBitLog
	if n > f.last {
		cur := f.last >> blockBitLog
		diff := block - cur
		if diff > ringBlocks {
			diff = ringBlocks
		}
		for i := cur + 1; i <= cur+diff; i++ {
			f.ring[i&blockMask] = 0
		}
		f.last = n
	} else if f.last-n > WindowSize {
		return false
	}
	block &= blockMask
	bit := uint64(1) << (n & bitMask)
	old := f.ring[block]
	f.ring[block] = old | bit
	return old&bit == 0
}
