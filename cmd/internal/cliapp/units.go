package cliapp

import (
	"fmt"
	"strings"
)

// ParseSize parses a byte count with an optional K, M, G or T suffix (powers of 1024).
func ParseSize(s string) (int64, error) {
	s = strings.TrimSpace(strings.TrimSuffix(strings.TrimSuffix(s, "iB"), "B"))
	mult := int64(1)
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'k', 'K':
			mult, s = 1<<10, s[:n-1]
		case 'm', 'M':
			mult, s = 1<<20, s[:n-1]
		case 'g', 'G':
			mult, s = 1<<30, s[:n-1]
		case 't', 'T':
			mult, s = 1<<40, s[:n-1]
		}
	}
	var v float64
	if _, err := fmt.Sscanf(s, "%g", &v); err != nil || v < 0 {
		return 0, fmt.Errorf("%q is not a size (e.g. 512M, 4G)", s)
	}
	return int64(v * float64(mult)), nil
}

// ParseRate parses a bit rate with an optional k, M or G suffix (powers of 1000, as link rates are quoted).
func ParseRate(s string) (int64, error) {
	s = strings.TrimSuffix(strings.TrimSuffix(strings.TrimSpace(s), "bit/s"), "bps")
	mult := 1.0
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'k', 'K':
			mult, s = 1e3, s[:n-1]
		case 'm', 'M':
			mult, s = 1e6, s[:n-1]
		case 'g', 'G':
			mult, s = 1e9, s[:n-1]
		}
	}
	var v float64
	if _, err := fmt.Sscanf(s, "%g", &v); err != nil || v <= 0 {
		return 0, fmt.Errorf("%q is not a rate (e.g. 100M, 1G)", s)
	}
	return int64(v * mult), nil
}
