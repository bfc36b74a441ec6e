package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscatter/vmscatter/cmd/internal/cliapp"
)

// run runs the command line in-process and returns its exit code and output. Every command line here fails or
// prints help before the lab builds anything: the tests need no root and boot no guest.
func run(args ...string) (int, string, string) { return cliapp.RunCaptured(newApp, args...) }

func TestHelp(t *testing.T) {
	code, out, _ := run("--help")
	for _, want := range []string{"demo", "bench", "EXIT CODES", "not this one", "--vmscatter"} {
		if code != ExitOK || !strings.Contains(out, want) {
			t.Fatalf("help: exit %d, no %q in\n%s", code, want, out)
		}
	}
	// The flags of demo and bench as they were in the vmscatter binary, and --vmscatter.
	for cmd, flags := range map[string][]string{
		"demo": {"guests", "targets", "memory", "dir", "vmscatter"},
		"bench": {"guests", "memory", "targets", "uplink", "settle", "dirty-rate", "quick", "policies", "scale", "images",
			"boot-files", "deadline", "rates", "only", "out", "send-arg", "vmscatter", "replot"},
	} {
		code, out, _ := run(cmd, "--help")
		for _, f := range flags {
			if code != ExitOK || !strings.Contains(out, "--"+f+" ") {
				t.Errorf("%s --help: exit %d, no --%s in\n%s", cmd, code, f, out)
			}
		}
	}
}

func TestUsageAndErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"no-such-command"}, ExitUsage, "no-such-command"},
		{[]string{"send"}, ExitUsage, "send"}, // the operator's commands are vmscatter's
		{[]string{"bench", "--no-such-flag"}, ExitUsage, "no-such-flag"},
		{[]string{"bench", "--uplink", "fast"}, ExitUsage, "--uplink"},
		{[]string{"bench", "--replot", filepath.Join(t.TempDir(), "none")}, ExitError, "vmscatter-lab:"},
		{[]string{"bench", "--policies", "--replot", filepath.Join(t.TempDir(), "none")}, ExitError, "vmscatter-lab:"},
		{[]string{"demo", "--vmscatter", filepath.Join(t.TempDir(), "none")}, ExitError, "--vmscatter"},
		{[]string{"bench", "--vmscatter", t.TempDir()}, ExitError, "--vmscatter"},
	} {
		if code, _, errs := run(tc.args...); code != tc.code || !strings.Contains(errs, tc.msg) {
			t.Errorf("%q: exit %d, %s; want exit %d and %q", tc.args, code, errs, tc.code, tc.msg)
		}
	}
}

func TestFindVmscatter(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "vmscatter")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := findVmscatter("", dir); err != nil || got != bin {
		t.Errorf("next to vmscatter-lab: %q, %v; want %q", got, err, bin)
	}
	t.Chdir(dir)
	if got, err := findVmscatter("./vmscatter", t.TempDir()); err != nil || got != bin {
		t.Errorf("--vmscatter ./vmscatter: %q, %v; want the absolute %q", got, err, bin)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := findVmscatter(plain, dir); err == nil {
		t.Error("--vmscatter accepted a file that is not executable")
	}
	t.Setenv("PATH", dir)
	if got, err := findVmscatter("", t.TempDir()); err != nil || got != bin {
		t.Errorf("on PATH: %q, %v; want %q", got, err, bin)
	}
	t.Setenv("PATH", "")
	if _, err := findVmscatter("", t.TempDir()); err == nil || !strings.Contains(err.Error(), "make build") {
		t.Errorf("none anywhere: %v", err)
	}
}
