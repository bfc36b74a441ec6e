package qmp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// startQEMU starts a small TCG guest with no disks (SeaBIOS finds nothing to boot and loops) and connects to its
// QMP socket. extra is appended to the command line. The process is killed by its PID when the test ends.
func startQEMU(t *testing.T, ctx context.Context, bin, dir, name string, extra ...string) (*Client, *exec.Cmd) {
	t.Helper()
	sock := filepath.Join(dir, name+".qmp")
	args := append([]string{"-accel", "tcg", "-machine", "pc", "-m", "64", "-nodefaults", "-display", "none",
		"-no-user-config", "-qmp", "unix:" + sock + ",server=on,wait=off"}, extra...)
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	q := dialWhenReady(ctx, t, sock)
	t.Cleanup(func() { q.Close() })
	return q, cmd
}

// TestRealQEMU runs the typed API against two real QEMUs: run state with the STOP and RESUME waits, vCPU threads,
// memory, machine type, parameters read and put back, a migration cancelled half-way, and a migration to a second
// QEMU (-incoming defer) followed through MIGRATION events until completed.
func TestRealQEMU(t *testing.T) {
	bin := requireQEMU(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	src, srcCmd := startQEMU(t, ctx, bin, dir, "src", "-S")
	dst, _ := startQEMU(t, ctx, bin, dir, "dst", "-incoming", "defer")

	if pid, err := src.PeerPID(); err != nil || pid != srcCmd.Process.Pid {
		t.Fatalf("PeerPID = %d, %v; want %d", pid, err, srcCmd.Process.Pid)
	}

	// Run state. -S: prelaunch, which is not running.
	if st, err := src.Status(ctx); err != nil || st != RunStatePrelaunch {
		t.Fatalf("Status = %q, %v", st, err)
	}
	if st, err := dst.Status(ctx); err != nil || st != RunStateInMigrate {
		t.Fatalf("destination Status = %q, %v", st, err)
	}
	// A waiter that starts before the change and one that starts after it both return.
	waited := make(chan error, 1)
	go func() { _, err := src.WaitResume(ctx); waited <- err }()
	if err := src.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatalf("WaitResume begun before Cont: %v", err)
	}
	if at, err := src.WaitResume(ctx); err != nil || !at.IsZero() {
		t.Fatalf("WaitResume after Cont = %v, %v; want at once", at, err)
	}
	if st, err := src.Status(ctx); err != nil || st != RunStateRunning {
		t.Fatalf("Status after Cont = %q, %v", st, err)
	}
	go func() { _, err := src.WaitStop(ctx); waited <- err }()
	if err := src.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatalf("WaitStop begun before Stop: %v", err)
	}
	if at, err := src.WaitStop(ctx); err != nil || !at.IsZero() {
		t.Fatalf("WaitStop after Stop = %v, %v", at, err)
	}
	if st, err := src.Status(ctx); err != nil || st != RunStatePaused {
		t.Fatalf("Status after Stop = %q, %v", st, err)
	}
	if err := src.Cont(ctx); err != nil { // migrate a running guest
		t.Fatal(err)
	}

	// What the VM is.
	ver, err := src.Version(ctx)
	if err != nil || ver.Major < 1 {
		t.Fatalf("Version = %+v, %v", ver, err)
	}
	t.Logf("QEMU %s (%s)", ver, ver.Package)
	mem, err := src.MemorySizeSummary(ctx)
	if err != nil || mem.Base != 64<<20 || mem.Plugged != 0 {
		t.Fatalf("MemorySizeSummary = %+v, %v", mem, err)
	}
	if devs, err := src.MemoryDevices(ctx); err != nil || len(devs) != 0 {
		t.Fatalf("MemoryDevices = %+v, %v", devs, err)
	}
	tids, err := src.VCPUThreads(ctx)
	if err != nil || len(tids) != 1 {
		t.Fatalf("VCPUThreads = %v, %v", tids, err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d", srcCmd.Process.Pid, tids[0])); err != nil {
		t.Fatalf("vCPU thread %d is not a thread of QEMU: %v", tids[0], err)
	}
	// -machine pc is an alias; the running machine and query-machines agree on its concrete type.
	current, err := src.CurrentMachine(ctx)
	if err != nil {
		t.Fatal(err)
	}
	resolved, err := src.ResolveMachine(ctx, "pc")
	if err != nil || resolved != current || resolved == "pc" {
		t.Fatalf("ResolveMachine(pc) = %q, %v; CurrentMachine = %q", resolved, err, current)
	}
	if again, err := src.ResolveMachine(ctx, resolved); err != nil || again != resolved {
		t.Fatalf("ResolveMachine(%q) = %q, %v", resolved, again, err)
	}
	t.Logf("machine pc is %s", resolved)

	// Parameters: read, change, read back, put back.
	orig, err := src.Parameters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if orig.DowntimeLimit == nil || orig.MaxBandwidth == nil || orig.CPUThrottleInitial == nil || orig.CPUThrottleIncrement == nil {
		t.Fatalf("Parameters lacks what vmscatter sets: %+v", orig)
	}
	change := MigrationParameters{DowntimeLimit: new(*orig.DowntimeLimit + 123*time.Millisecond),
		MaxBandwidth: new(*orig.MaxBandwidth + 1<<20), CPUThrottleInitial: new(*orig.CPUThrottleInitial + 3),
		CPUThrottleIncrement: new(*orig.CPUThrottleIncrement + 2)}
	if err := src.SetParameters(ctx, change); err != nil {
		t.Fatal(err)
	}
	got, err := src.Parameters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := orig
	want.DowntimeLimit, want.MaxBandwidth = change.DowntimeLimit, change.MaxBandwidth
	want.CPUThrottleInitial, want.CPUThrottleIncrement = change.CPUThrottleInitial, change.CPUThrottleIncrement
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("after SetParameters: %s\nwant %s", canonical(t, got), canonical(t, want))
	}
	if err := src.SetParameters(ctx, orig); err != nil {
		t.Fatalf("putting every parameter back: %v", err)
	}
	if got, err := src.Parameters(ctx); err != nil || !reflect.DeepEqual(got, orig) {
		t.Fatalf("after restoring: %s, %v\nwant %s", canonical(t, got), err, canonical(t, orig))
	}
	var qe *Error
	if err := src.SetParameters(ctx, MigrationParameters{DowntimeLimit: new(3000 * time.Second)}); !errors.As(err, &qe) ||
		qe.Command != "migrate-set-parameters" {
		t.Fatalf("out-of-range downtime-limit: %v", err)
	}

	// Capabilities: events on both sides (WaitMigration needs them), and the destination must match the source.
	if caps, err := src.Capabilities(ctx); err != nil || caps[CapEvents] || len(caps) < 5 {
		t.Fatalf("Capabilities = %v, %v", caps, err)
	}
	if _, err := src.WaitMigration(ctx, func(s MigrationStatus) bool { return s == MigrationCompleted }); !errors.Is(err, ErrMigrationEventsOff) {
		t.Fatalf("WaitMigration without the events capability: %v", err)
	}
	for _, q := range []*Client{src, dst} {
		if err := q.SetCapabilities(ctx, map[string]bool{CapEvents: true}); err != nil {
			t.Fatal(err)
		}
	}
	if caps, err := src.Capabilities(ctx); err != nil || !caps[CapEvents] {
		t.Fatalf("Capabilities after setting events = %v, %v", caps, err)
	}
	if mi, err := src.QueryMigrate(ctx); err != nil || mi.Status != MigrationNone {
		t.Fatalf("QueryMigrate before any migration = %+v, %v", mi, err)
	}

	// A migration cancelled half-way: into a socket of ours that reads slowly, at 1 MiB/s.
	sink := filepath.Join(dir, "sink.sock")
	ln, err := net.Listen("unix", sink)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}()
	if err := src.SetParameters(ctx, MigrationParameters{MaxBandwidth: new(int64(1 << 20))}); err != nil {
		t.Fatal(err)
	}
	if err := src.Migrate(ctx, "unix:"+sink); err != nil {
		t.Fatal(err)
	}
	if st, err := src.WaitMigration(ctx, func(s MigrationStatus) bool { return s == MigrationActive || s.Finished() }); err != nil || st != MigrationActive {
		t.Fatalf("waiting for the slow migration to be active: %q, %v", st, err)
	}
	if mi, err := src.QueryMigrate(ctx); err != nil || !mi.Status.Active() || mi.RAM.Total < 64<<20 {
		t.Fatalf("QueryMigrate of the slow migration = %+v, %v", mi, err)
	}
	if err := src.MigrateCancel(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := src.WaitMigration(ctx, func(s MigrationStatus) bool { return !s.Active() }); err != nil || st != MigrationCancelled {
		t.Fatalf("after MigrateCancel: %q, %v", st, err)
	}
	if st, err := src.Status(ctx); err != nil || st != RunStateRunning {
		t.Fatalf("source after the cancelled migration: %q, %v", st, err)
	}
	if err := src.SetParameters(ctx, MigrationParameters{MaxBandwidth: orig.MaxBandwidth}); err != nil {
		t.Fatal(err)
	}

	// The migration to the second QEMU, followed through events on both sides.
	uri := "unix:" + filepath.Join(dir, "incoming.sock")
	if err := dst.MigrateIncoming(ctx, uri); err != nil {
		t.Fatal(err)
	}
	if err := src.Migrate(ctx, uri); err != nil {
		t.Fatal(err)
	}
	dstDone := make(chan error, 1)
	go func() {
		st, err := dst.WaitMigration(ctx, MigrationStatus.Finished)
		if err == nil && st != MigrationCompleted {
			err = fmt.Errorf("destination migration %s", st)
		}
		dstDone <- err
	}()
	st, err := src.WaitMigration(ctx, MigrationStatus.Finished)
	if err != nil || st != MigrationCompleted {
		mi, _ := src.QueryMigrate(ctx)
		t.Fatalf("source migration: %q, %v (%s)", st, err, mi.ErrorDesc)
	}
	if err := <-dstDone; err != nil {
		t.Fatal(err)
	}
	mi, err := src.QueryMigrate(ctx)
	if err != nil || mi.Status != MigrationCompleted || mi.RAM.Total < 64<<20 || mi.RAM.Transferred <= 0 || mi.TotalTime <= 0 ||
		mi.RAM.DirtySyncCount < 1 || mi.RAM.PageSize != 4096 {
		t.Fatalf("QueryMigrate after completion = %+v, %v", mi, err)
	}
	t.Logf("migrated: %+v", mi)
	// The source stopped for the switch-over and stays stopped; the destination, started without -S, runs.
	if at, err := src.WaitStop(ctx); err != nil || !at.IsZero() {
		t.Fatalf("WaitStop on the migrated source = %v, %v", at, err)
	}
	if st, err := src.Status(ctx); err != nil || st != RunStatePostMigrate {
		t.Fatalf("source after migration: %q, %v", st, err)
	}
	if _, err := dst.WaitResume(ctx); err != nil {
		t.Fatalf("WaitResume on the destination: %v", err)
	}
	if st, err := dst.Status(ctx); err != nil || st != RunStateRunning {
		t.Fatalf("destination after migration: %q, %v", st, err)
	}
	if m, err := dst.CurrentMachine(ctx); err != nil || m != current {
		t.Fatalf("destination machine %q, %v; want %q", m, err, current)
	}

	// Pmemsave of the stopped destination, then both QEMUs quit.
	if err := dst.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	dump := filepath.Join(dir, "mem.bin")
	if err := dst.Pmemsave(ctx, 0, 1<<20, dump); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dump); err != nil || fi.Size() != 1<<20 {
		t.Fatalf("pmemsave wrote %v, %v", fi, err)
	}
	for name, q := range map[string]*Client{"source": src, "destination": dst} {
		if err := q.Quit(ctx); err != nil {
			t.Fatalf("%s Quit: %v", name, err)
		}
		select {
		case <-q.Done():
		case <-ctx.Done():
			t.Fatalf("%s still has its QMP socket open after Quit", name)
		}
	}
}
