package qemutest

import (
	"strings"
	"testing"
)

func TestParseVersion(t *testing.T) {
	for out, want := range map[string]string{
		"QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard\n": "7.2.22",
		"QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n":                                     "10.0.2",
		"QEMU emulator version 11.1.3 (Debian 1:11.1.3+ds-2~bpo13+1)\n":                                             "11.1.3",
		"QEMU emulator version 9.2.50 (v9.2.0-1234-gdeadbeef)\n":                                                    "9.2.50",
	} {
		got, err := parseVersion([]byte(out))
		if err != nil || got != want {
			t.Errorf("%q: %q, %v; want %q", out, got, err, want)
		}
	}
	if _, err := parseVersion([]byte("qemu-img version 7.2.22\n")); err == nil {
		t.Error("a qemu-img banner parsed")
	}
}

// TestBinaries finds every version's binary (fetching it unless -short) and checks that it reports its version.
func TestBinaries(t *testing.T) {
	for _, v := range Versions {
		t.Run(v, func(t *testing.T) {
			bin := Binary(t, v)
			got, err := Version(bin)
			if err != nil || !strings.HasPrefix(got, v+".") {
				t.Fatalf("%s: version %q, %v", bin, got, err)
			}
			t.Logf("QEMU %s: %s", got, bin)
		})
	}
}

func TestFetchScript(t *testing.T) {
	script, err := FetchScript()
	if err != nil || !strings.HasSuffix(script, "/scripts/fetch-qemu.sh") {
		t.Fatalf("%q, %v", script, err)
	}
}
