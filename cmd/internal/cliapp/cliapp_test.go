package cliapp

import (
	"bytes"
	"errors"
	"testing"
)

func TestParseSizeAndRate(t *testing.T) {
	for s, want := range map[string]int64{"4096": 4096, "512M": 512 << 20, "4G": 4 << 30, "1.5K": 1536, "2GiB": 2 << 30, "1T": 1 << 40} {
		if got, err := ParseSize(s); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for s, want := range map[string]int64{"1G": 1e9, "100M": 100e6, "200k": 200e3, "1Gbit/s": 1e9, "10Mbps": 10e6} {
		if got, err := ParseRate(s); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "x", "-1G"} {
		if _, err := ParseSize(s); err == nil {
			t.Errorf("ParseSize(%q): no error", s)
		}
	}
	for _, s := range []string{"", "fast", "0", "-1M"} {
		if _, err := ParseRate(s); err == nil {
			t.Errorf("ParseRate(%q): no error", s)
		}
	}
}

func TestCode(t *testing.T) {
	var errb bytes.Buffer
	for _, tc := range []struct {
		err  error
		code int
		msg  string
	}{
		{nil, ExitOK, ""},
		{WithCode(3, errors.New("rolled back")), 3, "prog: rolled back\n"},
		{UsageError("--x: %v", "bad"), ExitUsage, "prog: --x: bad\n"},
		{errors.New(`Required flag "key-file" not set`), ExitUsage, "prog: Required flag \"key-file\" not set (see --help)\n"},
		{errors.New("boom"), ExitError, "prog: boom\n"},
	} {
		errb.Reset()
		if code := Code("prog", tc.err, &errb); code != tc.code || errb.String() != tc.msg {
			t.Errorf("Code(%v) = %d, %q; want %d, %q", tc.err, code, errb.String(), tc.code, tc.msg)
		}
	}
}
