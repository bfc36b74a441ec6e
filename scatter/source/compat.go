package source

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vmscatter/vmscatter/qemu"
	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// Which targets can run a VM. QEMU migrates a VM to the same or a newer QEMU, started with the source's concrete
// machine type; not to an older one, whose stream and device states it may not read. So a target can run a VM if
// the QEMU its receiver would start for the VM's binary (INFO) is at least the source's major.minor and has the
// source's machine type. Stable releases of one series (7.2.x) share their machine types and stream, and migrate
// both ways.

// qemuName is the name a receiver looks a VM's binary up by: its source binary's base name.
func qemuName(argv []string) string {
	if len(argv) == 0 {
		return ""
	}
	return filepath.Base(argv[0])
}

// describe names a VM with its QEMU, for messages: "VM web1 (QEMU 7.2.22, machine pc-i440fx-7.2)".
func (vm *sourceVM) describe() string {
	return fmt.Sprintf("VM %s (QEMU %s, machine %s)", vm.spec.Name, vm.qemuVersion, vm.machine)
}

// targetRuns says why the target that sent info cannot run a VM of source binary name, QEMU version and machine
// type; nil if it can.
func targetRuns(name string, version qmp.Version, machine string, info wire.InfoMsg) error {
	i := slices.IndexFunc(info.QEMU, func(q wire.QEMUInfo) bool { return q.Name == name })
	if i < 0 {
		return fmt.Errorf("its receiver does not say which QEMU runs %s there (upgrade vmscatter on it)", name)
	}
	q := info.QEMU[i]
	if q.Error != "" {
		return fmt.Errorf("no QEMU for it there: %s", q.Error)
	}
	v, err := qemu.ParseVersion(q.Version)
	if err != nil {
		return fmt.Errorf("its receiver reports %s: %w", q.Path, err)
	}
	if !v.AtLeast(version.Major, version.Minor) {
		return fmt.Errorf("QEMU %s there (%s) is older than the source's: QEMU migrates only to the same or a newer version", v, q.Path)
	}
	if !slices.Contains(q.Machines, machine) {
		return fmt.Errorf("QEMU %s there (%s) has no machine type %s", v, q.Path, machine)
	}
	return nil
}

// admissibleTargets returns the targets among ts that can run vm, and why each of the others cannot.
func admissibleTargets(vm *sourceVM, ts []*targetConn) (ok []*targetConn, refusals []string) {
	for _, t := range ts {
		if err := targetRuns(qemuName(vm.argv), vm.qemuVersion, vm.machine, t.info); err != nil {
			refusals = append(refusals, fmt.Sprintf("%s: %v", t.addr, err))
			continue
		}
		ok = append(ok, t)
	}
	return ok, refusals
}

// noTargetError says that vm can go to none of the targets that refused it.
func noTargetError(vm *sourceVM, refusals []string) error {
	if len(refusals) == 1 {
		return fmt.Errorf("%s cannot go to %s", vm.describe(), refusals[0])
	}
	return fmt.Errorf("%s can go to no target: %s", vm.describe(), strings.Join(refusals, "; "))
}

// allowedTargets returns the names of the targets among ts that vm may go to, for grouping.VM.Allowed: nil when it
// may go to all of them. A VM pinned to pin must be able to go there. An error says why it can go nowhere.
func allowedTargets(vm *sourceVM, ts []*targetConn, pin string) ([]string, error) {
	ok, refusals := admissibleTargets(vm, ts)
	if pin != "" {
		if slices.ContainsFunc(ok, func(t *targetConn) bool { return t.addr == pin }) {
			return nil, nil
		}
		for _, r := range refusals {
			if strings.HasPrefix(r, pin+": ") {
				return nil, noTargetError(vm, []string{r})
			}
		}
		return nil, fmt.Errorf("%s: its pinned target %s is not among the reachable targets", vm.describe(), pin)
	}
	if len(ok) == 0 {
		return nil, noTargetError(vm, refusals)
	}
	if len(ok) == len(ts) {
		return nil, nil
	}
	names := make([]string, len(ok))
	for i, t := range ok {
		names[i] = t.addr
	}
	return names, nil
}
