package bench

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmscatter/vmscatter/bench/fixture"
	"github.com/vmscatter/vmscatter/scatter/host"
)

// CPU accounting of the side-by-side. Every figure is CPU time the kernel charged to the processes themselves,
// never wall time, over one method's window (from just before it starts until its last VM runs at its target):
//
//   - the source QEMUs (the guests): utime+stime from /proc/PID/stat at the window's start; at its end the same,
//     or, for a QEMU that quit after its migration (every method makes the source quit), wait4's rusage when the
//     bench reaped it, so the CPU of a process that exits inside the window is never lost;
//   - `vmscatter send`: its whole life, from wait4's rusage (it starts and ends inside the window);
//   - the destination QEMUs: their whole life up to the window's end (/proc/PID/stat), start-up included, since
//     every method starts them for the move (QEMU's own methods just before the window, vmscatter's receivers
//     inside it);
//   - the receivers: the difference of utime+stime+cutime+cstime over the window; cutime and cstime hold the
//     destination QEMUs a receiver has reaped, should one have ended.
//
// The source QEMUs' figure includes what the guests themselves run during the window (their vCPUs, under TCG), so a
// longer window costs more by itself. CPUFigures.SourceBaselinePerS is that rate, measured from the same accounting
// with no migration, over the settle before the window; SourceNetPerGiB takes it off over the window's length.

// CPUFigures are one method's CPU-seconds, and per GiB of guest RAM moved.
type CPUFigures struct {
	SourceQEMUSeconds float64 `json:"source_qemu_s"`        // the source QEMUs over the window
	SenderSeconds     float64 `json:"sender_s,omitempty"`   // vmscatter send, its whole life
	TargetQEMUSeconds float64 `json:"target_qemu_s"`        // the destination QEMUs, their whole life to the window's end
	ReceiverSeconds   float64 `json:"receiver_s,omitempty"` // the receivers over the window, with the children they reaped
	// SourceBaselinePerS is the source QEMUs' CPU-seconds per second during the settle before the window: what the
	// running guests cost without a migration.
	SourceBaselinePerS float64 `json:"source_qemu_baseline_s_per_s"`
	GuestGiB           float64 `json:"guest_gib"`        // guest RAM moved (configured RAM of every guest): the denominator
	SourcePerGiB       float64 `json:"source_s_per_gib"` // (source QEMUs + sender) / GuestGiB
	TargetPerGiB       float64 `json:"target_s_per_gib"` // (destination QEMUs + receivers) / GuestGiB
	// SourceNetPerGiB is SourcePerGiB less the guests' own running over the window (SourceBaselinePerS × its
	// length): what moving them cost the source.
	SourceNetPerGiB float64 `json:"source_net_s_per_gib"`
}

// perGiB fills in the per-GiB figures for GuestGiB moved in a window of the given length.
func (f *CPUFigures) perGiB(window time.Duration) {
	if gib := f.GuestGiB; gib > 0 {
		f.SourcePerGiB = (f.SourceQEMUSeconds + f.SenderSeconds) / gib
		f.TargetPerGiB = (f.TargetQEMUSeconds + f.ReceiverSeconds) / gib
		f.SourceNetPerGiB = f.SourcePerGiB - f.SourceBaselinePerS*window.Seconds()/gib
	}
}

// userHZ is the unit of the times in /proc/PID/stat: USER_HZ, which the kernel's ABI fixes at 100 on the
// architectures this runs on (it is not CONFIG_HZ).
const userHZ = 100

// procCPU reads a process's CPU time from /proc/PID/stat: self is utime+stime (all its threads, live and exited),
// children is cutime+cstime (the children it has reaped).
func procCPU(pid int) (self, children time.Duration, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	self, children, err = parseStat(string(b))
	if err != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return self, children, nil
}

// parseStat reads utime+stime and cutime+cstime (fields 14 to 17, in USER_HZ ticks) from a /proc/PID/stat line.
func parseStat(line string) (self, children time.Duration, err error) {
	// The command name (field 2) is in parentheses and may hold spaces and parentheses; the fields after the last
	// ')' start at field 3 (state).
	i := strings.LastIndexByte(line, ')')
	if i < 0 {
		return 0, 0, errors.New("no command name")
	}
	f := strings.Fields(line[i+1:])
	if len(f) < 15 {
		return 0, 0, fmt.Errorf("%d fields, want 17 or more", len(f)+2)
	}
	var t [4]int64 // utime, stime, cutime, cstime
	for k := range t {
		if t[k], err = strconv.ParseInt(f[11+k], 10, 64); err != nil {
			return 0, 0, err
		}
	}
	tick := time.Second / userHZ
	return time.Duration(t[0]+t[1]) * tick, time.Duration(t[2]+t[3]) * tick, nil
}

// exitedCPU is a reaped child's CPU time from wait4's rusage: its own, with that of the children it reaped.
func exitedCPU(ps *os.ProcessState) time.Duration {
	if ps == nil {
		return 0
	}
	ru, ok := ps.SysUsage().(*syscall.Rusage)
	if !ok {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// childCPU is the CPU time so far of a child the bench started and whose reaper closes done after cmd.Wait: from
// /proc while it runs or lies unreaped, from wait4's rusage once reaped.
func childCPU(cmd *exec.Cmd, done <-chan struct{}) time.Duration {
	select {
	case <-done:
		return exitedCPU(cmd.ProcessState)
	default:
	}
	self, _, err := procCPU(cmd.Process.Pid)
	select {
	case <-done: // reaped meanwhile: the read may have failed, or met a recycled pid
		return exitedCPU(cmd.ProcessState)
	default:
	}
	if err == nil {
		return self
	}
	select { // the process is gone from /proc: its reaper is about to close done
	case <-done:
		return exitedCPU(cmd.ProcessState)
	case <-time.After(5 * time.Second):
		return 0
	}
}

// guestsCPU is the CPU time so far of the guests' QEMUs, summed.
func guestsCPU(guests []*fixture.Guest) time.Duration {
	var sum time.Duration
	for _, g := range guests {
		if g != nil {
			sum += childCPU(g.Cmd, g.Done())
		}
	}
	return sum
}

// receiversCPU is the CPU time so far of the running receivers and the children they reaped, summed.
func (c *Cluster) receiversCPU() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var sum time.Duration
	for _, cmd := range c.receivers {
		if cmd == nil || cmd.Process == nil {
			continue
		}
		if self, children, err := procCPU(cmd.Process.Pid); err == nil {
			sum += self + children
		}
	}
	return sum
}

// destinationsCPU is the CPU time so far of the destination QEMUs of the named VMs that the receivers started,
// found by their pidfiles; a destination that is gone is counted by its receiver (cutime, cstime).
func (c *Cluster) destinationsCPU(vms map[string]int) time.Duration {
	var sum time.Duration
	for vm, ti := range vms {
		pid := host.RunningPID(filepath.Join(c.DataDir(ti), vm, "qemu.pid"))
		if pid <= 0 || !host.IsQEMU(pid) {
			continue
		}
		if self, _, err := procCPU(pid); err == nil {
			sum += self
		}
	}
	return sum
}

// Peak memory. A process's peak resident set is its high-water mark, which the kernel keeps: VmHWM in
// /proc/PID/status while it runs (read for the receivers, which outlive a run), and ru_maxrss of wait4's rusage once
// it is reaped (the sender, which exits inside the run). Both count the process alone, in KiB of the kernel's pages:
// a receiver's figure holds its content store and buffers, not the destination QEMUs it started.

// peakRSS reads a running process's VmHWM from /proc/PID/status, in bytes.
func peakRSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	return parseHWM(string(b))
}

// parseHWM reads the VmHWM line ("VmHWM:	  123456 kB") of a /proc/PID/status text, in bytes.
func parseHWM(status string) (int64, error) {
	for _, line := range strings.Split(status, "\n") {
		v, ok := strings.CutPrefix(line, "VmHWM:")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("VmHWM line %q", line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmHWM line %q: %w", line, err)
		}
		return kb << 10, nil
	}
	return 0, errors.New("no VmHWM line (a kernel thread, or an exited process)")
}

// exitedPeakRSS is a reaped child's peak resident set from wait4's rusage (ru_maxrss, in KiB on Linux), in bytes.
func exitedPeakRSS(ps *os.ProcessState) int64 {
	if ps == nil {
		return 0
	}
	ru, ok := ps.SysUsage().(*syscall.Rusage)
	if !ok {
		return 0
	}
	return ru.Maxrss << 10
}

// ReceiverPeakRSS is each running receiver's peak resident set so far, in bytes, by target index; 0 for a receiver
// that is not running or could not be read.
func (c *Cluster) ReceiverPeakRSS() []int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]int64, len(c.receivers))
	for i, cmd := range c.receivers {
		if cmd == nil || cmd.Process == nil {
			continue
		}
		if n, err := peakRSS(cmd.Process.Pid); err == nil {
			out[i] = n
		}
	}
	return out
}
