package plot

import (
	"strings"
	"testing"
)

func TestLinearTicks(t *testing.T) {
	for _, tc := range []struct {
		min, max float64
		want     string
	}{
		{0, 1, "0 0.2 0.4 0.6 0.8 1.0"},
		{0, 47, "0 10 20 30 40 50"},
		{0, 0.3, "0 0.05 0.10 0.15 0.20 0.25 0.30"},
		{100, 1000, "0 200 400 600 800 1000"},
		{0, 10.1, "0 2 4 6 8 10 12"},
		{0, 1.6e9, "0 0.5G 1.0G 1.5G 2.0G"},
		{0, 12345, "0 5k 10k 15k"},
		{-5, 10, "-5 0 5 10"},
		{0.5, 0.9, "0.5 0.6 0.7 0.8 0.9"},
		{7, 7, "6.0 6.5 7.0 7.5 8.0"},
		{0, 0, "0 0.2 0.4 0.6 0.8 1.0"},
	} {
		s := linearScale(tc.min, tc.max)
		var got []string
		for _, v := range s.ticks {
			got = append(got, s.label(v))
		}
		if g := strings.Join(got, " "); g != tc.want {
			t.Errorf("linearScale(%v, %v) ticks %q, want %q", tc.min, tc.max, g, tc.want)
		}
		if s.lo > tc.min || s.hi < tc.max {
			t.Errorf("linearScale(%v, %v) covers only [%v, %v]", tc.min, tc.max, s.lo, s.hi)
		}
	}
}

func TestLogTicks(t *testing.T) {
	for _, tc := range []struct {
		min, max float64
		bars     bool
		want     string
	}{
		{1, 1000, false, "1 10 100 1000"},
		{1, 1000, true, "0.1 1 10 100 1000"},
		{3, 7, false, "1 10"},
		{0.002, 45000, false, "0.001 0.01 0.1 1 10 100 1000 10k 100k"},
		{1e-30, 1e30, false, "1e-30 1e-22 1e-14 1e-6 100 10G 1e18 1e26 1e34"},
	} {
		s := logScale(tc.min, tc.max, tc.bars)
		var got []string
		for _, v := range s.ticks {
			got = append(got, s.label(v))
		}
		if g := strings.Join(got, " "); g != tc.want {
			t.Errorf("logScale(%v, %v) ticks %q, want %q", tc.min, tc.max, g, tc.want)
		}
	}
}

func TestCompact(t *testing.T) {
	for v, want := range map[float64]string{
		0: "0", 1: "1", 12.345: "12.3", 0.01234: "0.0123", 1234.7: "1235", 12345: "12.3k",
		999999: "1M", 2.5e9: "2.5G", -4200: "-4200", 1e-5: "1.00e-05", 3e22: "3.00e+22",
	} {
		if got := compact(v); got != want {
			t.Errorf("compact(%v) = %q, want %q", v, got, want)
		}
	}
}
