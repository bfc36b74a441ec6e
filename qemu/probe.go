package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/vmscatter/vmscatter/qemu/qmp"
)

// Binary is what a QEMU binary says of itself, without starting a VM: its version (--version) and the machine types
// it can run (-machine help).
type Binary struct {
	Path     string
	Version  qmp.Version
	Machines []string // the concrete machine types, e.g. "pc-i440fx-7.2"; aliases such as "pc" are left out
}

// Probe runs the QEMU binary at path twice, with --version and with -machine help (each starts and exits at once,
// about 15 ms), and returns what it says.
func Probe(ctx context.Context, path string) (Binary, error) {
	run := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		cmd := exec.CommandContext(ctx, path, args...)
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("%s %s: %w: %s", path, strings.Join(args, " "), err, strings.TrimSpace(lastLines(errOut.String(), 3)))
		}
		return out.String(), nil
	}
	b := Binary{Path: path}
	out, err := run("--version")
	if err != nil {
		return b, err
	}
	if b.Version, err = parseVersionOutput(out); err != nil {
		return b, fmt.Errorf("%s --version: %w", path, err)
	}
	if out, err = run("-machine", "help"); err != nil {
		return b, err
	}
	if b.Machines, err = parseMachineHelp(out); err != nil {
		return b, fmt.Errorf("%s -machine help: %w", path, err)
	}
	return b, nil
}

// versionLine is the first line of `qemu-system-* --version`: "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)",
// the part in parentheses (the distribution's build) being optional.
var versionLine = regexp.MustCompile(`^QEMU emulator version (\d+\.\d+\.\d+)(?: \((.*)\))?\s*$`)

// parseVersionOutput reads the version from the output of --version.
func parseVersionOutput(out string) (qmp.Version, error) {
	first, _, _ := strings.Cut(out, "\n")
	m := versionLine.FindStringSubmatch(strings.TrimSpace(first))
	if m == nil {
		return qmp.Version{}, fmt.Errorf("no QEMU version in %q", first)
	}
	v, err := ParseVersion(m[1])
	v.Package = m[2]
	return v, err
}

// ParseVersion reads a QEMU version written as MAJOR.MINOR.MICRO ("7.2.22"), as qmp.Version's String writes it.
func ParseVersion(s string) (qmp.Version, error) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return qmp.Version{}, fmt.Errorf("QEMU version %q is not MAJOR.MINOR.MICRO", s)
	}
	var n [3]int
	for i, p := range parts {
		x, err := strconv.Atoi(p)
		if err != nil || x < 0 {
			return qmp.Version{}, fmt.Errorf("QEMU version %q is not MAJOR.MINOR.MICRO", s)
		}
		n[i] = x
	}
	return qmp.Version{Major: n[0], Minor: n[1], Micro: n[2]}, nil
}

// parseMachineHelp reads the machine types from the output of -machine help: a header line, then one line per type,
// "NAME<spaces>DESCRIPTION", where an alias's description ends in "(alias of CONCRETE)". Aliases are left out.
func parseMachineHelp(out string) ([]string, error) {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "Supported machines are") {
		return nil, errors.New("no \"Supported machines are:\" header")
	}
	var names []string
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if strings.Contains(l, "(alias of ") {
			continue
		}
		names = append(names, f[0])
	}
	if len(names) == 0 {
		return nil, errors.New("no machine types")
	}
	return names, nil
}

// IsQEMUBinary reports whether path names a qemu-system binary (qemu-system-ARCH, or qemu-kvm as some distributions
// call it), the only programs a receiver starts or probes on a sender's word.
func IsQEMUBinary(path string) bool {
	base := filepath.Base(path)
	return strings.HasPrefix(base, "qemu-system-") || strings.HasPrefix(base, "qemu-kvm")
}
