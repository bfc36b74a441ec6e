// Package fec is the erasure code of vmscatter's data plane: a systematic Reed-Solomon code over GF(2^8)
// (klauspost/reedsolomon, Cauchy matrix) on the FEC blocks of docs/protocol-data.md.
//
// A block has k data shards (1 ≤ k ≤ 255) and up to 256-k parity shards. Parity shard j is row k+j of a
// Cauchy matrix, the same whatever the number of parity shards computed, so a sender can compute parity
// shards a few at a time and a receiver decodes with whichever ones it holds. Data shards may be shorter
// than the block's shard size; they count as zero-padded.
//
// A Coder caches encoders; it is not safe for concurrent use. It runs in the caller's goroutine.
package fec

import (
	"errors"
	"fmt"

	"github.com/klauspost/reedsolomon"
)

// MaxShards bounds data plus parity shards of one block.
const MaxShards = 256

// maxEncoders bounds the encoder cache (one per data/parity shard count pair in use).
const maxEncoders = 64

// ErrShards is returned for shard counts or sizes the code cannot take.
var ErrShards = errors.New("fec: bad shards")

type key struct{ k, m int }

// Coder encodes and decodes blocks.
type Coder struct {
	encs    map[key]reedsolomon.Encoder
	scratch []byte
}

// NewCoder makes a Coder.
func NewCoder() *Coder { return &Coder{encs: make(map[key]reedsolomon.Encoder)} }

func (c *Coder) encoder(k, m int) (reedsolomon.Encoder, error) {
	if k < 1 || m < 1 || k+m > MaxShards {
		return nil, fmt.Errorf("%w: %d data and %d parity shards", ErrShards, k, m)
	}
	if e, ok := c.encs[key{k, m}]; ok {
		return e, nil
	}
	if len(c.encs) >= maxEncoders {
		clear(c.encs)
	}
	e, err := reedsolomon.New(k, m, reedsolomon.WithCauchyMatrix(), reedsolomon.WithMaxGoroutines(1))
	if err != nil {
		return nil, err
	}
	c.encs[key{k, m}] = e
	return e, nil
}

// padded returns the shards as equal-length slices of size bytes, copying the short ones into scratch.
func (c *Coder) padded(shards [][]byte, size int) [][]byte {
	need := 0
	for _, s := range shards {
		if s != nil && len(s) < size {
			need += size
		}
	}
	if cap(c.scratch) < need {
		c.scratch = make([]byte, need)
	}
	buf := c.scratch[:need]
	out := make([][]byte, len(shards))
	for i, s := range shards {
		switch {
		case s == nil:
		case len(s) == size:
			out[i] = s
		default:
			p := buf[:size:size]
			buf = buf[size:]
			clear(p[copy(p, s):])
			out[i] = p
		}
	}
	return out
}

// Encode returns parity shards 0..m-1 of the data shards, each as long as the longest data shard.
func (c *Coder) Encode(data [][]byte, m int) ([][]byte, error) {
	e, err := c.encoder(len(data), m)
	if err != nil {
		return nil, err
	}
	size := 0
	for _, d := range data {
		size = max(size, len(d))
	}
	if size == 0 {
		return nil, fmt.Errorf("%w: empty data shards", ErrShards)
	}
	shards := c.padded(data, size)
	parity := make([]byte, m*size)
	for j := range m {
		shards = append(shards, parity[j*size:(j+1)*size:(j+1)*size])
	}
	if err := e.Encode(shards); err != nil {
		return nil, err
	}
	return shards[len(data):], nil
}

// Reconstruct rebuilds the missing (nil) data shards of a block of len(data) data shards from the data
// and parity shards present. parity[j] is parity shard j, nil if missing; every parity shard present has
// the block's shard size, and no data shard is longer. The rebuilt shards have the shard size (padded).
func (c *Coder) Reconstruct(data, parity [][]byte) error {
	missing := false
	for _, d := range data {
		missing = missing || d == nil
	}
	if !missing {
		return nil
	}
	size, have := 0, 0
	for _, p := range parity {
		if p == nil {
			continue
		}
		if size != 0 && len(p) != size {
			return fmt.Errorf("%w: parity shards of %d and %d bytes", ErrShards, size, len(p))
		}
		size = len(p)
		have++
	}
	for _, d := range data {
		if d == nil {
			continue
		}
		if len(d) > size {
			return fmt.Errorf("%w: data shard of %d bytes over the shard size %d", ErrShards, len(d), size)
		}
		have++
	}
	if have < len(data) {
		return fmt.Errorf("%w: %d shards for %d data shards", ErrShards, have, len(data))
	}
	e, err := c.encoder(len(data), len(parity))
	if err != nil {
		return err
	}
	shards := append(c.padded(data, size), parity...)
	if err := e.ReconstructData(shards); err != nil {
		return err
	}
	copy(data, shards[:len(data)])
	return nil
}
