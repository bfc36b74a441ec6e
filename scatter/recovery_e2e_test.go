package scatter_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/scatter/journal"
	"github.com/vmscatter/vmscatter/scatter/recovery"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/source"
)

// A sender that died in Perform leaves its journal saying so, with the source VM paused by nobody and no
// destination loaded. `send` then refuses the VM and points at recover; recover asks the receiver (which has no
// record of the migration) and the source QEMU, resumes the source, and a second recover finds nothing to do.
func TestRecoverAfterSenderDeathInPerform(t *testing.T) {
	bin := requireQEMU(t)
	g := startGuest(t, bin, t.TempDir(), "vm1", 32)
	r := startReceiver(t, testKey, nil)
	ctx := context.Background()
	if err := g.q.Stop(ctx); err != nil { // the source QEMU as a migration left it: stopped, not migrating
		t.Fatal(err)
	}
	pid := g.cmd.Process.Pid
	g.release()

	// The journal of a run whose sender died after it journaled Perform.
	state := t.TempDir()
	run, err := journal.Open(filepath.Join(state, "00112233445566778899aabbccddeeff"))
	if err != nil {
		t.Fatal(err)
	}
	if err := run.Put("run", source.RunRecord{Session: "00112233445566778899aabbccddeeff", Started: time.Now(),
		Targets: []string{r.addr}, VMs: []source.RunVMSpec{{Name: "vm1", QMP: g.qmp}}}); err != nil {
		t.Fatal(err)
	}
	if err := run.Put("vm-vm1", source.VMRecord{VM: "vm1", Epoch: 42, Phase: "Perform", Target: r.addr, QMP: g.qmp,
		PID: pid, WasRunning: true}); err != nil {
		t.Fatal(err)
	}

	// send refuses the VM: only recover may touch it.
	cfg := sendCfg(testKey, []string{r.addr}, g)
	cfg.StateDir = state
	rep, err := source.Send(ctx, cfg)
	if err == nil || rep == nil || rep.VMs[0].Status != report.StatusRolledBack || !strings.Contains(rep.VMs[0].Error, "vmscatter recover") {
		t.Fatalf("send on a held VM: %v, %+v", err, rep)
	}
	if s := g.status(t); s != "paused" {
		t.Fatalf("send touched the held VM: it is %q", s)
	}

	var progress bytes.Buffer
	rep, err = recovery.Run(ctx, recovery.Config{StateDir: state, Key: testKey, Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("recover: %s", progress.String())
	if len(rep.VMs) != 1 || rep.VMs[0].Status != report.StatusRolledBack {
		t.Fatalf("recover: %+v", rep.VMs)
	}
	if s := g.status(t); s != "running" {
		t.Fatalf("after recover the source is %q, want running (it ran before the migration)", s)
	}
	// Idempotent: nothing is left to do, and send takes the VM again.
	rep, err = recovery.Run(ctx, recovery.Config{StateDir: state, Key: testKey})
	if err != nil || len(rep.VMs) != 0 {
		t.Fatalf("second recover: %v, %+v", err, rep)
	}
	var status bytes.Buffer
	if err := recovery.Status(state, &status); err != nil || !strings.Contains(status.String(), "RolledBack") {
		t.Fatalf("status: %v\n%s", err, status.String())
	}
	rep, err = source.Send(ctx, cfg)
	if err != nil || rep.VMs[0].Status != report.StatusMigrated {
		t.Fatalf("send after recover: %v, %+v", err, rep.VMs)
	}
}
