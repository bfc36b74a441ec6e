// Package qemutest finds the QEMU binaries that tests run against. It is for tests only: it imports testing.
package qemutest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/qemu/qmp"
)

// Require returns the path of qemu-system-x86_64, or skips the test with a reason when QEMU is not installed.
func Require(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed (make deps installs it)")
	}
	return bin
}

// Versions are the QEMU versions tests can run, oldest first: 7.2 is the system's qemu-system-x86_64 (Debian
// bookworm), the others are Debian builds that scripts/fetch-qemu.sh unpacks into a cache (Binary).
var Versions = []string{"7.2", "10.0", "11.1"}

// SystemVersion is the version of the system's QEMU that Require finds.
const SystemVersion = "7.2"

// NoFetchEnv, when set to anything but "", keeps Binary from running scripts/fetch-qemu.sh: a version that is not
// in the cache is skipped.
const NoFetchEnv = "VMSCATTER_NO_FETCH"

// fetchTimeout bounds one run of scripts/fetch-qemu.sh (about 5 s for 10.0 and 15 s for 11.1 on a fast mirror).
const fetchTimeout = 10 * time.Minute

// Binary returns a qemu-system-x86_64 of QEMU version ("7.2", "10.0" or "11.1", as in Versions), or skips the test
// with the reason. 7.2 is the system's binary (Require). The others are the wrappers that scripts/fetch-qemu.sh
// leaves in ${XDG_CACHE_HOME:-~/.cache}/vmscatter/qemu/VERSION/; when one is missing, Binary runs the script (once:
// it is idempotent and locked), except under -short or with $VMSCATTER_NO_FETCH set. A wrapper execs QEMU, so the
// PID of the started process is QEMU's. Binary checks that the binary reports the version it was asked for.
func Binary(t testing.TB, version string) string {
	t.Helper()
	var bin string
	if version == SystemVersion {
		bin = Require(t)
	} else {
		if !knownVersion(version) {
			t.Fatalf("qemutest.Binary: QEMU %q is not one of %v", version, Versions)
		}
		dir, err := CacheDir(version)
		if err != nil {
			t.Skipf("QEMU %s: %v", version, err)
		}
		bin = filepath.Join(dir, "qemu-system-x86_64")
		if !fetched(dir) {
			switch {
			case testing.Short():
				t.Skipf("QEMU %s is not fetched and -short is set (run scripts/fetch-qemu.sh %s)", version, version)
			case os.Getenv(NoFetchEnv) != "":
				t.Skipf("QEMU %s is not fetched and $%s is set (run scripts/fetch-qemu.sh %s)", version, NoFetchEnv, version)
			}
			if err := fetch(t, version); err != nil {
				t.Skipf("QEMU %s is unavailable: %v", version, err)
			}
		}
	}
	got, err := Version(bin)
	if err != nil {
		t.Skipf("QEMU %s: %v", version, err)
	}
	if got != version && !strings.HasPrefix(got, version+".") {
		t.Skipf("QEMU %s wanted, %s is QEMU %s", version, bin, got)
	}
	return bin
}

func knownVersion(v string) bool {
	for _, k := range Versions {
		if k == v {
			return true
		}
	}
	return false
}

// CacheDir is where scripts/fetch-qemu.sh puts QEMU version: ${XDG_CACHE_HOME:-$HOME/.cache}/vmscatter/qemu/VERSION.
func CacheDir(version string) (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory: %w", err)
	}
	return filepath.Join(base, "vmscatter", "qemu", version), nil
}

// fetched reports whether the script finished in dir: it writes the stamp last.
func fetched(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "stamp"))
	return err == nil
}

// fetch runs scripts/fetch-qemu.sh version, logging what it prints.
func fetch(t testing.TB, version string) error {
	t.Helper()
	script, err := FetchScript()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, "sh", script, version).CombinedOutput()
	t.Logf("sh %s %s (%.1f s):\n%s", script, version, time.Since(start).Seconds(), bytes.TrimSpace(out))
	if err != nil {
		return fmt.Errorf("scripts/fetch-qemu.sh %s: %w", version, err)
	}
	dir, err := CacheDir(version)
	if err != nil {
		return err
	}
	if !fetched(dir) {
		return fmt.Errorf("scripts/fetch-qemu.sh %s left no stamp in %s", version, dir)
	}
	return nil
}

// FetchScript finds scripts/fetch-qemu.sh of this source tree: from this file's compile-time path, else upward from
// the working directory (go test runs in the package's directory).
func FetchScript() (string, error) {
	var starts []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	for _, dir := range starts {
		for {
			if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
				bytes.Contains(b, []byte("module github.com/vmscatter/vmscatter\n")) {
				script := filepath.Join(dir, "scripts", "fetch-qemu.sh")
				if _, err := os.Stat(script); err != nil {
					return "", err
				}
				return script, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", errors.New("scripts/fetch-qemu.sh not found: the vmscatter source tree is not above this test")
}

var versionRE = regexp.MustCompile(`(?m)^QEMU emulator version ([0-9]+\.[0-9]+(?:\.[0-9]+)?)`)

// Version runs `bin --version` and returns QEMU's version, e.g. "7.2.22" or "10.0.2".
func Version(bin string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w: %s", bin, err, bytes.TrimSpace(out))
	}
	return parseVersion(out)
}

func parseVersion(out []byte) (string, error) {
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("no version in %q", out)
	}
	return string(m[1]), nil
}

// DialWhenReady connects to a QMP socket that a QEMU just started is about to create, failing the test when ctx
// ends first.
func DialWhenReady(ctx context.Context, t testing.TB, sock string) *qmp.Client {
	t.Helper()
	for {
		if _, err := os.Stat(sock); err == nil {
			q, err := qmp.Dial(ctx, sock)
			if err == nil {
				return q
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("QMP socket %s never answered", sock)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ReadFile reads a file or fails the test.
func ReadFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
