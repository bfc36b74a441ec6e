package dest

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeQEMU writes a script that answers --version and -machine help as a QEMU of version would.
func fakeQEMU(t *testing.T, dir, name, version string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	script := `#!/bin/sh
case "$1" in
--version) echo "QEMU emulator version ` + version + ` (test)"; echo "Copyright";;
-machine) printf 'Supported machines are:\npc                   Standard PC (alias of pc-i440fx-` + version[:strings.LastIndex(version, ".")] + `)\npc-i440fx-` + version[:strings.LastIndex(version, ".")] + `        Standard PC (default)\npc-i440fx-7.1        Standard PC\n';;
*) exit 1;;
esac
`
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestQEMUInfoFromPATHAndConfigured(t *testing.T) {
	bin := t.TempDir()
	t.Setenv("PATH", bin)
	fakeQEMU(t, bin, "qemu-system-x86_64", "7.2.22")
	log := slog.New(slog.DiscardHandler)
	r := &Receiver{log: log}
	ctx := context.Background()

	infos := r.qemuInfos(ctx, []string{"qemu-system-x86_64", "qemu-system-aarch64", "sh"})
	if len(infos) != 3 {
		t.Fatalf("infos: %+v", infos)
	}
	if i := infos[0]; i.Path != filepath.Join(bin, "qemu-system-x86_64") || i.Version != "7.2.22" || !slices.Equal(i.Machines, []string{"pc-i440fx-7.2", "pc-i440fx-7.1"}) || i.Error != "" {
		t.Errorf("x86_64: %+v", i)
	}
	if i := infos[1]; i.Path != "" || !strings.Contains(i.Error, "not on this host's PATH") || !strings.Contains(i.Error, "--qemu") {
		t.Errorf("aarch64: %+v", i)
	}
	if i := infos[2]; !strings.Contains(i.Error, "not a qemu-system binary") {
		t.Errorf("sh: %+v", i)
	}

	// --qemu: every source binary name runs the configured one.
	other := fakeQEMU(t, t.TempDir(), "qemu-wrapper", "10.0.2")
	r = &Receiver{cfg: Config{QEMU: other}, log: log}
	if err := r.checkQEMU(); err != nil {
		t.Fatal(err)
	}
	if i := r.qemuInfo(ctx, "qemu-system-aarch64"); i.Path != other || i.Version != "10.0.2" {
		t.Errorf("configured: %+v", i)
	}
	argv, err := r.destinationCommandLine([]string{"/usr/bin/qemu-system-x86_64", "-m", "64"}, "/d")
	if err != nil || argv[0] != other {
		t.Errorf("destination argv %q, %v", argv, err)
	}
	if _, err := r.destinationCommandLine([]string{"/bin/sh", "-c", "x"}, "/d"); err == nil {
		t.Error("a non-QEMU source binary was accepted")
	}
	if err := (&Receiver{cfg: Config{QEMU: filepath.Join(bin, "missing")}, log: log}).checkQEMU(); err == nil {
		t.Error("a missing --qemu was accepted")
	}
	if err := (&Receiver{cfg: Config{QEMU: "/bin/true"}, log: log}).checkQEMU(); err == nil {
		t.Error("a --qemu that is no QEMU was accepted")
	}
}

// A binary replaced in place (an upgrade) is probed again; an unchanged one is not.
func TestProbeCacheFollowsTheFile(t *testing.T) {
	dir := t.TempDir()
	path := fakeQEMU(t, dir, "qemu-system-x86_64", "7.2.22")
	var c probeCache
	ctx := context.Background()
	b, err := c.probe(ctx, path)
	if err != nil || b.Version.String() != "7.2.22" {
		t.Fatalf("%+v %v", b, err)
	}
	// Same size and time, other answers: the cache is used.
	st, _ := os.Stat(path)
	fakeQEMU(t, dir, "qemu-system-x86_64", "7.2.23")
	os.Chtimes(path, st.ModTime(), st.ModTime())
	if b, _ := c.probe(ctx, path); b.Version.String() != "7.2.22" {
		t.Errorf("unchanged file probed again: %s", b.Version)
	}
	fakeQEMU(t, dir, "qemu-system-x86_64", "10.0.2")
	os.Chtimes(path, st.ModTime().Add(time.Second), st.ModTime().Add(time.Second))
	if b, _ := c.probe(ctx, path); b.Version.String() != "10.0.2" {
		t.Errorf("upgraded file not probed again: %s", b.Version)
	}
}

// The receiver probes its likely QEMU as it starts, so that a session's INFO answers from the cache.
func TestWarmProbesFillsTheCache(t *testing.T) {
	bin := t.TempDir()
	t.Setenv("PATH", bin)
	path := fakeQEMU(t, bin, "qemu-system-x86_64", "7.2.22")
	r := &Receiver{log: slog.New(slog.DiscardHandler)}
	r.warmProbes(context.Background())
	if p, ok := r.probes.probes[path]; !ok || p.binary.Version.String() != "7.2.22" {
		t.Fatalf("cache after warmProbes: %+v", r.probes.probes)
	}
	// Without a QEMU on PATH it leaves the cache empty, for the session to report.
	t.Setenv("PATH", t.TempDir())
	r = &Receiver{log: slog.New(slog.DiscardHandler)}
	r.warmProbes(context.Background())
	if len(r.probes.probes) != 0 {
		t.Fatalf("cache without a QEMU: %+v", r.probes.probes)
	}
}
