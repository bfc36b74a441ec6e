package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/vmscatter/vmscatter/qemu/qmp"
)

// RAMBlockInfo is one line of QEMU's `info ramblock`.
type RAMBlockInfo struct {
	Name     string
	PageSize uint64
	Offset   uint64 // offset in QEMU's ram_addr space, not in the guest
	Used     uint64
	Total    uint64
}

// QueryRAMBlocks lists the guest's RAM blocks (HMP `info ramblock`).
func QueryRAMBlocks(ctx context.Context, q *qmp.Client) ([]RAMBlockInfo, error) {
	out, err := q.HMP(ctx, "info ramblock")
	if err != nil {
		return nil, err
	}
	return parseRAMBlocks(out)
}

var sizeUnits = map[string]uint64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}

func parseRAMBlocks(out string) ([]RAMBlockInfo, error) {
	var blocks []RAMBlockInfo
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || f[0] == "Block" {
			continue
		}
		unit, ok := sizeUnits[f[2]]
		ps, err := strconv.ParseUint(f[1], 10, 64)
		if !ok || err != nil {
			return nil, fmt.Errorf("info ramblock: cannot read page size in %q", line)
		}
		var nums [3]uint64
		for i := range nums {
			if nums[i], err = strconv.ParseUint(strings.TrimPrefix(f[3+i], "0x"), 16, 64); err != nil {
				return nil, fmt.Errorf("info ramblock: cannot read %q", line)
			}
		}
		blocks = append(blocks, RAMBlockInfo{Name: f[0], PageSize: ps * unit, Offset: nums[0], Used: nums[1], Total: nums[2]})
	}
	if len(blocks) == 0 {
		return nil, fmt.Errorf("info ramblock: no blocks in %q", out)
	}
	return blocks, nil
}

var gpa2hvaRE = regexp.MustCompile(`Host virtual address for 0x[0-9a-f]+ \(([^)]+)\) is 0x([0-9a-f]+)`)

// GuestRAM reads the guest's main RAM block from the QEMU process's address space: with process_vm_readv, which
// copies each page once, or else through /proc/PID/mem, which copies it twice (through a kernel buffer) and took
// the scan about 1.8 times as long. It is an io.ReaderAt over block offsets, safe for concurrent use. The guest
// keeps running: reads are a snapshot of each page at the moment it is read, which is all the scan needs.
type GuestRAM struct {
	Block string // QEMU's RAM block name, e.g. "pc.ram"
	Size  int64  // used length of the block
	base  uint64 // host virtual address of block offset 0
	pid   int
	f     *os.File
	// vmReadv is false once process_vm_readv has failed in a way /proc/PID/mem may not (a seccomp filter that
	// forbids it, an old kernel): reads go through f from then on.
	vmReadv atomic.Bool
}

// ErrRAMUnreadable says the guest's RAM cannot be read from this process; the scan is skipped, nothing else fails.
var ErrRAMUnreadable = errors.New("guest RAM is not readable from here")

// OpenGuestRAM finds the main RAM block's exact host address with `gpa2hva 0` and opens /proc/PID/mem.
// The block is contiguous in QEMU's address space from that address; no guessing from /proc/PID/maps.
func OpenGuestRAM(ctx context.Context, q *qmp.Client, pid int) (*GuestRAM, error) {
	return OpenGuestRAMWith(ctx, q.HMP, pid)
}

// HMPFunc runs one human-monitor command and returns its output: QMP's human-monitor-command, or libvirt's
// qemu-monitor-command --hmp pass-through for a libvirt domain.
type HMPFunc func(ctx context.Context, cmd string) (string, error)

// OpenGuestRAMWith is OpenGuestRAM with the monitor commands run through hmp.
func OpenGuestRAMWith(ctx context.Context, hmp HMPFunc, pid int) (*GuestRAM, error) {
	out, err := hmp(ctx, "gpa2hva 0")
	if err != nil {
		return nil, fmt.Errorf("%w: gpa2hva: %v", ErrRAMUnreadable, err)
	}
	m := gpa2hvaRE.FindStringSubmatch(out)
	if m == nil {
		return nil, fmt.Errorf("%w: unexpected gpa2hva answer %q", ErrRAMUnreadable, strings.TrimSpace(out))
	}
	base, _ := strconv.ParseUint(m[2], 16, 64)
	out, err = hmp(ctx, "info ramblock")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRAMUnreadable, err)
	}
	blocks, err := parseRAMBlocks(out)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRAMUnreadable, err)
	}
	var size int64 = -1
	for _, b := range blocks {
		if b.Name == m[1] {
			size = int64(b.Used)
		}
	}
	if size < 0 {
		return nil, fmt.Errorf("%w: block %q of gpa 0 is not in info ramblock", ErrRAMUnreadable, m[1])
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return nil, fmt.Errorf("%w: %v (run as root, or as QEMU's user with ptrace allowed)", ErrRAMUnreadable, err)
	}
	g := &GuestRAM{Block: m[1], Size: size, base: base, pid: pid, f: f}
	g.vmReadv.Store(true)
	var probe [8]byte
	if _, err := g.ReadAt(probe[:], 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %v", ErrRAMUnreadable, err)
	}
	return g, nil
}

// ReadAt reads guest RAM at a block offset.
func (g *GuestRAM) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= g.Size {
		return 0, io.EOF
	}
	if rem := g.Size - off; int64(len(p)) > rem {
		n, err := g.read(p[:rem], off)
		if err == nil {
			err = io.EOF
		}
		return n, err
	}
	return g.read(p, off)
}

// read fills p from block offset off, which the caller checked lies within the block.
func (g *GuestRAM) read(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n := 0
	if g.vmReadv.Load() {
		local := []unix.Iovec{{Base: &p[0], Len: uint64(len(p))}}
		remote := []unix.RemoteIovec{{Base: uintptr(g.base) + uintptr(off), Len: len(p)}}
		got, err := unix.ProcessVMReadv(g.pid, local, remote, 0)
		switch {
		case err == nil && got == len(p):
			return got, nil
		case err == nil:
			n = got // a short read: /proc/PID/mem reads the rest, or says why it cannot
		case errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM):
			g.vmReadv.Store(false)
		}
	}
	m, err := g.f.ReadAt(p[n:], int64(g.base)+off+int64(n))
	return n + m, err
}

// Close releases /proc/PID/mem.
func (g *GuestRAM) Close() error { return g.f.Close() }
