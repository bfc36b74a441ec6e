package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"syscall"
	"time"
	"unsafe"

	"github.com/vmscatter/vmscatter/bench/guest/guestlog"
	"github.com/vmscatter/vmscatter/bench/guest/pageset"
)

// blockDevice is the guest's disk as the disk part uses it: the raw device opened with O_DIRECT in the guest (so
// that every read goes to the device, not the guest's page cache), memory in tests.
type blockDevice interface {
	io.ReaderAt
	io.WriterAt
}

// syncer is a device whose writes can be made durable (fdatasync: the guest flushes the disk's write cache).
type syncer interface{ Sync() error }

// diskSeedMix sets the disk's blocks apart from the memory pages of the same guest.
const diskSeedMix = 0x4449534b424c4b53 // "DISKBLKS"

// diskPart writes blocks of the guest's disk and reads them back, as the engine does with memory pages. Each block
// has the layout of a pageset page (its index, a generation and a checksum), written with O_DIRECT and made durable
// before its generation counts; a block that reads back other than its last generation is a BAD line with on=disk.
// The generations live in guest memory, so they migrate with the VM: after a migration the guest checks that the
// disk holds what it wrote before it, which is what shared storage promises.
type diskPart struct {
	dev    blockDevice
	p      pageset.Params
	gens   []uint64
	buf    []byte // one block, aligned for O_DIRECT
	rate   float64
	vrate  float64
	period float64

	writeCredit float64
	wcursor     int
	sweep

	writes   uint64 // block writes since start
	ioFailed bool   // the last I/O failed: the next failure is not reported again
}

// newDiskPart lays blocks blocks over dev and fills them at generation 0.
func newDiskPart(dev blockDevice, blocks int, rate float64, vperiod, period time.Duration, p pageset.Params) (*diskPart, error) {
	p.Seed ^= diskSeedMix
	d := &diskPart{dev: dev, p: p, gens: make([]uint64, blocks), buf: alignedBlock(), rate: rate,
		vrate: float64(blocks) / vperiod.Seconds(), period: period.Seconds()}
	for i := range d.gens {
		pageset.WritePage(d.buf, d.p, i, 0)
		if _, err := dev.WriteAt(d.buf, int64(i)*pageset.PageSize); err != nil {
			return nil, fmt.Errorf("filling disk block %d: %w", i, err)
		}
	}
	if s, ok := dev.(syncer); ok {
		if err := s.Sync(); err != nil {
			return nil, fmt.Errorf("flushing the disk: %w", err)
		}
	}
	return d, nil
}

// alignedBlock returns a block-sized buffer at a block-aligned address, as O_DIRECT wants. Go's heap does not move
// objects, so the alignment holds for the buffer's life.
func alignedBlock() []byte {
	b := make([]byte, 2*pageset.PageSize)
	off := int(uintptr(unsafe.Pointer(&b[0])) & (pageset.PageSize - 1))
	if off != 0 {
		off = pageset.PageSize - off
	}
	return b[off : off+pageset.PageSize : off+pageset.PageSize]
}

// advance writes and verifies the blocks due after dt seconds, with credits capped at one period's worth as the
// engine's are. It returns the lines to print through emit.
func (d *diskPart) advance(dt float64, emit func([]byte), line []byte) uint64 {
	var bad uint64
	n := len(d.gens)
	d.writeCredit = math.Min(d.writeCredit+dt*d.rate, math.Max(1, d.rate*d.period))
	for ; d.writeCredit >= 1; d.writeCredit-- {
		i := d.wcursor
		d.wcursor = (d.wcursor + 1) % n
		if err := d.write(i, d.gens[i]+1); err != nil {
			bad += d.ioError(i, err, emit, line)
			continue
		}
		d.gens[i]++
		d.writes++
	}
	return bad + d.advanceSweep(dt, d.vrate, d.period, n, func(i int) uint64 { return d.verify(i, emit, line) })
}

// write puts block i at generation gen on the disk, durably.
func (d *diskPart) write(i int, gen uint64) error {
	pageset.WritePage(d.buf, d.p, i, gen)
	if _, err := d.dev.WriteAt(d.buf, int64(i)*pageset.PageSize); err != nil {
		return err
	}
	if s, ok := d.dev.(syncer); ok {
		return s.Sync()
	}
	return nil
}

// verify reads block i back and reports it if it is not what was last written; it returns the failures counted.
func (d *diskPart) verify(i int, emit func([]byte), line []byte) uint64 {
	if _, err := d.dev.ReadAt(d.buf, int64(i)*pageset.PageSize); err != nil {
		return d.ioError(i, err, emit, line)
	}
	d.ioFailed = false
	err := pageset.CheckPage(d.buf, i, d.gens[i])
	if err == nil {
		return 0
	}
	var pe *pageset.PageError
	if errors.As(err, &pe) {
		emit(guestlog.Bad{Page: uint64(i), Reason: pe.Reason, Got: pe.Got, Want: pe.Want, On: guestlog.OnDisk}.Append(line))
	}
	if d.write(i, d.gens[i]) != nil { // rewrite it, so that one corruption is reported once
		d.ioFailed = true
	}
	return 1
}

// ioError reports a failed read or write of block i, once until an I/O succeeds again, and counts it.
func (d *diskPart) ioError(i int, err error, emit func([]byte), line []byte) uint64 {
	if !d.ioFailed {
		var errno syscall.Errno
		errors.As(err, &errno)
		emit(guestlog.Bad{Page: uint64(i), Reason: "io", Got: uint64(errno), On: guestlog.OnDisk}.Append(line))
	}
	d.ioFailed = true
	return 1
}

// openDisk opens the guest's disk device for O_DIRECT I/O, waiting up to wait for it to appear (the driver probes
// it while init goes on), and checks that it holds blocks blocks.
func openDisk(path string, blocks int, wait time.Duration) (*os.File, error) {
	deadline := time.Now().Add(wait)
	for {
		f, err := os.OpenFile(path, os.O_RDWR|syscall.O_DIRECT, 0)
		if err == nil {
			size, err := f.Seek(0, io.SeekEnd)
			if err == nil && size < int64(blocks)*pageset.PageSize {
				err = fmt.Errorf("%s holds %d bytes, fewer than %d blocks of %d", path, size, blocks, pageset.PageSize)
			}
			if err != nil {
				f.Close()
				return nil, err
			}
			return f, nil
		}
		if !errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			return nil, fmt.Errorf("opening the disk: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
