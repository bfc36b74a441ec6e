package scatter_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/qemu"
	"github.com/vmscatter/vmscatter/qemu/qemutest"
	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/dest"
	"github.com/vmscatter/vmscatter/scatter/host"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/source"
)

// What vmscatter does about QEMU versions, machine types and the features its proxy cannot carry, with real QEMUs:
// the system's 7.2 always, and Debian's 10.0 and 11.1 builds when scripts/fetch-qemu.sh has put them in its cache.

// machineOf returns the concrete machine type and the QEMU version a VM's QEMU runs.
func machineOf(t *testing.T, q *qmp.Client) (string, qmp.Version) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := q.CurrentMachine(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v, err := q.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return m, v
}

// destinationArgv returns the command line of the destination QEMU of vm on r.
func destinationArgv(t *testing.T, r *testReceiver, vm string) []string {
	t.Helper()
	pid := host.RunningPID(filepath.Join(r.dataDir, vm, "qemu.pid"))
	if pid <= 0 {
		t.Fatalf("no destination of %s runs on %s", vm, r.addr)
	}
	argv, err := qemu.ReadCommandLine(pid)
	if err != nil {
		t.Fatal(err)
	}
	return argv
}

// TestMachineAliasArrivesConcrete: a guest started with -machine pc arrives on a destination started with the
// source's concrete machine type (pc-i440fx-7.2 with QEMU 7.2), which is what it runs there.
func TestMachineAliasArrivesConcrete(t *testing.T) {
	bin := requireQEMU(t)
	g := startGuest(t, bin, t.TempDir(), "alias1", 32)
	srcMachine, srcVersion := machineOf(t, g.q)
	if srcMachine == "pc" || !strings.HasPrefix(srcMachine, "pc-i440fx-") {
		t.Fatalf("source runs machine %q", srcMachine)
	}
	r := startReceiver(t, testKey, nil)
	sendPinned(t, []*testReceiver{r}, g)
	waitExit(t, g)

	argv := destinationArgv(t, r, g.name)
	if i := slices.Index(argv, "-machine"); i < 0 || argv[i+1] != srcMachine {
		t.Errorf("destination command line: %q, want -machine %s", argv, srcMachine)
	}
	m, v := machineOf(t, destQMP(t, r, g.name))
	if m != srcMachine || v != srcVersion {
		t.Errorf("destination runs %s on QEMU %s, the source ran %s on QEMU %s", m, v, srcMachine, srcVersion)
	}
	t.Logf("-machine pc on QEMU %s arrived as %s", srcVersion, m)
}

// TestUnsupportedFeaturesRefusedBeforeAnythingMoves: a source with migration capabilities the proxy cannot carry,
// or with a virtio-mem device, is refused in the inventory: nothing moved (ErrNothingMigrated), the report says why
// and what to do, no destination was started, and the guests run on.
func TestUnsupportedFeaturesRefusedBeforeAnythingMoves(t *testing.T) {
	bin := requireQEMU(t)
	dir := t.TempDir()
	caps := startGuest(t, bin, dir, "caps1", 32)
	vmem := startGuest(t, bin, dir, "vmem1", 32, "-m", "32M,maxmem=1G,slots=1", "-object", "memory-backend-ram,id=mem1,size=128M",
		"-device", "virtio-mem-pci,id=vmem0,memdev=mem1,requested-size=0")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := caps.q.SetCapabilities(ctx, map[string]bool{"pause-before-switchover": true, "multifd": true}); err != nil {
		t.Fatal(err)
	}
	r := startReceiver(t, testKey, nil)
	rep, err := source.Send(context.Background(), sendCfg(testKey, []string{r.addr}, caps, vmem))
	if !errors.Is(err, source.ErrNothingMigrated) {
		t.Fatalf("err = %v", err)
	}
	for i, wants := range [][]string{
		{"multifd (", "pause-before-switchover (", `{"capability":"multifd","state":false}`},
		{"virtio-mem device (vmem0)", "before RAM"},
	} {
		v := rep.VMs[i]
		if v.Status != report.StatusRolledBack || v.MigrationMS != 0 || v.Target != "" {
			t.Errorf("report: %+v", v)
		}
		for _, want := range wants {
			if !strings.Contains(v.Error, want) {
				t.Errorf("%s: the report's error lacks %q: %s", v.Name, want, v.Error)
			}
		}
		t.Logf("%s refused: %s", v.Name, v.Error)
	}
	for _, g := range []*testGuest{caps, vmem} {
		if s := g.status(t); s != "running" {
			t.Errorf("source %s is %q", g.name, s)
		}
		if _, err := os.Stat(filepath.Join(r.dataDir, g.name)); err == nil {
			t.Errorf("the receiver started a destination for %s, which was refused", g.name)
		}
	}
}

// TestOlderQEMUToNewer moves a guest of the system's QEMU 7.2, started with -machine pc, to a receiver whose
// destinations run QEMU 10.0 (receive --qemu): it arrives and runs pc-i440fx-7.2 there, not 10.0's pc.
func TestOlderQEMUToNewer(t *testing.T) {
	bin := requireQEMU(t)
	newer := qemutest.Binary(t, "10.0")
	g := startGuest(t, bin, t.TempDir(), "up1", 32)
	srcMachine, srcVersion := machineOf(t, g.q)
	r := startReceiver(t, testKey, func(c *dest.Config) { c.QEMU = newer })
	sendPinned(t, []*testReceiver{r}, g)
	waitExit(t, g)
	q := destQMP(t, r, g.name)
	m, v := machineOf(t, q)
	if m != srcMachine || v.Major != 10 || v.Minor != 0 {
		t.Errorf("destination runs %s on QEMU %s, want %s on 10.0", m, v, srcMachine)
	}
	if s, _ := q.Status(context.Background()); s != qmp.RunStateRunning {
		t.Errorf("destination is %q", s)
	}
	t.Logf("QEMU %s %s -> QEMU %s %s", srcVersion, srcMachine, v, m)
}

// TestNewerQEMUToOlderRefused: a guest of QEMU 10.0 is refused by a target whose QEMU is 7.2, before anything
// moves and with a message naming the VM, its QEMU and machine type, and the target; with a QEMU 11.1 target too,
// the planner places it there.
func TestNewerQEMUToOlderRefused(t *testing.T) {
	requireQEMU(t)
	newer := qemutest.Binary(t, "10.0")
	newest := qemutest.Binary(t, "11.1")
	g := startGuest(t, newer, t.TempDir(), "down1", 32)
	srcMachine, srcVersion := machineOf(t, g.q)
	old := startReceiver(t, testKey, nil)
	rep, err := source.Send(context.Background(), sendCfg(testKey, []string{old.addr}, g))
	if !errors.Is(err, source.ErrNothingMigrated) {
		t.Fatalf("err = %v", err)
	}
	v := rep.VMs[0]
	want := "VM down1 (QEMU " + srcVersion.String() + ", machine " + srcMachine + ") cannot go to " + old.addr + ": QEMU 7.2"
	if v.Status != report.StatusRolledBack || !strings.Contains(v.Error, want) || !strings.Contains(v.Error, "older than the source's") {
		t.Errorf("report: %s: %s\nwant %q", v.Status, v.Error, want)
	}
	t.Logf("refused: %s", v.Error)
	if s := g.status(t); s != "running" {
		t.Errorf("source is %q", s)
	}

	up := startReceiver(t, testKey, func(c *dest.Config) { c.QEMU = newest })
	cfg := sendCfg(testKey, []string{old.addr, up.addr}, g)
	cfg.Algorithm = "exact"
	p, err := source.Plan(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if p.Placement[g.name] != up.addr {
		t.Errorf("placed on %s, want the 11.1 target %s", p.Placement[g.name], up.addr)
	}
}
