package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/vmscatter/vmscatter/bench/guest/guestlog"
	"github.com/vmscatter/vmscatter/bench/guest/pageset"
)

// cachePart keeps a read-only disk's first bytes in the guest's page cache and checks them: the page cache of files
// that guests share (a base image, libraries), identical in every guest that reads the same image. At the start it
// reads those bytes through the page cache (buffered reads of the block device) and notes the xxhash64 of every 4 KiB
// block in memory; then it reads every block again through the page cache in each verification period and compares.
// The device stays open for the guest's life: Linux drops a block device's page cache when its last opener closes it.
// A block whose bytes changed is a BAD line with on=cache and reason sum (reason io: the read failed). A page the
// kernel evicted and reads again from the disk is as good as one kept: the check holds either way.
type cachePart struct {
	dev    io.ReaderAt
	sums   []uint64 // xxhash64 of each block as first read
	buf    []byte
	vrate  float64 // blocks checked per second
	period float64

	sweep
	ioFailed bool
}

// newCachePart reads the first size bytes of dev into the page cache, 1 MiB at a time, and notes their sums.
func newCachePart(dev io.ReaderAt, size int64, vperiod, period time.Duration) (*cachePart, error) {
	blocks := int(size / pageset.PageSize)
	c := &cachePart{dev: dev, sums: make([]uint64, blocks), buf: make([]byte, pageset.PageSize),
		vrate: float64(blocks) / vperiod.Seconds(), period: period.Seconds()}
	chunk := make([]byte, 1<<20)
	for i := 0; i < blocks; {
		n := min(len(chunk)/pageset.PageSize, blocks-i)
		b := chunk[:n*pageset.PageSize]
		if _, err := dev.ReadAt(b, int64(i)*pageset.PageSize); err != nil {
			return nil, fmt.Errorf("reading the cache image at block %d: %w", i, err)
		}
		for k := range n {
			c.sums[i+k] = xxhash.Sum64(b[k*pageset.PageSize : (k+1)*pageset.PageSize])
		}
		i += n
	}
	return c, nil
}

// advance checks the blocks due after dt seconds, with credit capped at one period's worth, and returns the failures.
func (c *cachePart) advance(dt float64, emit func([]byte), line []byte) uint64 {
	return c.advanceSweep(dt, c.vrate, c.period, len(c.sums), func(i int) uint64 { return c.verify(i, emit, line) })
}

func (c *cachePart) verify(i int, emit func([]byte), line []byte) uint64 {
	if _, err := c.dev.ReadAt(c.buf, int64(i)*pageset.PageSize); err != nil {
		if c.ioFailed {
			return 1
		}
		c.ioFailed = true
		emit(guestlog.Bad{Page: uint64(i), Reason: "io", On: guestlog.OnCache}.Append(line))
		return 1
	}
	c.ioFailed = false
	got := xxhash.Sum64(c.buf)
	if got == c.sums[i] {
		return 0
	}
	emit(guestlog.Bad{Page: uint64(i), Reason: "sum", Got: got, Want: c.sums[i], On: guestlog.OnCache}.Append(line))
	c.sums[i] = got // report each corruption once
	return 1
}

// openCache opens the cache device for buffered reads, waiting up to wait for it to appear, and checks that it holds
// size bytes.
func openCache(path string, size int64, wait time.Duration) (*os.File, error) {
	deadline := time.Now().Add(wait)
	for {
		f, err := os.Open(path)
		if err == nil {
			n, err := f.Seek(0, io.SeekEnd)
			if err == nil && n < size {
				err = fmt.Errorf("%s holds %d bytes, fewer than the %d to cache", path, n, size)
			}
			if err != nil {
				f.Close()
				return nil, err
			}
			return f, nil
		}
		if !os.IsNotExist(err) || time.Now().After(deadline) {
			return nil, fmt.Errorf("opening the cache image: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
