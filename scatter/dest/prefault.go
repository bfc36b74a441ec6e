package dest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmscatter/vmscatter/qemu/qmp"
)

// The prefault (receive --prefault, on by default) allocates a launched destination's RAM while the prime runs, so
// that loading its stream later copies pages into memory that is already there instead of faulting each one in.
// Measured on a 2-core target with 4 × 128 MiB guests, the first touch of guest RAM (the kernel's clear_page) cost
// the destination QEMUs ~1.4 core-seconds during the load, which made the migrate phase CPU-bound; allocated during
// the prime at idle priority, the same work left the critical path (migrate phase ~1.4 s → 1.0–1.17 s). Placement
// already counts each VM's whole RAM, so allocating all of it takes nothing the target had not promised.
//
// QEMU does the work: each memory backend accepts prealloc=true at run time (qmp.Preallocate), and keeps its pages'
// contents. While it allocates, its main loop does nothing else, so:
//   - every thread of the QEMU runs at SCHED_IDLE meanwhile (the threads QEMU starts for the work inherit its main
//     thread's policy), so that the prime, which this host's CPUs serve first, never waits for it;
//   - when the VM's stream starts (its first frame reaches the rebuilder) the threads get their scheduling back at
//     once (boost): the load waits for the rest of the allocation, which must not crawl at idle priority then;
//   - the destination's run state is known without asking (holding): STATE does not wait for it.
//
// A prefault never fails the VM: what goes wrong is logged and the load faults pages in as it did without one. A
// receiver that dies mid-prefault leaves its QEMU at idle priority, but that destination has not loaded (its stream
// would have boosted it), so the restarted receiver tears it down (Prepare).

// prefaultBound bounds a destination's prefault. QEMU goes on allocating past it (nothing stops a qom-set), but its
// threads have their scheduling back by then: the prefault's goroutine ends.
const prefaultBound = 5 * time.Minute

// prefault is one destination's allocation of its RAM (see above). Its goroutine (run) and the stream's reader (boost)
// share it; mu guards the threads' scheduling and the state beneath.
type prefault struct {
	pid    int
	proc   *os.File // /proc/PID, opened at the start: tasks are listed through it, so a recycled pid is never touched
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{} // closed when run has put the threads' scheduling back and returned

	mu         sync.Mutex
	orig       unix.SchedAttr // the threads' scheduling at launch (inherited from the receiver), given back at the end
	lowered    bool           // the threads are at SCHED_IDLE
	boosted    bool           // the stream started while the prefault ran
	over       bool           // run is done: boost does nothing
	allocating bool           // a Preallocate is outstanding: QEMU answers nothing until it returns
}

// startPrefault starts the prefault of the launched destination QEMU pid (QMP client q) on a goroutine of its own,
// and returns it; nil (logged) when this receiver could not give the QEMU its scheduling back after SCHED_IDLE.
func startPrefault(q *qmp.Client, pid int, log *slog.Logger) *prefault {
	// Leaving SCHED_IDLE takes CAP_SYS_NICE (or an RLIMIT_NICE that allows nice 0): a receiver without it would leave
	// the VM at idle priority for good.
	if !hasCapSysNice() {
		log.Info("prefault skipped: without CAP_SYS_NICE the receiver could not take the destination back from idle priority")
		return nil
	}
	proc, err := os.Open("/proc/" + strconv.Itoa(pid))
	if err != nil {
		log.Debug("prefault skipped", "err", err)
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), prefaultBound)
	p := &prefault{pid: pid, proc: proc, log: log, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer proc.Close()
		defer cancel()
		p.run(ctx, q)
	}()
	return p
}

// run allocates every backend that prefaultPaths picks, one after the other, and logs the outcome.
func (p *prefault) run(ctx context.Context, q *qmp.Client) {
	start := time.Now()
	paths, bytes, err := p.allocate(ctx, q)
	p.mu.Lock()
	p.over = true
	if p.lowered {
		if rerr := p.setThreads(p.orig); rerr != nil {
			err = errors.Join(err, fmt.Errorf("giving the threads their scheduling back: %w", rerr))
			p.log.Warn("prefault: the destination's threads may keep idle priority", "pid", p.pid, "err", rerr)
		}
		p.lowered = false
	}
	boosted := p.boosted
	p.mu.Unlock()
	args := []any{"pid", p.pid, "ms", time.Since(start).Milliseconds(), "backends", len(paths), "bytes", bytes,
		"boosted", boosted}
	if err != nil {
		args = append(args, "err", err)
	}
	p.log.Info("prefault done", args...)
}

func (p *prefault) allocate(ctx context.Context, q *qmp.Client) ([]string, int64, error) {
	backends, err := q.MemoryBackends(ctx)
	if err != nil {
		return nil, 0, err
	}
	devs, err := q.MemoryDevices(ctx)
	if err != nil {
		return nil, 0, err
	}
	paths, bytes := prefaultPaths(backends, devs)
	if len(paths) == 0 {
		return nil, 0, nil
	}
	if err := p.lower(); err != nil {
		return paths, bytes, err
	}
	var errs []error
	for _, path := range paths {
		// A destination that has loaded its stream already (a prime shorter than the prefault's start) has its pages.
		if st, err := q.Status(ctx); err != nil || st != qmp.RunStateInMigrate {
			errs = append(errs, fmt.Errorf("%s not allocated: the destination is %q (%v)", path, st, err))
			break
		}
		p.setAllocating(true)
		err := q.Preallocate(ctx, path, runtime.NumCPU())
		p.setAllocating(false)
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
		}
	}
	return paths, bytes, errors.Join(errs...)
}

// prefaultPaths returns the QOM paths of the backends a prefault allocates, and their bytes: each one not yet
// allocated, except
//   - shared ones (share=on): their pages are a file's or shared memory's, which another process may map (the
//     source's own, when the migration skips shared RAM), not this QEMU's to fill;
//   - those without reserved swap (reserve=off): QEMU refuses prealloc on them;
//   - a virtio-mem device's: it plugs part of its backend, and placement counts only that part.
//
// A backend QEMU gives no id of (before 6.0) is taken to be the main RAM, /objects/pc.ram.
func prefaultPaths(backends []qmp.MemoryBackend, devs []qmp.MemoryDevice) ([]string, int64) {
	skip := map[string]bool{}
	for _, d := range devs {
		if d.Type == qmp.MemoryDeviceVirtioMem {
			skip[d.Memdev] = true
		}
	}
	var paths []string
	var bytes int64
	for _, b := range backends {
		path := b.Path()
		if path == "" {
			path = "/objects/pc.ram"
		}
		if b.Prealloc || b.Share || !b.Reserve || skip[path] {
			continue
		}
		skip[path] = true // once
		paths = append(paths, path)
		bytes += b.Size
	}
	return paths, bytes
}

// lower puts every thread at SCHED_IDLE, unless the stream has started already.
func (p *prefault) lower() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.boosted {
		return nil
	}
	orig, err := unix.SchedGetAttr(p.pid, 0)
	if err != nil {
		return err
	}
	p.orig = unix.SchedAttr{Policy: orig.Policy, Nice: orig.Nice, Priority: orig.Priority}
	if p.orig.Policy == unix.SCHED_IDLE {
		return nil // the receiver's own: nothing to lower
	}
	p.lowered = true // before the first change: what a failure leaves half done is undone
	return p.setThreads(unix.SchedAttr{Policy: unix.SCHED_IDLE})
}

// boost gives the threads their scheduling back at once: the VM's stream has started. It is idempotent and safe on
// a nil prefault (none started).
func (p *prefault) boost() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.over || p.boosted {
		return
	}
	p.boosted = true
	if p.lowered {
		if err := p.setThreads(p.orig); err != nil {
			p.log.Debug("prefault: boost", "pid", p.pid, "err", err)
		}
		p.lowered = false
	}
}

func (p *prefault) setAllocating(v bool) {
	p.mu.Lock()
	p.allocating = v
	p.mu.Unlock()
}

// holding reports whether QEMU is in an allocation: its main loop answers nothing until it is done, and its run state
// is "inmigrate" (the allocation starts only in that state, and nothing changes it while the main loop is held).
func (p *prefault) holding() bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.allocating
}

// stop ends the prefault (the destination is killed or let go) and returns once the threads have their scheduling
// back. It is safe on a nil prefault and more than once.
func (p *prefault) stop() {
	if p == nil {
		return
	}
	p.cancel()
	<-p.done
}

// setThreads gives every thread of the process attr's scheduling. Threads the process starts meanwhile inherit the
// policy of the thread that starts them, so the tasks are listed again until a pass finds no new one. A thread that
// exited is no error.
func (p *prefault) setThreads(attr unix.SchedAttr) error {
	seen := map[int]bool{}
	var errs []error
	for pass := 0; pass < 5; pass++ {
		tids, err := p.tasks()
		if err != nil {
			return err
		}
		fresh := 0
		for _, tid := range tids {
			if seen[tid] {
				continue
			}
			seen[tid] = true
			fresh++
			a := attr
			if err := unix.SchedSetAttr(tid, &a, 0); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("thread %d: %w", tid, err))
			}
		}
		if fresh == 0 {
			break
		}
	}
	return errors.Join(errs...)
}

// tasks lists the process's threads through its /proc directory opened at the start: once the process is gone, the
// listing fails, even if its pid was given to another.
func (p *prefault) tasks() ([]int, error) {
	fd, err := unix.Openat(int(p.proc.Fd()), "task", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("the destination's threads: %w", err)
	}
	d := os.NewFile(uintptr(fd), "task")
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("the destination's threads: %w", err)
	}
	tids := make([]int, 0, len(names))
	for _, n := range names {
		if tid, err := strconv.Atoi(n); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

// hasCapSysNice reports whether this process may raise another's scheduling priority (CAP_SYS_NICE, effective).
func hasCapSysNice() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[unix.CAP_SYS_NICE/32].Effective&(1<<(unix.CAP_SYS_NICE%32)) != 0
}
