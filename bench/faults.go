package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/vmscatter/vmscatter/bench/lab"
	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/commit"
	"github.com/vmscatter/vmscatter/scatter/source"
	"golang.org/x/sys/unix"
)

// Faults in the lab, for the fault campaign (campaign.go, docs/reliability.md): where a VM's migration stands seen
// from outside (Where: the sender's journal, the source QEMU's run state on a spare QMP socket, the receivers'
// journals), the faults themselves (KillDestination, Partition; signals to the sender through SendRun; receivers
// through KillReceiver and StartReceiver), and the census after them (Copies: every QEMU process of a VM on any host
// of the lab, with its run state).
//
// The spare QMP socket: the sender holds the guest's own QMP socket for the whole run (QEMU serves one client per
// socket), so a guest started for a campaign has a second one, WatchSocket. The receiver rewrites it like any
// other (qemu.RewriteCommandLine: DATA-DIR/<vm>/qmp-1.sock), which gives every destination a spare socket too.

// WatchSocket is the spare QMP socket of a guest started with WatchArgs.
func (c *Cluster) WatchSocket(vm string) string { return filepath.Join(c.GuestDir(vm), "watch.sock") }

// WatchArgs are the QEMU arguments that give guest vm its spare QMP socket.
func (c *Cluster) WatchArgs(vm string) []string {
	return []string{"-qmp", "unix:" + c.WatchSocket(vm) + ",server=on,wait=off"}
}

// Where is where one VM's migration stands, seen from outside. The phases are commit.Phase's names, as the
// journals write them.
type Where struct {
	Sender    string       `json:"sender"`             // the sender's journal; "" before its first record (Begin)
	Source    qmp.RunState `json:"source"`             // the source QEMU's run state; "" when it did not answer
	Migrating bool         `json:"migrating"`          // the source QEMU's migration started: its stream flows
	Completed bool         `json:"completed"`          // the source QEMU's migration completed: its stream is all out
	Receiver  string       `json:"receiver,omitempty"` // the receiver's journal, "" without a record
	Target    int          `json:"target"`             // the receiver's index; -1 until the sender journaled it
}

// Label names the moment for the campaign's figures: the sender's phase, with Perform split by where the source
// QEMU is (the prime still running and the source not yet migrating; its stream flowing; its stream all out, START
// not yet decided), and the receiver's phase once it has a record.
func (w Where) Label() string {
	l := w.Sender
	switch {
	case w.Sender == "":
		l = "Begin"
	case w.Sender == commit.Perform.String() && w.Completed:
		l = "Perform, source completed"
	case w.Sender == commit.Perform.String() && w.Migrating:
		l = "Perform, streaming"
	case w.Sender == commit.Perform.String():
		l = "Perform, priming"
	}
	if w.Receiver != "" {
		l += " · receiver " + w.Receiver
	}
	return l
}

func (w Where) String() string {
	s := fmt.Sprintf("sender %s, source %s", orNone(w.Sender), orNone(string(w.Source)))
	switch {
	case w.Completed:
		s += " (migration completed)"
	case w.Migrating:
		s += " (migrating)"
	}
	if w.Target >= 0 {
		s += fmt.Sprintf(", receiver t%d %s", w.Target+1, orNone(w.Receiver))
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// SenderRecord reads the sender's journal record of vm: the latest epoch's among the runs under StateDir.
func (c *Cluster) SenderRecord(vm string) (source.VMRecord, bool) {
	var best source.VMRecord
	var found bool
	files, _ := filepath.Glob(filepath.Join(c.StateDir(), "*", "vm-"+vm+".json"))
	for _, f := range files {
		var r source.VMRecord
		if b, err := os.ReadFile(f); err != nil || json.Unmarshal(b, &r) != nil {
			continue // being replaced: the journal renames a whole record over the old one, so the next read sees it
		}
		if !found || r.Epoch > best.Epoch {
			best, found = r, true
		}
	}
	return best, found
}

// ReceiverPhase reads target i's journal of vm (DATA-DIR/<vm>/commit.json): its phase and epoch.
func (c *Cluster) ReceiverPhase(i int, vm string) (phase string, epoch uint64) {
	var r struct {
		Phase string `json:"phase"`
		Epoch uint64 `json:"epoch"`
	}
	b, err := os.ReadFile(filepath.Join(c.DestinationDir(i, vm), "commit.json"))
	if err != nil || json.Unmarshal(b, &r) != nil {
		return "", 0
	}
	return r.Phase, r.Epoch
}

// VMWatch follows one VM's migration from outside: the journals (woken by inotify as each record is renamed into
// place, so a fault can strike within a millisecond of a phase), and the source QEMU on its spare QMP socket (its
// MIGRATION events). Close it before anything else dials that socket.
type VMWatch struct {
	c         *Cluster
	vm        string
	q         *qmp.Client
	migrating atomic.Bool
	completed atomic.Bool
	wake      chan struct{} // a journal record changed (capacity 1)
	stop      context.CancelFunc
	done      chan struct{} // the inotify reader has ended
}

// Watch starts following guest vm, which must have been started with WatchArgs.
func (c *Cluster) Watch(ctx context.Context, vm string) (*VMWatch, error) {
	if err := os.MkdirAll(c.StateDir(), 0o700); err != nil { // as the sender's journal makes it
		return nil, err
	}
	q, err := qmp.Dial(ctx, c.WatchSocket(vm))
	if err != nil {
		return nil, fmt.Errorf("the spare QMP socket of %s: %w", vm, err)
	}
	ctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	w := &VMWatch{c: c, vm: vm, q: q, stop: stop, wake: make(chan struct{}, 1), done: make(chan struct{})}
	sub := q.Subscribe(qmp.EventMigration)
	go func() {
		defer sub.Close()
		for {
			ev, err := sub.Next(ctx)
			if errors.Is(err, qmp.ErrEventsLost) {
				continue
			}
			if err != nil {
				return
			}
			var d struct {
				Status qmp.MigrationStatus `json:"status"`
			}
			if json.Unmarshal(ev.Data, &d) != nil {
				continue
			}
			switch d.Status {
			case qmp.MigrationSetup, qmp.MigrationActive:
				w.migrating.Store(true)
			case qmp.MigrationCompleted:
				w.completed.Store(true)
				w.poke()
			}
		}
	}()
	if err := w.watchJournals(ctx); err != nil {
		stop()
		q.Close()
		return nil, err
	}
	return w, nil
}

func (w *VMWatch) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// watchJournals starts the inotify reader: the sender's state dir and each run directory in it, each receiver's
// data dir and the VM's directory in it. Records are renamed into place (IN_MOVED_TO); a new directory
// (IN_CREATE) is watched in turn.
func (w *VMWatch) watchJournals(ctx context.Context) error {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("inotify: %w", err)
	}
	const mask = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_CLOSE_WRITE | unix.IN_ONLYDIR
	dirs := map[int]string{}
	add := func(dir string) {
		if wd, err := unix.InotifyAddWatch(fd, dir, mask); err == nil {
			dirs[wd] = dir
		}
	}
	roots := map[string]bool{w.c.StateDir(): true}
	add(w.c.StateDir())
	runs, _ := filepath.Glob(filepath.Join(w.c.StateDir(), "*"))
	for _, d := range runs {
		add(d)
	}
	for i := range w.c.Targets {
		roots[w.c.DataDir(i)] = true
		add(w.c.DataDir(i))
		add(w.c.DestinationDir(i, w.vm))
	}
	go func() {
		defer close(w.done)
		defer unix.Close(fd)
		buf := make([]byte, 64<<10)
		for ctx.Err() == nil {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if n, err := unix.Poll(pfd, 100); err != nil || n == 0 {
				continue
			}
			n, err := unix.Read(fd, buf)
			if err != nil {
				continue
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
				off += unix.SizeofInotifyEvent + int(ev.Len)
				dir := dirs[int(ev.Wd)]
				if ev.Mask&unix.IN_CREATE != 0 && ev.Mask&unix.IN_ISDIR != 0 && roots[dir] &&
					(dir == w.c.StateDir() || name == w.vm) {
					add(filepath.Join(dir, name))
				}
			}
			w.poke()
		}
	}()
	return nil
}

// Close stops following and lets go of the spare socket.
func (w *VMWatch) Close() {
	w.stop()
	<-w.done
	w.q.Close()
}

// journals is where the VM stands by the journals and the source's MIGRATION events alone: no QMP round trip.
func (w *VMWatch) journals() Where {
	at := Where{Target: -1, Migrating: w.migrating.Load(), Completed: w.completed.Load()}
	if r, ok := w.c.SenderRecord(w.vm); ok {
		at.Sender = r.Phase
		at.Target = w.c.TargetIndex(r.Target)
	}
	if at.Target >= 0 {
		at.Receiver, _ = w.c.ReceiverPhase(at.Target, w.vm)
	}
	return at
}

// Now is where the VM stands, with the source QEMU's run state.
func (w *VMWatch) Now(ctx context.Context) Where {
	at := w.journals()
	at.Source = w.sourceState(ctx)
	at.Completed = at.Completed || at.Source == qmp.RunStatePostMigrate
	return at
}

func (w *VMWatch) sourceState(ctx context.Context) qmp.RunState {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, _ := w.q.Status(ctx)
	return st
}

// Point is a moment of a run that a fault waits for.
type Point string

// The points, in the order a migration passes them.
const (
	AtBegin     Point = "begin"     // send started; the VM has no journal record yet (inventory, scan, placement)
	AtPrepare   Point = "prepare"   // the sender journaled Prepare: OPEN sent, the destination starting
	AtPerform   Point = "perform"   // the sender journaled Perform: the stream flows
	AtCompleted Point = "completed" // the source QEMU completed its migration: its stream is all out, no START yet
	AtLoaded    Point = "loaded"    // the receiver journaled Loaded: the destination holds the whole VM, paused
	AtFinish    Point = "finish"    // the sender journaled Finish: START decided and sent
	AtConfirm   Point = "confirm"   // the sender journaled Confirm: RUNNING heard, the source QEMU quits
)

// forward ranks a sender phase on a migration's way forward; 0 for Begin, -1 for the way back and the ends
// other than Committed.
func forward(phase string) int {
	if phase == "" {
		return 0
	}
	p, _ := commit.ParsePhase(phase)
	switch p {
	case commit.Prepare:
		return 1
	case commit.Perform:
		return 2
	case commit.Loaded:
		return 3
	case commit.Finish:
		return 4
	case commit.Confirm:
		return 5
	case commit.Committed:
		return 6
	}
	return -1
}

// reached reports whether the migration is at point p or past it, on its way forward.
func (p Point) reached(at Where) bool {
	f := forward(at.Sender)
	switch p {
	case AtBegin:
		return true
	case AtPrepare:
		return f >= 1
	case AtPerform:
		return f >= 2
	case AtCompleted:
		return f >= 4 || (f >= 2 && at.Completed)
	case AtLoaded:
		return f >= 4 || (f >= 2 && at.Receiver == commit.Loaded.String())
	case AtFinish:
		return f >= 4
	case AtConfirm:
		return f >= 5
	}
	return false
}

// WaitFor waits until the VM's migration reaches point p and returns where it stands then, by the journals and
// the source's events (Where.Source is left empty: a QMP round trip would delay the fault). It reports false if
// the sender exits (ended closes) or the bound passes first.
func (w *VMWatch) WaitFor(ctx context.Context, p Point, ended <-chan struct{}, bound time.Duration) (Where, bool) {
	deadline := time.After(bound)
	tick := time.NewTicker(20 * time.Millisecond) // in case a record was written before its directory was watched
	defer tick.Stop()
	for {
		at := w.journals()
		if p.reached(at) {
			return at, true
		}
		select {
		case <-w.wake:
		case <-tick.C:
		case <-ended:
			at = w.journals()
			return at, p.reached(at)
		case <-ctx.Done():
			return at, false
		case <-deadline:
			return at, false
		}
	}
}

// KillDestination kills VM vm's destination QEMU on target i with SIGKILL, by the PID in its pidfile
// (DATA-DIR/<vm>/qemu.pid), once it checked that this PID is that VM's QEMU. It returns the PID, 0 if none runs.
func (c *Cluster) KillDestination(i int, vm string) (int, error) {
	b, err := os.ReadFile(filepath.Join(c.DestinationDir(i, vm), "qemu.pid"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pidfile of %s on %s: %q", vm, c.Targets[i].Name, b)
	}
	p, ok := readProc(pid)
	if !ok || p.zombie || p.vm != vm {
		return 0, nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return 0, err
	}
	return pid, nil
}

// Partition makes host h's link drop every packet, both ways, silently: no reset, no ICMP, as a cut cable or a
// dead switch port; keep is the shaping the link had, which goes on applying to what Heal lets through. (The
// lab's loss is a tc filter that drops at random, 100% here, on the host's egress and on the bridge's port towards
// it; it needs no sch_netem.)
func Partition(h *lab.Host, keep lab.Shaping) error {
	cut := keep
	cut.Loss = 100
	if err := h.Shape(cut); err != nil {
		return err
	}
	return h.ShapeIngress(lab.Shaping{Loss: 100})
}

// Heal ends a Partition: the link is shaped by keep again.
func Heal(h *lab.Host, keep lab.Shaping) error {
	return errors.Join(h.Shape(keep), h.ShapeIngress(lab.Shaping{}))
}

// Copy is one QEMU process of a VM, found by its command line on any host of the cluster.
type Copy struct {
	Host  string       `json:"host"` // "src" or a target's name
	PID   int          `json:"pid"`
	State qmp.RunState `json:"state"` // from its spare QMP socket; "" if that did not answer
	dir   string       // where its files are: the guest's directory, or DATA-DIR/<vm>
	spare string       // its spare QMP socket
}

// SerialLog is the copy's console log.
func (cp Copy) SerialLog() string { return filepath.Join(cp.dir, "serial.log") }

// Copies lists every live QEMU process of VM vm that belongs to this cluster (its command line names the VM and
// a path of the cluster's), with its run state asked on its spare QMP socket (Close a VMWatch of the VM first).
// Zombies are not copies.
func (c *Cluster) Copies(ctx context.Context, vm string) ([]Copy, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []Copy
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, ok := readProc(pid)
		if !ok || p.zombie || p.vm != vm {
			continue
		}
		cp := Copy{PID: pid}
		switch {
		case p.mentions(c.GuestDir(vm) + "/"):
			cp.Host, cp.dir = c.Source.Name, c.GuestDir(vm)
		default:
			for i, t := range c.Targets {
				if p.mentions(c.DestinationDir(i, vm) + "/") {
					cp.Host, cp.dir = t.Name, c.DestinationDir(i, vm)
				}
			}
		}
		if cp.Host == "" {
			if !p.mentions(c.cfg.Dir + "/") {
				continue // another lab's guest of the same name
			}
			cp.Host = "?"
		}
		for _, s := range p.qmp {
			if filepath.Base(s) != "qmp.sock" {
				cp.spare = s
			}
		}
		if cp.spare != "" {
			qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if q, err := qmp.Dial(qctx, cp.spare); err == nil {
				cp.State, _ = q.Status(qctx)
				q.Close()
			}
			cancel()
		}
		out = append(out, cp)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out, nil
}

// proc is what the census reads of a process.
type proc struct {
	argv   []string
	vm     string   // the value of -name, for a qemu-system process
	qmp    []string // its QMP unix sockets
	zombie bool
}

func (p proc) mentions(path string) bool {
	for _, a := range p.argv {
		if strings.Contains(a, path) {
			return true
		}
	}
	return false
}

// readProc reads a qemu-system process's command line and state; ok is false for any other process.
func readProc(pid int) (proc, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(b) == 0 {
		return proc{}, false
	}
	p := proc{argv: strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")}
	if !strings.HasPrefix(filepath.Base(p.argv[0]), "qemu-system") {
		return proc{}, false
	}
	for i := 1; i+1 < len(p.argv); i++ {
		switch p.argv[i] {
		case "-name":
			p.vm = p.argv[i+1]
		case "-qmp":
			if v, ok := strings.CutPrefix(p.argv[i+1], "unix:"); ok {
				p.qmp = append(p.qmp, strings.Split(v, ",")[0])
			}
		}
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return proc{}, false // gone meanwhile
	}
	if i := strings.LastIndexByte(string(st), ')'); i >= 0 && i+2 < len(st) {
		p.zombie = st[i+2] == 'Z' || st[i+2] == 'X'
	}
	return p, true
}
