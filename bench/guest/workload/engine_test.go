package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/vmscatter/vmscatter/bench/guest/guestlog"
	"github.com/vmscatter/vmscatter/bench/guest/pageset"
)

func testConfig(t *testing.T, args ...string) config {
	t.Helper()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var c config
	c.register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// drive advances e in 10 ms steps for d of fake time and returns the summary of what it printed.
func drive(e *engine, now *time.Time, d time.Duration) guestlog.Summary {
	var out bytes.Buffer
	for end := now.Add(d); now.Before(end); {
		*now = now.Add(10 * time.Millisecond)
		e.advance(*now, &out)
	}
	s, _ := guestlog.Summarize(&out)
	return s
}

func TestEngineRunsClean(t *testing.T) {
	for _, pattern := range []string{"seq", "random"} {
		c := testConfig(t, "-wss", "256K", "-rate", "100", "-pattern", pattern, "-salt", "9")
		now := time.Unix(1700000000, 0)
		e, err := newEngine(c, make([]byte, c.wss), nil, nil, now)
		if err != nil {
			t.Fatal(err)
		}
		s := drive(e, &now, 2*time.Second)
		if s.OKs != 20 || s.SeqBreaks != 0 || len(s.Bad) != 0 || s.Last.Gen != 200 || s.Last.Pass != 2 {
			t.Fatalf("%s: summary %+v", pattern, s)
		}
		if s.MaxGap != 100*time.Millisecond {
			t.Fatalf("%s: max gap %v", pattern, s.MaxGap)
		}
	}
}

func TestEngineReportsCorruptionOnce(t *testing.T) {
	c := testConfig(t, "-wss", "256K", "-rate", "0", "-vperiod", "500ms")
	now := time.Unix(1700000000, 0)
	mem := make([]byte, c.wss)
	e, err := newEngine(c, mem, nil, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	if s := drive(e, &now, time.Second); len(s.Bad) != 0 {
		t.Fatalf("clean run reported %v", s.Bad)
	}
	mem[5*pageset.PageSize+100] ^= 1
	s := drive(e, &now, 2*time.Second)
	if len(s.Bad) != 1 || s.Bad[0].Page != 5 || s.Bad[0].Reason != "sum" || s.Last.Bad != 1 {
		t.Fatalf("after corrupting page 5: bad %v, last %+v", s.Bad, s.Last)
	}
}

func TestEngineNoBurstAfterStop(t *testing.T) {
	c := testConfig(t, "-wss", "64K", "-rate", "100")
	now := time.Unix(1700000000, 0)
	e, err := newEngine(c, make([]byte, c.wss), nil, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Minute) // the guest was stopped
	var out bytes.Buffer
	e.advance(now, &out)
	if e.gen > 10 {
		t.Fatalf("dirtied %d pages at once after a stop", e.gen)
	}
	if n := strings.Count(out.String(), "ok seq="); n != 1 {
		t.Fatalf("%d ok lines after a stop, want 1", n)
	}
}

func TestCmdline(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var c config
	c.register(fs)
	warns := applyCmdline(fs, "console=ttyS0 quiet vms.wss=8M vms.rate=2000 vms.pattern=random vms.seed=7 "+
		"vms.period=50ms vms.bogus=1 vms.private=0.5\n")
	if len(warns) != 1 || !strings.Contains(warns[0], "bogus") {
		t.Fatalf("warnings %v", warns)
	}
	if c.wss != 8<<20 || c.rate != 2000 || c.pattern != "random" || c.seed != 7 || c.period != 50*time.Millisecond ||
		c.private != 0.5 {
		t.Fatalf("config %+v", c)
	}
}

func TestRunRejects(t *testing.T) {
	for _, args := range [][]string{{"-wss", "1000"}, {"-pattern", "zigzag"}, {"-rate", "-1"}, {"-wss", "1T"}} {
		if err := run(args, &bytes.Buffer{}); err == nil {
			t.Errorf("run(%v) accepted", args)
		}
	}
}

func TestReadyLine(t *testing.T) {
	c := testConfig(t, "-wss", "64K")
	e, err := newEngine(c, make([]byte, c.wss), nil, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	e.begin(time.Now(), &out)
	line, _ := bufio.NewReader(&out).ReadString('\n')
	if !strings.HasPrefix(line, "ready wss=65536 pages=16 rate=1000 pattern=seq") {
		t.Fatalf("ready line %q", line)
	}
}

// memDisk is a disk in memory; fail makes every I/O fail as a vanished device would.
type memDisk struct {
	b     []byte
	fail  bool
	syncs int
}

func (d *memDisk) ReadAt(p []byte, off int64) (int, error) {
	if d.fail {
		return 0, syscall.EIO
	}
	return copy(p, d.b[off:]), nil
}

func (d *memDisk) WriteAt(p []byte, off int64) (int, error) {
	if d.fail {
		return 0, syscall.EIO
	}
	return copy(d.b[off:], p), nil
}

func (d *memDisk) Sync() error { d.syncs++; return nil }

func TestEngineDiskRunsClean(t *testing.T) {
	c := testConfig(t, "-wss", "64K", "-rate", "10", "-disk", "/dev/vda", "-dblocks", "32", "-drate", "20",
		"-dvperiod", "500ms", "-salt", "5")
	now := time.Unix(1700000000, 0)
	disk := &memDisk{b: make([]byte, 64*pageset.PageSize)}
	e, err := newEngine(c, make([]byte, c.wss), disk, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 32 { // filled at generation 0, with content of its own
		block := disk.b[i*pageset.PageSize : (i+1)*pageset.PageSize]
		if err := pageset.CheckPage(block, i, 0); err != nil || bytes.Equal(block, e.set.Page(i%e.set.Len())) {
			t.Fatalf("disk block %d: %v, or a memory page's content", i, err)
		}
	}
	s := drive(e, &now, 2*time.Second)
	if s.OKs != 20 || len(s.Bad) != 0 || !s.Last.Disk || s.Last.DiskWrites != 40 || s.Last.DiskPass != 4 {
		t.Fatalf("summary %+v", s)
	}
	if disk.syncs != 41 { // the fill, then every write
		t.Fatalf("%d syncs", disk.syncs)
	}
	var out bytes.Buffer
	e.begin(now, &out)
	if !strings.Contains(out.String(), " disk=/dev/vda dblocks=32 drate=20\n") {
		t.Fatalf("ready line %q", out.String())
	}
}

func TestEngineDiskReportsCorruptionAndIOErrorsOnce(t *testing.T) {
	c := testConfig(t, "-wss", "64K", "-rate", "0", "-disk", "/dev/vda", "-dblocks", "16", "-drate", "0",
		"-dvperiod", "200ms")
	now := time.Unix(1700000000, 0)
	disk := &memDisk{b: make([]byte, 16*pageset.PageSize)}
	e, err := newEngine(c, make([]byte, c.wss), disk, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	disk.b[3*pageset.PageSize+200] ^= 1 // a block that does not hold what the guest wrote
	s := drive(e, &now, time.Second)
	if len(s.Bad) != 1 || s.Bad[0] != (guestlog.Bad{Page: 3, Reason: "sum", Got: s.Bad[0].Got, Want: s.Bad[0].Want, On: guestlog.OnDisk}) ||
		s.Last.Bad != 1 {
		t.Fatalf("after corrupting block 3: bad %+v, last %+v", s.Bad, s.Last)
	}
	disk.fail = true // the disk is gone: reported once, counted every time
	s = drive(e, &now, time.Second)
	if len(s.Bad) != 1 || s.Bad[0].Reason != "io" || s.Bad[0].On != guestlog.OnDisk || s.Bad[0].Got != uint64(syscall.EIO) ||
		s.Last.Bad < 10 {
		t.Fatalf("with the disk failing: bad %+v, last %+v", s.Bad, s.Last)
	}
}

func TestDiskConfigRejects(t *testing.T) {
	for _, args := range [][]string{{"-disk", "/dev/vda", "-dblocks", "0"}, {"-drate", "-1"}, {"-dvperiod", "0s"},
		{"-disk", "/dev/vda", "-dblocks", "2000000"}} {
		if err := run(args, &bytes.Buffer{}); err == nil {
			t.Errorf("run(%v) accepted", args)
		}
	}
}

func TestAlignedBlock(t *testing.T) {
	for range 10 {
		b := alignedBlock()
		if len(b) != pageset.PageSize || uintptr(unsafe.Pointer(&b[0]))%pageset.PageSize != 0 {
			t.Fatalf("block of %d bytes at %p", len(b), &b[0])
		}
	}
}

func TestEngineCacheVerifiesAndReportsCorruptionOnce(t *testing.T) {
	c := testConfig(t, "-wss", "64K", "-rate", "0", "-cache", "/dev/vdb", "-cbytes", "64K", "-cvperiod", "200ms")
	now := time.Unix(1700000000, 0)
	img := &memDisk{b: make([]byte, 32*pageset.PageSize)}
	for i := range img.b {
		img.b[i] = byte(i * 7 / 4096)
	}
	e, err := newEngine(c, make([]byte, c.wss), nil, img, now)
	if err != nil {
		t.Fatal(err)
	}
	s := drive(e, &now, time.Second)
	if s.OKs != 10 || len(s.Bad) != 0 || !s.Last.Cache || s.Last.CachePass != 5 || s.Last.Net {
		t.Fatalf("summary %+v", s)
	}
	img.b[5*pageset.PageSize+9] ^= 1 // a cached block whose bytes changed under the guest
	img.b[20*pageset.PageSize] ^= 1  // beyond cbytes: not the guest's business
	s = drive(e, &now, time.Second)
	if len(s.Bad) != 1 || s.Bad[0].Page != 5 || s.Bad[0].On != guestlog.OnCache || s.Bad[0].Reason != "sum" || s.Last.Bad != 1 {
		t.Fatalf("after corrupting block 5: bad %+v, last %+v", s.Bad, s.Last)
	}
	var out bytes.Buffer
	e.begin(now, &out)
	if !strings.Contains(out.String(), " cache=/dev/vdb cbytes=65536") {
		t.Fatalf("ready line %q", out.String())
	}
}

func TestEngineNetCountsEchoes(t *testing.T) {
	echo, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Skip("no loopback UDP:", err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := echo.ReadFromUDP(buf)
			if err != nil {
				return
			}
			echo.WriteToUDP(buf[:n], from)
		}
	}()
	c := testConfig(t, "-wss", "64K", "-rate", "0", "-peer", echo.LocalAddr().String())
	now := time.Unix(1700000000, 0)
	e, err := newEngine(c, make([]byte, c.wss), nil, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	s := drive(e, &now, time.Second)
	if !s.Last.Net || s.Last.NetSent != 10 {
		t.Fatalf("summary %+v", s.Last)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for e.net.recv.Load() < 10 { // the echoes arrive on the reader goroutine
		select {
		case <-ctx.Done():
			t.Fatalf("%d echoes of 10 datagrams", e.net.recv.Load())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
