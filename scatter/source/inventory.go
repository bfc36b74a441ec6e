package source

import (
	"context"
	"fmt"
	"maps"
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

// inventory learns a VM's QEMU: pid, command line, run state, RAM size, and refuses features the stream codec
// does not support.
func (s *sender) inventory(ctx context.Context, vm *sourceVM) {
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
	caps, err := q.Capabilities(ctx)
	if err != nil {
		fail(report.StatusRolledBack, err)
		return
	}
	for _, name := range slices.Sorted(maps.Keys(caps)) {
		if caps[name] && unsupportedCapabilities[name] {
			fail(report.StatusRolledBack, fmt.Errorf("migration capability %q is on; vmscatter does not support it yet: turn it off (migrate-set-capabilities)", name))
			return
		}
	}
	s.progress.set(vm.spec.Name, "ready", fmt.Sprintf("pid %d, %s RAM", vm.pid, fmtBytes(vm.ramBytes)))
}

var unsupportedCapabilities = map[string]bool{"multifd": true, "compress": true, "xbzrle": true, "postcopy-ram": true,
	"block": true, "x-colo": true, "dirty-bitmaps": true, "background-snapshot": true, "zero-copy-send": true,
	"postcopy-preempt": true, "x-ignore-shared": true, "release-ram": true}

// openSession connects and authenticates the control connection to one receiver.
func (s *sender) openSession(ctx context.Context, t *targetConn) {
	sc, err := s.dial(ctx, t.addr, secure.RoleControl)
	if err != nil {
		t.err = err
		return
	}
	host, _ := os.Hostname()
	if err := sc.SendJSON(wire.FrameHello, wire.HelloMsg{Session: s.session, Sender: host}); err != nil {
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
