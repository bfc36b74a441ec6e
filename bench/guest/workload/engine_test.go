package main

import (
	"bufio"
	"bytes"
	"flag"
	"strings"
	"testing"
	"time"

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
		e, err := newEngine(c, make([]byte, c.wss), now)
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
	e, err := newEngine(c, mem, now)
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
	e, err := newEngine(c, make([]byte, c.wss), now)
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
	e, err := newEngine(c, make([]byte, c.wss), time.Now())
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
