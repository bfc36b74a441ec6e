package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestSendDomainsUsage: --vms or --domains, exactly one; libvirt's flags only with --domains; a malformed
// --target-connect is a usage error. None of these reaches a libvirtd.
func TestSendDomainsUsage(t *testing.T) {
	key := filepath.Join(t.TempDir(), "key")
	if code, _, errs := run("keygen", "--out", key); code != ExitOK {
		t.Fatalf("keygen: %d %s", code, errs)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--targets", "h:1"}, "--domains"},
		{[]string{"--vms", "a=/x", "--domains", "a", "--targets", "h:1"}, "exclude each other"},
		{[]string{"--vms", "a=/x", "--connect", "qemu:///system", "--targets", "h:1"}, "--connect goes with --domains"},
		{[]string{"--domains", "a", "--target-connect", "h:1", "--targets", "h:1"}, "NAME=VALUE"},
	} {
		code, _, errs := run(append([]string{"send", "--key-file", key}, c.args...)...)
		if code != ExitUsage || !strings.Contains(errs, c.want) {
			t.Errorf("%v: exit %d, %s; want %d and %q", c.args, code, errs, ExitUsage, c.want)
		}
	}
}
