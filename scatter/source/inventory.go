package source

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"time"

	"github.com/vmscatter/vmscatter/qemu"
	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/secure"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// inventory learns a VM's QEMU: pid, command line, run state, RAM size, version and concrete machine type, and
// refuses what vmscatter cannot carry (unsupportedFeatures) before anything moves.
func (s *sender) inventory(ctx context.Context, vm *sourceVM) {
	if s.virt != nil {
		s.inventoryDomain(ctx, vm) // libvirt.go
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	fail := func(status string, err error) {
		vm.report.Status, vm.report.Error = status, err.Error()
		s.progress.set(vm.spec.Name, "error", err.Error())
	}
	s.progress.set(vm.spec.Name, "inventory", "")
	q, err := qmp.Dial(ctx, vm.spec.QMP)
	if err != nil {
		fail(report.StatusFailed, err)
		return
	}
	vm.qmp = q
	if vm.pid, err = q.PeerPID(); err != nil {
		fail(report.StatusRolledBack, err)
		return
	}
	if vm.argv, err = qemu.ReadCommandLine(vm.pid); err != nil {
		fail(report.StatusRolledBack, err)
		return
	}
	vm.report.SourcePID = vm.pid
	// Its disks: the receiver checks that each is the same file at the same path there (shared storage); a
	// command line vmscatter cannot migrate safely (-snapshot, relative paths, ...) is refused here, untouched.
	ids, err := qemu.IdentifyDisks(vm.argv)
	if err != nil {
		fail(report.StatusRolledBack, fmt.Errorf("disks: %w", err))
		return
	}
	for _, id := range ids {
		vm.disks = append(vm.disks, wire.DiskMsg(id))
	}
	status, err := q.Status(ctx)
	if err != nil {
		fail(report.StatusRolledBack, err)
		return
	}
	switch status {
	case qmp.RunStateRunning:
		vm.wasRunning = true
	case qmp.RunStatePaused, qmp.RunStatePrelaunch:
	default:
		fail(report.StatusRolledBack, fmt.Errorf("VM is %q; only running or paused VMs can be migrated", status))
		return
	}
	mem, err := q.MemorySizeSummary(ctx)
	if err != nil {
		fail(report.StatusRolledBack, err)
		return
	}
	vm.ramBytes = mem.Base
	vm.report.RAMBytes = mem.Base
	vm.vcpus = 1
	if tids, err := q.VCPUThreads(ctx); err == nil && len(tids) > 0 {
		vm.vcpus = len(tids)
	}
	caps, err := q.Capabilities(ctx)
	if err != nil {
		fail(report.StatusRolledBack, err)
		return
	}
	devs, err := q.MemoryDevices(ctx)
	if err != nil {
		fail(report.StatusRolledBack, err)
		return
	}
	if err := unsupportedFeatures(caps, devs); err != nil {
		fail(report.StatusRolledBack, err)
		return
	}
	// A destination must run the source's QEMU version or a newer one, with the source's concrete machine type:
	// "-machine pc" (or none) stands for the newest type of each binary.
	if vm.qemuVersion, err = q.Version(ctx); err != nil {
		fail(report.StatusRolledBack, err)
		return
	}
	if vm.machine, err = q.CurrentMachine(ctx); err != nil {
		fail(report.StatusRolledBack, err)
		return
	}
	vm.argv = qemu.WithMachineType(vm.argv, vm.machine)
	s.progress.set(vm.spec.Name, "ready", fmt.Sprintf("pid %d, %s RAM, QEMU %s, %s", vm.pid, fmtBytes(vm.ramBytes), vm.qemuVersion, vm.machine))
}

// openSession connects and authenticates the control connection to one receiver. HELLO waits for the inventory
// (inventoried closed): it names the QEMU binaries of the VMs, for the receiver to say what it runs them with.
func (s *sender) openSession(ctx context.Context, t *targetConn, inventoried <-chan struct{}) {
	sc, err := s.dial(ctx, t.addr, secure.RoleControl)
	if err != nil {
		t.err = err
		return
	}
	select {
	case <-inventoried:
	case <-ctx.Done():
		sc.Close()
		t.err = ctx.Err()
		return
	}
	host, _ := os.Hostname()
	if err := sc.SendJSON(wire.FrameHello, wire.HelloMsg{Session: s.session, Sender: host, QEMU: s.qemuNames()}); err != nil {
		sc.Close()
		t.err = err
		return
	}
	if err := sc.Expect(ctx, wire.FrameInfo, &t.info); err != nil {
		sc.Close()
		t.err = err
		return
	}
	t.sc = sc
	s.log.Info("session open", "target", t.addr, "host", t.info.Host, "mem_available", t.info.MemAvailable)
}

// qemuNames are the base names of the VMs' QEMU binaries, each once, in order. Call it after the inventory.
func (s *sender) qemuNames() []string {
	var names []string
	for _, vm := range s.vms {
		if n := qemuName(vm.argv); n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names
}

func (s *sender) dial(ctx context.Context, addr string, role byte) (*secure.Conn, error) {
	d := net.Dialer{Timeout: s.cfg.DialTimeout, KeepAlive: 15 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("receiver %s unreachable: %w (is `vmscatter receive` running there?)", addr, err)
	}
	if tc, ok := c.(*net.TCPConn); ok && role == secure.RoleVM {
		// QEMU sizes its switch-over from the rate of its own writes into our socket. A deep buffer between it
		// and the link (TCP send-buffer autotuning grows to 4 MiB) would show it a faster link than there is, and
		// the real downtime would exceed its estimate: keep the whole path near 1 MiB.
		_ = tc.SetWriteBuffer(streamSocketBuffer)
	}
	sc, err := secure.ClientHandshake(c, s.cfg.credentials(), role)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("receiver %s: %w", addr, err)
	}
	return sc, nil
}

func (s *sender) closeSessions() {
	for _, t := range s.targets {
		if t.sc != nil {
			_ = t.sc.Send(wire.FrameBye, nil, true)
			t.sc.Close()
		}
	}
}
