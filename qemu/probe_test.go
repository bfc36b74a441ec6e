package qemu

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/qemu/qemutest"
	"github.com/vmscatter/vmscatter/qemu/qmp"
)

// The outputs in testdata are Debian's builds of QEMU 7.2.22 (bookworm), 10.0.2 (bookworm-backports) and 11.1.3
// (trixie-backports), captured as they print them.
func TestParseVersionOutput(t *testing.T) {
	for _, c := range []struct {
		file string
		want qmp.Version
	}{
		{"testdata/version-7.2.txt", qmp.Version{Major: 7, Minor: 2, Micro: 22, Package: "Debian 1:7.2+dfsg-7+deb12u18+b3"}},
		{"testdata/version-10.0.txt", qmp.Version{Major: 10, Minor: 0, Micro: 2, Package: "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}},
		{"testdata/version-11.1.txt", qmp.Version{Major: 11, Minor: 1, Micro: 3, Package: "Debian 1:11.1.3+ds-2~bpo13+1"}},
	} {
		got, err := parseVersionOutput(readTestdata(t, c.file))
		if err != nil || got != c.want {
			t.Errorf("%s: %+v, %v; want %+v", c.file, got, err, c.want)
		}
	}
	// An upstream build has no package in parentheses.
	if v, err := parseVersionOutput("QEMU emulator version 9.2.0\nCopyright (c) 2003-2024\n"); err != nil || v.String() != "9.2.0" || v.Package != "" {
		t.Errorf("upstream: %+v, %v", v, err)
	}
	for _, bad := range []string{"", "qemu-img version 7.2.22", "QEMU emulator version 7.2 (x)", "QEMU emulator version 7.2.x"} {
		if v, err := parseVersionOutput(bad); err == nil {
			t.Errorf("%q parsed as %+v", bad, v)
		}
	}
}

func TestParseVersion(t *testing.T) {
	if v, err := ParseVersion("11.1.3"); err != nil || v != (qmp.Version{Major: 11, Minor: 1, Micro: 3}) {
		t.Errorf("11.1.3: %+v, %v", v, err)
	}
	for _, bad := range []string{"", "7.2", "7.2.22.1", "7.-2.1", "a.b.c", "7.2.22 "} {
		if v, err := ParseVersion(bad); err == nil {
			t.Errorf("%q parsed as %+v", bad, v)
		}
	}
}

func TestParseMachineHelp(t *testing.T) {
	for _, c := range []struct {
		file       string
		n          int      // concrete types
		has, hasNo []string // some that must be there, and aliases or types that must not
	}{
		{"testdata/machine-help-7.2.txt", 59, []string{"pc-i440fx-7.2", "pc-q35-7.2", "pc-i440fx-1.4", "microvm", "isapc", "none"}, []string{"pc", "q35", "pc-i440fx-8.0"}},
		{"testdata/machine-help-10.0.txt", 65, []string{"pc-i440fx-10.0", "pc-i440fx-7.2", "pc-q35-2.4"}, []string{"pc", "q35"}},
		// 11.1 lists its deprecated types (they still run) and has dropped the oldest.
		{"testdata/machine-help-11.1.txt", 41, []string{"pc-i440fx-11.1", "pc-i440fx-7.2", "pc-q35-10.0", "nitro"}, []string{"pc", "q35", "pc-i440fx-2.12"}},
	} {
		got, err := parseMachineHelp(readTestdata(t, c.file))
		if err != nil {
			t.Errorf("%s: %v", c.file, err)
			continue
		}
		if len(got) != c.n {
			t.Errorf("%s: %d machine types, want %d: %q", c.file, len(got), c.n, got)
		}
		for _, m := range c.has {
			if !slices.Contains(got, m) {
				t.Errorf("%s: no %s in %q", c.file, m, got)
			}
		}
		for _, m := range c.hasNo {
			if slices.Contains(got, m) {
				t.Errorf("%s: %s listed", c.file, m)
			}
		}
	}
	for _, bad := range []string{"", "Supported machines are:\n", "qemu-system-x86_64: -machine foo: unsupported"} {
		if got, err := parseMachineHelp(bad); err == nil {
			t.Errorf("%q parsed as %q", bad, got)
		}
	}
}

func TestIsQEMUBinary(t *testing.T) {
	for path, want := range map[string]bool{"/usr/bin/qemu-system-x86_64": true, "qemu-system-aarch64": true,
		"/usr/libexec/qemu-kvm": true, "/bin/sh": false, "qemu-img": false, "/opt/qemu-system-x86_64/bin/sh": false} {
		if got := IsQEMUBinary(path); got != want {
			t.Errorf("IsQEMUBinary(%q) = %v", path, got)
		}
	}
}

// TestProbeRealQEMU probes the system's QEMU and checks it against what the binary says over QMP.
func TestProbeRealQEMU(t *testing.T) {
	bin := qemutest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, err := Probe(ctx, bin)
	if err != nil {
		t.Fatal(err)
	}
	if b.Path != bin || b.Version.Major < 7 || len(b.Machines) < 10 {
		t.Fatalf("probe: %+v", b)
	}
	if want := fmt.Sprintf("pc-i440fx-%d.%d", b.Version.Major, b.Version.Minor); !slices.Contains(b.Machines, want) || slices.Contains(b.Machines, "pc") {
		t.Errorf("machines of QEMU %s: want %s and no alias in %q", b.Version, want, b.Machines)
	}
	if _, err := Probe(ctx, "/bin/false"); err == nil {
		t.Error("probing /bin/false succeeded")
	}
}

func readTestdata(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
