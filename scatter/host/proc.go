package host

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// RunningPID returns the pid in a pidfile if that process is alive, else 0.
func RunningPID(pidfile string) int {
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	if syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

// MemInfo reads MemTotal and MemAvailable from /proc/meminfo, in bytes.
func MemInfo() (total, avail uint64) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseUint(f[1], 10, 64)
		switch f[0] {
		case "MemTotal:":
			total = v << 10
		case "MemAvailable:":
			avail = v << 10
		}
	}
	return total, avail
}

// IsQEMU guards against a recycled pid: the process must be a qemu-system binary.
func IsQEMU(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), "qemu-")
}

// SocketQueue returns a socket's queue as the ioctl reports it (SIOCINQ: bytes received and not yet read;
// SIOCOUTQ: bytes written and not yet acknowledged), or 0 when it cannot be read.
func SocketQueue(c net.Conn, req uint) int64 {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	var n int
	_ = raw.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), req) })
	return int64(n)
}

// PinThreads pins each thread (a VM's vCPU threads) onto the first n CPUs it may use, and returns a function
// that restores each thread's original affinity.
func PinThreads(threads []int, n int) (func(), error) {
	var saved []unix.CPUSet
	var tids []int
	for _, tid := range threads {
		var orig unix.CPUSet
		if err := unix.SchedGetaffinity(tid, &orig); err != nil {
			return nil, fmt.Errorf("affinity of vCPU thread %d: %w", tid, err)
		}
		var set unix.CPUSet
		k := 0
		for cpu := 0; cpu < 1024 && k < n; cpu++ {
			if orig.IsSet(cpu) {
				set.Set(cpu)
				k++
			}
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil {
			return nil, fmt.Errorf("pinning vCPU thread %d: %w", tid, err)
		}
		saved = append(saved, orig)
		tids = append(tids, tid)
	}
	return func() {
		for i, tid := range tids {
			_ = unix.SchedSetaffinity(tid, &saved[i])
		}
	}, nil
}
