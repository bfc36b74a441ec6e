// Package guestlog is the line format the guest workload prints on its serial console, and its parser for hosts.
//
// Lines, one per write, fields separated by single spaces, numbers in decimal (got and want in hex with 0x):
//
//	vmscatter-guest: ready                                        (the init script, before the workload starts)
//	ready wss=<bytes> pages=<n> rate=<pages/s> pattern=<seq|random> seed=<n> salt=<n> private=<fraction> period=<duration> [disk=<device> dblocks=<n> drate=<blocks/s>] [cache=<device> cbytes=<bytes>] [ip=<addr/bits> peer=<addr:port>]
//	ok seq=<n> t=<unix ms> gen=<total dirty writes> dirtied=<since last line> verified=<since last line> pass=<full verify passes> bad=<total> [dwrites=<total disk block writes> dverified=<since last line> dpass=<full disk verify passes>] [cverified=<since last line> cpass=<full cache verify passes>] [nsent=<total datagrams> nrecv=<total echoes>]
//	BAD page=<i> reason=<magic|index|gen|sum|io> got=<0x..> want=<0x..> [on=disk|cache]
//	vmscatter-guest: workload exited rc=<n>                       (the init script, if the workload ends)
//
// The bracketed parts are there when the guest has a disk (the workload's -disk): it writes blocks of its disk and
// reads them back, as it does with its memory pages, and a block that does not hold what it last wrote is a BAD line
// with on=disk, whose page is the block's index (reason io: the read or write failed). The c fields are there when the
// guest keeps a shared image in its page cache (the workload's -cache): it reads every block again through the page
// cache and checks it against the sum it noted when it first read it (BAD lines with on=cache). The n fields are
// there when the guest has a NIC (the workload's -peer): UDP datagrams sent to the peer, and echoes received. bad
// counts every failure.
//
// `t` is the guest's wall clock. A stopped guest's clock stops too (QEMU pauses the virtual clock), so gaps between
// `t` values show what the guest lost while running, not the downtime: hosts measure downtime by timestamping lines as
// they arrive. Parsers skip anything before the keyword, because kernel messages can share a console line.
package guestlog

import (
	"bufio"
	"io"
	"strconv"
	"strings"
	"time"
)

// Markers the init script prints.
const (
	ReadyMarker  = "vmscatter-guest: ready"
	ExitedMarker = "vmscatter-guest: workload exited"
)

// MaxLine bounds the length of a line a parser accepts; longer lines are skipped.
const MaxLine = 4096

// OK is one progress line.
type OK struct {
	Seq       uint64
	UnixMilli int64 // guest wall clock
	Gen       uint64
	Dirtied   uint64
	Verified  uint64
	Pass      uint64
	Bad       uint64 // memory and disk
	// Disk says the guest has a disk and the disk fields are on the line.
	Disk         bool
	DiskWrites   uint64 // block writes since start
	DiskVerified uint64 // blocks read back and checked since the last line
	DiskPass     uint64 // full passes over the disk's blocks
	// Cache says the guest keeps a shared image in its page cache and the cache fields are on the line.
	Cache         bool
	CacheVerified uint64 // blocks read back through the page cache and checked since the last line
	CachePass     uint64 // full passes over the cached blocks
	// Net says the guest has a NIC and the net fields are on the line.
	Net     bool
	NetSent uint64 // datagrams sent to the peer since start
	NetRecv uint64 // echoes received since start
}

// Time returns the guest wall-clock time of the line.
func (o OK) Time() time.Time { return time.UnixMilli(o.UnixMilli) }

// Append appends the line, without newline, to b.
func (o OK) Append(b []byte) []byte {
	b = append(b, "ok seq="...)
	b = strconv.AppendUint(b, o.Seq, 10)
	b = append(b, " t="...)
	b = strconv.AppendInt(b, o.UnixMilli, 10)
	b = appendFields(b, []field{{"gen", o.Gen}, {"dirtied", o.Dirtied}, {"verified", o.Verified}, {"pass", o.Pass}, {"bad", o.Bad}})
	if o.Disk {
		b = appendFields(b, []field{{"dwrites", o.DiskWrites}, {"dverified", o.DiskVerified}, {"dpass", o.DiskPass}})
	}
	if o.Cache {
		b = appendFields(b, []field{{"cverified", o.CacheVerified}, {"cpass", o.CachePass}})
	}
	if o.Net {
		b = appendFields(b, []field{{"nsent", o.NetSent}, {"nrecv", o.NetRecv}})
	}
	return b
}

// field is one " name=value" of a line.
type field struct {
	name  string
	value uint64
}

// appendFields appends " name=value" for each field.
func appendFields(b []byte, fs []field) []byte {
	for _, f := range fs {
		b = append(b, ' ')
		b = append(b, f.name...)
		b = append(b, '=')
		b = strconv.AppendUint(b, f.value, 10)
	}
	return b
}

// Bad is one verification failure.
type Bad struct {
	Page   uint64 // a memory page, or a disk block when On is OnDisk
	Reason string
	Got    uint64
	Want   uint64
	On     string // "" for memory, OnDisk for the disk, OnCache for the page cache
}

// OnDisk is Bad.On for a failure of the guest's disk, OnCache for a block of the shared image in its page cache.
const (
	OnDisk  = "disk"
	OnCache = "cache"
)

// Append appends the line, without newline, to b.
func (d Bad) Append(b []byte) []byte {
	b = append(b, "BAD page="...)
	b = strconv.AppendUint(b, d.Page, 10)
	b = append(b, " reason="...)
	b = append(b, d.Reason...)
	b = append(b, " got=0x"...)
	b = strconv.AppendUint(b, d.Got, 16)
	b = append(b, " want=0x"...)
	b = strconv.AppendUint(b, d.Want, 16)
	if d.On != "" {
		b = append(b, " on="...)
		b = append(b, d.On...)
	}
	return b
}

// fields returns the key=value pairs of line that follow keyword, or false if keyword and then first are absent.
func fields(line, keyword, first string) (map[string]string, bool) {
	if len(line) > MaxLine {
		return nil, false
	}
	i := strings.Index(line, keyword+first)
	if i < 0 {
		return nil, false
	}
	m := map[string]string{}
	for _, f := range strings.Fields(line[i+len(keyword):]) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return nil, false
		}
		m[k] = v
	}
	return m, true
}

func num(m map[string]string, k string, base int, ok *bool) uint64 {
	v := m[k]
	if base == 16 {
		v = strings.TrimPrefix(v, "0x")
	}
	n, err := strconv.ParseUint(v, base, 64)
	if err != nil {
		*ok = false
	}
	return n
}

// ParseOK parses a progress line. It returns false for any other or malformed line.
func ParseOK(line string) (OK, bool) {
	m, ok := fields(line, "ok ", "seq=")
	if !ok {
		return OK{}, false
	}
	o := OK{
		Seq:      num(m, "seq", 10, &ok),
		Gen:      num(m, "gen", 10, &ok),
		Dirtied:  num(m, "dirtied", 10, &ok),
		Verified: num(m, "verified", 10, &ok),
		Pass:     num(m, "pass", 10, &ok),
		Bad:      num(m, "bad", 10, &ok),
	}
	t, err := strconv.ParseInt(m["t"], 10, 64)
	if err != nil {
		return OK{}, false
	}
	o.UnixMilli = t
	_, w := m["dwrites"]
	_, v := m["dverified"]
	_, p := m["dpass"]
	switch {
	case w && v && p:
		o.Disk = true
		o.DiskWrites, o.DiskVerified, o.DiskPass = num(m, "dwrites", 10, &ok), num(m, "dverified", 10, &ok), num(m, "dpass", 10, &ok)
	case w || v || p:
		return OK{}, false
	}
	_, cv := m["cverified"]
	_, cp := m["cpass"]
	switch {
	case cv && cp:
		o.Cache = true
		o.CacheVerified, o.CachePass = num(m, "cverified", 10, &ok), num(m, "cpass", 10, &ok)
	case cv || cp:
		return OK{}, false
	}
	_, ns := m["nsent"]
	_, nr := m["nrecv"]
	switch {
	case ns && nr:
		o.Net = true
		o.NetSent, o.NetRecv = num(m, "nsent", 10, &ok), num(m, "nrecv", 10, &ok)
	case ns || nr:
		return OK{}, false
	}
	return o, ok
}

// ParseBad parses a verification failure line. It returns false for any other or malformed line.
func ParseBad(line string) (Bad, bool) {
	m, ok := fields(line, "BAD ", "page=")
	if !ok {
		return Bad{}, false
	}
	d := Bad{Page: num(m, "page", 10, &ok), Reason: m["reason"], Got: num(m, "got", 16, &ok), Want: num(m, "want", 16, &ok),
		On: m["on"]}
	if d.Reason == "" {
		ok = false
	}
	return d, ok
}

// Summary condenses a guest's console log.
type Summary struct {
	Ready  bool  // the init script's ready marker was seen
	Exited bool  // the workload ended (it should run forever)
	OKs    int   // progress lines
	First  OK    // first progress line
	Last   OK    // last progress line
	Bad    []Bad // verification failures, at most MaxBad kept
	// MaxGap is the longest step in guest time between consecutive progress lines (see the package doc on what
	// guest time does not show).
	MaxGap time.Duration
	// SeqBreaks counts progress lines whose seq is not the previous seq + 1 (a lost or reordered line).
	SeqBreaks int
}

// MaxBad bounds the failures a Summary keeps.
const MaxBad = 100

// Summarize reads a console log to its end.
func Summarize(r io.Reader) (Summary, error) {
	var s Summary
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), MaxLine)
	for sc.Scan() {
		s.Add(sc.Text())
	}
	if err := sc.Err(); err != nil && err != bufio.ErrTooLong {
		return s, err
	}
	return s, nil
}

// Add accounts for one line.
func (s *Summary) Add(line string) {
	switch {
	case strings.Contains(line, ReadyMarker):
		s.Ready = true
	case strings.Contains(line, ExitedMarker):
		s.Exited = true
	}
	if o, ok := ParseOK(line); ok {
		if s.OKs == 0 {
			s.First = o
		} else {
			if o.Seq != s.Last.Seq+1 {
				s.SeqBreaks++
			}
			if gap := time.Duration(o.UnixMilli-s.Last.UnixMilli) * time.Millisecond; gap > s.MaxGap {
				s.MaxGap = gap
			}
		}
		s.Last = o
		s.OKs++
		return
	}
	if d, ok := ParseBad(line); ok && len(s.Bad) < MaxBad {
		s.Bad = append(s.Bad, d)
	}
}
