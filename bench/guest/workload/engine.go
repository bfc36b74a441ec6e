package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/vmscatter/vmscatter/bench/guest/guestlog"
	"github.com/vmscatter/vmscatter/bench/guest/pageset"
)

// maxWSS bounds the working set: far above any test guest, below what would wrap an int on 32-bit math.
const maxWSS = 64 << 30

// config is the workload's flags.
type config struct {
	wss     byteSize
	rate    float64 // pages dirtied per second
	pattern string  // seq or random
	seed    uint64
	salt    uint64
	private float64
	period  time.Duration // between ok lines
	vperiod time.Duration // for one full verify pass

	disk     string        // the disk device to write and verify (e.g. /dev/vda); "" for none
	dblocks  int           // disk blocks of 4 KiB in use, from the device's start
	drate    float64       // disk block writes per second
	dvperiod time.Duration // for one full verify pass over the disk's blocks

	cache    string        // a read-only disk (a shared image) to keep in the page cache and verify; "" for none
	cbytes   byteSize      // bytes of it to cache, from its start
	cvperiod time.Duration // for one full verify pass over the cached blocks

	ip   string // eth0's address, set by the init script (vms.ip=ADDR/BITS); the workload only reports it
	peer string // ADDR:PORT of a UDP echo responder to exchange datagrams with; "" for none
}

// maxDiskBlocks bounds the disk blocks in use (the generations live in memory).
const maxDiskBlocks = 1 << 20

func (c *config) register(fs *flag.FlagSet) {
	c.wss = 32 << 20
	fs.Var(&c.wss, "wss", "working set size in bytes, with optional K, M or G suffix")
	fs.Float64Var(&c.rate, "rate", 1000, "pages dirtied per second")
	fs.StringVar(&c.pattern, "pattern", "seq", "dirtying pattern: seq (walk, like NPB MG) or random (like NPB IS)")
	fs.Uint64Var(&c.seed, "seed", 1, "content seed: guests with the same seed share their non-private pages")
	fs.Uint64Var(&c.salt, "salt", 0, "per-guest salt for private and dirtied content (0: derive from the clock)")
	fs.Float64Var(&c.private, "private", 0, "fraction of pages whose initial content is private to this guest")
	fs.DurationVar(&c.period, "period", 100*time.Millisecond, "interval between ok lines")
	fs.DurationVar(&c.vperiod, "vperiod", time.Second, "time for one full verification pass over the working set")
	fs.StringVar(&c.disk, "disk", "", "disk device to write and verify with O_DIRECT, e.g. /dev/vda (\"\": none)")
	fs.IntVar(&c.dblocks, "dblocks", 256, "disk blocks of 4 KiB to write and verify, from the device's start")
	fs.Float64Var(&c.drate, "drate", 20, "disk block writes per second, each made durable (fdatasync)")
	fs.DurationVar(&c.dvperiod, "dvperiod", 2*time.Second, "time for one full verification pass over the disk's blocks")
	fs.StringVar(&c.cache, "cache", "", "read-only disk to keep in the page cache and verify, e.g. /dev/vdb (\"\": none)")
	fs.Var(&c.cbytes, "cbytes", "bytes of the cache disk to read into the page cache, with optional K, M or G suffix")
	fs.DurationVar(&c.cvperiod, "cvperiod", 10*time.Second, "time for one full verification pass over the cached blocks")
	fs.StringVar(&c.ip, "ip", "", "eth0's address ADDR/BITS (the init script sets it)")
	fs.StringVar(&c.peer, "peer", "", "UDP echo responder ADDR:PORT to exchange a datagram with every period (\"\": none)")
}

func (c *config) validate() error {
	switch {
	case c.wss < pageset.PageSize || c.wss > maxWSS || c.wss%pageset.PageSize != 0:
		return fmt.Errorf("wss %d: want a multiple of %d in [%d, %d]", c.wss, pageset.PageSize, pageset.PageSize, int64(maxWSS))
	case !(c.rate >= 0 && c.rate < 1e9):
		return fmt.Errorf("rate %v: want [0, 1e9)", c.rate)
	case c.pattern != "seq" && c.pattern != "random":
		return fmt.Errorf("pattern %q: want seq or random", c.pattern)
	case c.period < time.Millisecond || c.vperiod < time.Millisecond || c.dvperiod < time.Millisecond || c.cvperiod < time.Millisecond:
		return errors.New("period, vperiod, dvperiod and cvperiod must be at least 1ms")
	case c.cache != "" && (c.cbytes < pageset.PageSize || c.cbytes%pageset.PageSize != 0):
		return fmt.Errorf("cbytes %d: want a positive multiple of %d", c.cbytes, pageset.PageSize)
	case c.disk != "" && (c.dblocks < 1 || c.dblocks > maxDiskBlocks):
		return fmt.Errorf("dblocks %d: want [1, %d]", c.dblocks, maxDiskBlocks)
	case !(c.drate >= 0 && c.drate < 1e6):
		return fmt.Errorf("drate %v: want [0, 1e6)", c.drate)
	}
	return nil
}

// byteSize is a flag value like 32M.
type byteSize int64

func (b *byteSize) String() string { return strconv.FormatInt(int64(*b), 10) }

func (b *byteSize) Set(s string) error {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult = 1 << 10
	case strings.HasSuffix(s, "M"):
		mult = 1 << 20
	case strings.HasSuffix(s, "G"):
		mult = 1 << 30
	}
	if mult != 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > maxWSS/mult {
		return fmt.Errorf("bad size %q", s)
	}
	*b = byteSize(n * mult)
	return nil
}

// engine dirties, verifies and reports. It owns no clock: advance is told the time.
type engine struct {
	cfg   config
	set   *pageset.Set
	disk  *diskPart  // nil without a disk
	cache *cachePart // nil without a cache image
	net   *netPart   // nil without a peer
	line  []byte

	nextLine time.Time
	last     time.Time

	dirtyCredit float64
	cursor      int    // next page of the sequential pattern
	rng         uint64 // state of the random pattern
	sweep              // the pages to verify

	seq     uint64
	gen     uint64 // dirty writes since start
	dirtied uint64 // since the last line
	bad     uint64
}

// newEngine lays the working set over mem and fills it, the disk's blocks over dev when it is not nil, and reads
// cfg.cbytes of cache into the page cache when it is not nil. salt 0 in cfg is replaced by one derived from now.
func newEngine(cfg config, mem []byte, dev blockDevice, cache io.ReaderAt, now time.Time) (*engine, error) {
	if cfg.salt == 0 {
		cfg.salt = uint64(now.UnixNano())
	}
	params := pageset.Params{Seed: cfg.seed, Salt: cfg.salt, Private: cfg.private}
	set, err := pageset.New(mem, params)
	if err != nil {
		return nil, err
	}
	set.Fill()
	e := &engine{cfg: cfg, set: set, rng: cfg.salt | 1}
	if dev != nil {
		if e.disk, err = newDiskPart(dev, cfg.dblocks, cfg.drate, cfg.dvperiod, cfg.period, params); err != nil {
			return nil, err
		}
	}
	if cache != nil {
		if e.cache, err = newCachePart(cache, int64(cfg.cbytes), cfg.cvperiod, cfg.period); err != nil {
			return nil, err
		}
	}
	if cfg.peer != "" {
		if e.net, err = newNetPart(cfg.peer, cfg.period); err != nil {
			return nil, fmt.Errorf("peer %q: %w", cfg.peer, err)
		}
	}
	e.last, e.nextLine = now, now.Add(cfg.period)
	return e, nil
}

// begin prints the ready line and starts the clocks at now (after the fill, which takes a while in a slow guest).
func (e *engine) begin(now time.Time, out io.Writer) {
	e.last, e.nextLine = now, now.Add(e.cfg.period)
	var extra string
	if e.disk != nil {
		extra = fmt.Sprintf(" disk=%s dblocks=%d drate=%g", e.cfg.disk, e.cfg.dblocks, e.cfg.drate)
	}
	if e.cache != nil {
		extra += fmt.Sprintf(" cache=%s cbytes=%d", e.cfg.cache, int64(e.cfg.cbytes))
	}
	if e.net != nil {
		extra += fmt.Sprintf(" ip=%s peer=%s", e.cfg.ip, e.cfg.peer)
	}
	fmt.Fprintf(out, "ready wss=%d pages=%d rate=%g pattern=%s seed=%d salt=%d private=%g period=%s%s\n",
		int64(e.cfg.wss), e.set.Len(), e.cfg.rate, e.cfg.pattern, e.cfg.seed, e.cfg.salt, e.cfg.private, e.cfg.period, extra)
}

// advance does the work due by now: dirty pages at the configured rate, verify pages so that a full pass takes
// vperiod, and print the ok lines that fell due. Credits are capped at one period's worth, so a guest that was
// stopped does not burst afterwards.
func (e *engine) advance(now time.Time, out io.Writer) {
	dt := now.Sub(e.last).Seconds()
	if dt < 0 {
		dt = 0
	}
	e.last = now
	n := e.set.Len()
	p := e.cfg.period.Seconds()

	e.dirtyCredit = math.Min(e.dirtyCredit+dt*e.cfg.rate, math.Max(1, e.cfg.rate*p))
	for ; e.dirtyCredit >= 1; e.dirtyCredit-- {
		e.set.Dirty(e.nextDirty(n))
		e.gen++
		e.dirtied++
	}

	vrate := float64(n) / e.cfg.vperiod.Seconds()
	e.advanceSweep(dt, vrate, p, n, func(i int) uint64 { e.verify(i, out); return 0 })

	if e.disk != nil {
		e.bad += e.disk.advance(dt, func(line []byte) { e.emit(out, line) }, e.line[:0])
	}
	if e.cache != nil {
		e.bad += e.cache.advance(dt, func(line []byte) { e.emit(out, line) }, e.line[:0])
	}
	if e.net != nil {
		e.net.advance(now)
	}

	if !now.Before(e.nextLine) {
		e.seq++
		ok := guestlog.OK{Seq: e.seq, UnixMilli: now.UnixMilli(), Gen: e.gen, Dirtied: e.dirtied,
			Verified: e.verified, Pass: e.pass, Bad: e.bad}
		if e.disk != nil {
			ok.Disk, ok.DiskWrites, ok.DiskVerified, ok.DiskPass = true, e.disk.writes, e.disk.verified, e.disk.pass
			e.disk.verified = 0
		}
		if e.cache != nil {
			ok.Cache, ok.CacheVerified, ok.CachePass = true, e.cache.verified, e.cache.pass
			e.cache.verified = 0
		}
		if e.net != nil {
			ok.Net, ok.NetSent, ok.NetRecv = true, e.net.sent, e.net.recv.Load()
		}
		e.emit(out, ok.Append(e.line[:0]))
		e.dirtied, e.verified = 0, 0
		e.nextLine = e.nextLine.Add(e.cfg.period)
		if now.After(e.nextLine) { // fell behind (or was stopped): resume the cadence from now
			e.nextLine = now.Add(e.cfg.period)
		}
	}
}

func (e *engine) nextDirty(n int) int {
	if e.cfg.pattern == "random" {
		e.rng ^= e.rng << 13
		e.rng ^= e.rng >> 7
		e.rng ^= e.rng << 17
		return int(e.rng % uint64(n))
	}
	i := e.cursor
	e.cursor = (e.cursor + 1) % n
	return i
}

func (e *engine) verify(i int, out io.Writer) {
	err := e.set.Check(i)
	if err == nil {
		return
	}
	e.bad++
	var pe *pageset.PageError
	if errors.As(err, &pe) {
		e.emit(out, guestlog.Bad{Page: uint64(pe.Page), Reason: pe.Reason, Got: pe.Got, Want: pe.Want}.Append(e.line[:0]))
	}
	e.set.Repair(i) // report each corruption once
}

// emit writes one line in one write, so lines from one guest never interleave.
func (e *engine) emit(out io.Writer, line []byte) {
	e.line = append(line, '\n')
	out.Write(e.line) //nolint:errcheck // the console is all we have; nothing to do if it fails
}
