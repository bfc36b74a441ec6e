package guestlog

import (
	"strings"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	o := OK{Seq: 12, UnixMilli: 1700000000123, Gen: 99, Dirtied: 3, Verified: 800, Pass: 4, Bad: 1}
	line := string(o.Append(nil))
	if line != "ok seq=12 t=1700000000123 gen=99 dirtied=3 verified=800 pass=4 bad=1" {
		t.Fatalf("format: %q", line)
	}
	if got, ok := ParseOK(line + "\r"); !ok || got != o {
		t.Fatalf("parse: %+v %v", got, ok)
	}
	d := Bad{Page: 7, Reason: "sum", Got: 0xdead, Want: 0xbeef}
	bl := string(d.Append(nil))
	if bl != "BAD page=7 reason=sum got=0xdead want=0xbeef" {
		t.Fatalf("format: %q", bl)
	}
	if got, ok := ParseBad("[  3.1] noise" + bl); !ok || got != d {
		t.Fatalf("parse: %+v %v", got, ok)
	}
	// A guest with a disk adds the disk's counters, and says where a failure was.
	o.Disk, o.DiskWrites, o.DiskVerified, o.DiskPass = true, 40, 128, 2
	line = string(o.Append(nil))
	if line != "ok seq=12 t=1700000000123 gen=99 dirtied=3 verified=800 pass=4 bad=1 dwrites=40 dverified=128 dpass=2" {
		t.Fatalf("format: %q", line)
	}
	if got, ok := ParseOK(line); !ok || got != o {
		t.Fatalf("parse: %+v %v", got, ok)
	}
	d.On = OnDisk
	if bl = string(d.Append(nil)); bl != "BAD page=7 reason=sum got=0xdead want=0xbeef on=disk" {
		t.Fatalf("format: %q", bl)
	}
	if got, ok := ParseBad(bl); !ok || got != d {
		t.Fatalf("parse: %+v %v", got, ok)
	}
	// A guest with a shared image in its page cache and a NIC adds their counters.
	o.Cache, o.CacheVerified, o.CachePass, o.Net, o.NetSent, o.NetRecv = true, 512, 3, true, 90, 88
	line = string(o.Append(nil))
	if line != "ok seq=12 t=1700000000123 gen=99 dirtied=3 verified=800 pass=4 bad=1 dwrites=40 dverified=128 dpass=2 "+
		"cverified=512 cpass=3 nsent=90 nrecv=88" {
		t.Fatalf("format: %q", line)
	}
	if got, ok := ParseOK(line); !ok || got != o {
		t.Fatalf("parse: %+v %v", got, ok)
	}
	d.On = OnCache
	if got, ok := ParseBad(string(d.Append(nil))); !ok || got != d {
		t.Fatalf("parse: %+v %v", got, ok)
	}
}

func TestRejects(t *testing.T) {
	for _, l := range []string{
		"", "ok", "ok seq=x t=1 gen=1 dirtied=1 verified=1 pass=1 bad=0", "ok seq=1 t=1 gen=1 dirtied=1",
		"ok seq=1 t=1 gen=1 dirtied=1 verified=1 pass=1 bad=0 junk", "BAD page=1 reason= got=0x1 want=0x2",
		"ok seq=1 t=1 gen=1 dirtied=1 verified=1 pass=1 bad=0" + strings.Repeat(" x=1", MaxLine),
		"ok seq=1 t=1 gen=1 dirtied=1 verified=1 pass=1 bad=0 dwrites=1 dverified=2",
		"ok seq=1 t=1 gen=1 dirtied=1 verified=1 pass=1 bad=0 dwrites=1 dverified=2 dpass=x",
		"ok seq=1 t=1 gen=1 dirtied=1 verified=1 pass=1 bad=0 cverified=1",
		"ok seq=1 t=1 gen=1 dirtied=1 verified=1 pass=1 bad=0 nsent=1",
		"ok seq=1 t=1 gen=1 dirtied=1 verified=1 pass=1 bad=0 nsent=1 nrecv=-1",
	} {
		if _, ok := ParseOK(l); ok {
			t.Errorf("ParseOK accepted %q", l)
		}
		if _, ok := ParseBad(l); ok {
			t.Errorf("ParseBad accepted %q", l)
		}
	}
}

func TestSummarize(t *testing.T) {
	log := strings.Join([]string{
		"[    1.0] some kernel line",
		ReadyMarker,
		"ready wss=1048576 pages=256 rate=10 pattern=seq seed=1 private=0 period=100ms",
		string(OK{Seq: 1, UnixMilli: 1000}.Append(nil)),
		string(OK{Seq: 2, UnixMilli: 1100}.Append(nil)),
		string(Bad{Page: 3, Reason: "gen", Got: 1, Want: 2}.Append(nil)),
		string(OK{Seq: 4, UnixMilli: 1600, Bad: 1}.Append(nil)),
		ExitedMarker + " rc=1",
	}, "\r\n")
	s, err := Summarize(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	if !s.Ready || !s.Exited || s.OKs != 3 || s.First.Seq != 1 || s.Last.Seq != 4 || len(s.Bad) != 1 ||
		s.Bad[0].Page != 3 || s.MaxGap != 500*time.Millisecond || s.SeqBreaks != 1 {
		t.Fatalf("summary: %+v", s)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(string(OK{Seq: 1, UnixMilli: 2, Gen: 3}.Append(nil)))
	f.Add(string(Bad{Page: 1, Reason: "sum", Got: 2, Want: 3}.Append(nil)))
	f.Fuzz(func(t *testing.T, line string) {
		if o, ok := ParseOK(line); ok {
			if again, ok := ParseOK(string(o.Append(nil))); !ok || again != o {
				t.Fatalf("ok round trip: %+v -> %+v", o, again)
			}
		}
		if d, ok := ParseBad(line); ok && !strings.ContainsAny(d.Reason+d.On, " =") {
			if again, ok := ParseBad(string(d.Append(nil))); !ok || again != d {
				t.Fatalf("bad round trip: %+v -> %+v", d, again)
			}
		}
	})
}
