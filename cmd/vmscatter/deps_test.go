package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoLabInTheOperatorBinary checks that vmscatter, the binary installed on every host, carries none of the lab:
// the namespace lab, tc shaping, the guest fixture and its initramfs builder live under bench and are
// vmscatter-lab's; qemu/qemutest holds the tests' QEMU helpers.
func TestNoLabInTheOperatorBinary(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go is not on PATH: cannot list the command's dependencies")
	}
	out, err := exec.Command(goTool, "list", "-deps", ".").Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go list -deps: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list -deps: %v", err)
	}
	const mod = "github.com/vmscatter/vmscatter/"
	forbidden := []string{mod + "bench", mod + "qemu/qemutest", mod + "cmd/vmscatter-lab"}
	deps := strings.Fields(string(out))
	if len(deps) == 0 || deps[len(deps)-1] != mod+"cmd/vmscatter" {
		t.Fatalf("go list -deps printed no dependency list ending in cmd/vmscatter:\n%s", out)
	}
	for _, p := range deps {
		for _, f := range forbidden {
			if p == f || strings.HasPrefix(p, f+"/") {
				t.Errorf("cmd/vmscatter depends on %s: the operator binary must not carry the lab (it belongs in cmd/vmscatter-lab)", p)
			}
		}
	}
}
