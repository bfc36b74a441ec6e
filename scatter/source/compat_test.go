package source

import (
	"slices"
	"strings"
	"testing"

	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

func TestTargetRuns(t *testing.T) {
	const x86 = "qemu-system-x86_64"
	info := func(qs ...wire.QEMUInfo) wire.InfoMsg { return wire.InfoMsg{QEMU: qs} }
	q72 := wire.QEMUInfo{Name: x86, Path: "/usr/bin/" + x86, Version: "7.2.22", Machines: []string{"pc-i440fx-7.2", "pc-q35-7.2", "pc-i440fx-2.0"}}
	q100 := wire.QEMUInfo{Name: x86, Path: "/opt/q10/" + x86, Version: "10.0.2", Machines: []string{"pc-i440fx-10.0", "pc-i440fx-7.2", "pc-q35-7.2"}}
	q111 := wire.QEMUInfo{Name: x86, Path: "/opt/q11/" + x86, Version: "11.1.3", Machines: []string{"pc-i440fx-11.1", "pc-i440fx-10.0", "pc-i440fx-7.2"}}
	v := func(major, minor, micro int) qmp.Version {
		return qmp.Version{Major: major, Minor: minor, Micro: micro}
	}
	for _, c := range []struct {
		name    string
		version qmp.Version
		machine string
		info    wire.InfoMsg
		refused string // "" when the target runs it
	}{
		{"same", v(7, 2, 22), "pc-i440fx-7.2", info(q72), ""},
		{"older micro", v(7, 2, 22), "pc-i440fx-7.2", info(wire.QEMUInfo{Name: x86, Path: "/q", Version: "7.2.5", Machines: q72.Machines}), ""},
		{"7.2 to 10.0", v(7, 2, 22), "pc-i440fx-7.2", info(q100), ""},
		{"7.2 to 11.1", v(7, 2, 22), "pc-i440fx-7.2", info(q111), ""},
		{"type missing", v(7, 2, 22), "pc-q35-7.2", info(q111), "no machine type pc-q35-7.2"},
		{"10.0 to 11.1", v(10, 0, 2), "pc-i440fx-10.0", info(q111), ""},
		{"10.0 to 7.2", v(10, 0, 2), "pc-i440fx-10.0", info(q72), "QEMU 7.2.22 there (/usr/bin/qemu-system-x86_64) is older than the source's"},
		{"11.1 to 10.0", v(11, 1, 3), "pc-i440fx-7.2", info(q100), "older than the source's"},
		{"old type gone", v(7, 2, 22), "pc-i440fx-2.0", info(q111), "QEMU 11.1.3 there (/opt/q11/qemu-system-x86_64) has no machine type pc-i440fx-2.0"},
		{"no answer", v(7, 2, 22), "pc-i440fx-7.2", info(), "does not say which QEMU runs qemu-system-x86_64"},
		{"other name", v(7, 2, 22), "pc-i440fx-7.2", info(wire.QEMUInfo{Name: "qemu-system-aarch64", Version: "7.2.22"}), "does not say"},
		{"none there", v(7, 2, 22), "pc-i440fx-7.2", info(wire.QEMUInfo{Name: x86, Error: "qemu-system-x86_64 is not on this host's PATH"}), "no QEMU for it there: qemu-system-x86_64 is not on"},
		{"bad version", v(7, 2, 22), "pc-i440fx-7.2", info(wire.QEMUInfo{Name: x86, Path: "/q", Version: "7.2", Machines: q72.Machines}), "not MAJOR.MINOR.MICRO"},
	} {
		err := targetRuns(x86, c.version, c.machine, c.info)
		switch {
		case c.refused == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.refused != "" && (err == nil || !strings.Contains(err.Error(), c.refused)):
			t.Errorf("%s: %v, want %q", c.name, err, c.refused)
		}
	}
}

func TestAllowedTargets(t *testing.T) {
	const x86 = "qemu-system-x86_64"
	target := func(addr, version string, machines ...string) *targetConn {
		return &targetConn{addr: addr, info: wire.InfoMsg{QEMU: []wire.QEMUInfo{{Name: x86, Path: "/usr/bin/" + x86, Version: version, Machines: machines}}}}
	}
	old := target("old:7400", "7.2.22", "pc-i440fx-7.2")
	newer := target("new:7400", "11.1.3", "pc-i440fx-11.1", "pc-i440fx-10.0", "pc-i440fx-7.2")
	also := target("also:7400", "10.0.2", "pc-i440fx-10.0", "pc-i440fx-7.2")
	vm := func(version qmp.Version, machine string) *sourceVM {
		return &sourceVM{spec: VMSpec{Name: "web1"}, argv: []string{"/usr/bin/" + x86, "-machine", machine}, qemuVersion: version, machine: machine}
	}
	v72, v100 := qmp.Version{Major: 7, Minor: 2, Micro: 22}, qmp.Version{Major: 10, Minor: 0, Micro: 2}

	// Every target runs it: no restriction.
	if a, err := allowedTargets(vm(v72, "pc-i440fx-7.2"), []*targetConn{old, newer}, ""); err != nil || a != nil {
		t.Errorf("7.2 VM: %q, %v", a, err)
	}
	// Some do: those.
	if a, err := allowedTargets(vm(v100, "pc-i440fx-10.0"), []*targetConn{old, newer, also}, ""); err != nil || !slices.Equal(a, []string{"new:7400", "also:7400"}) {
		t.Errorf("10.0 VM: %q, %v", a, err)
	}
	// None does: the message names the VM, its QEMU and machine type, and each target with its reason.
	_, err := allowedTargets(vm(v100, "pc-i440fx-10.0"), []*targetConn{old}, "")
	if err == nil || !strings.Contains(err.Error(), "VM web1 (QEMU 10.0.2, machine pc-i440fx-10.0) cannot go to old:7400: QEMU 7.2.22 there") {
		t.Errorf("10.0 VM, 7.2 target: %v", err)
	}
	_, err = allowedTargets(vm(qmp.Version{Major: 11, Minor: 1, Micro: 3}, "pc-i440fx-11.1"), []*targetConn{old, also}, "")
	if err == nil || !strings.Contains(err.Error(), "VM web1 (QEMU 11.1.3, machine pc-i440fx-11.1) can go to no target: old:7400: QEMU 7.2.22") ||
		!strings.Contains(err.Error(), "; also:7400: QEMU 10.0.2 there") {
		t.Errorf("11.1 VM: %v", err)
	}
	// Pinned: to a target that runs it, fine (the pin is the restriction); to one that does not, refused.
	if a, err := allowedTargets(vm(v100, "pc-i440fx-10.0"), []*targetConn{old, newer}, "new:7400"); err != nil || a != nil {
		t.Errorf("pinned to new: %q, %v", a, err)
	}
	_, err = allowedTargets(vm(v100, "pc-i440fx-10.0"), []*targetConn{old, newer}, "old:7400")
	if err == nil || !strings.Contains(err.Error(), "cannot go to old:7400: QEMU 7.2.22 there") {
		t.Errorf("pinned to old: %v", err)
	}
}
