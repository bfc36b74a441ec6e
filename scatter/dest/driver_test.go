package dest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/qemu"
	"github.com/vmscatter/vmscatter/scatter/host"
	"github.com/vmscatter/vmscatter/scatter/secure"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// These tests drive the receiver's per-VM driver with a scripted sender on loopback and a real destination QEMU
// (SeaBIOS only, TCG): the paths that need no migration stream. The stream's paths run in package scatter's
// end-to-end tests, with the real sender.

var testKey = []byte("0123456789abcdef0123456789abcdef")

// waitBound bounds every wait for something the receiver does: a test fails when it runs out, it never measures.
const waitBound = 30 * time.Second

func requireQEMU(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("skipped in -short mode: the driver's tests run a real QEMU")
	}
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 is not installed (make deps installs it)")
	}
	return bin
}

// guestArgv is a source's command line as OPEN carries it: a BIOS-only guest.
func guestArgv(bin, name string) []string {
	return []string{bin, "-accel", "tcg", "-machine", "pc", "-m", "32", "-nodefaults", "-display", "none",
		"-no-user-config", "-name", name, "-qmp", "unix:/run/vmscatter-source/" + name + ".qmp,server=on,wait=off"}
}

type testReceiver struct {
	t       *testing.T
	addr    string
	dataDir string
	log     *syncBuffer
	cancel  context.CancelFunc
	done    chan struct{}
}

// startReceiver serves a receiver on dataDir (shared by the restarts of one test) on 127.0.0.1.
func startReceiver(t *testing.T, dataDir string, mutate func(*Config)) *testReceiver {
	t.Helper()
	buf := &syncBuffer{}
	cfg := Config{DataDir: dataDir, Key: testKey,
		Log: slog.New(slog.NewTextHandler(io.MultiWriter(buf, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if mutate != nil {
		mutate(&cfg)
	}
	r, err := NewReceiver(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tr := &testReceiver{t: t, addr: ln.Addr().String(), dataDir: dataDir, log: buf, cancel: cancel, done: make(chan struct{})}
	go func() { _ = r.Serve(ctx, ln); close(tr.done) }()
	t.Cleanup(tr.stop)
	return tr
}

// stop shuts the receiver down (as SIGTERM does) and waits for Serve to return.
func (tr *testReceiver) stop() {
	tr.cancel()
	select {
	case <-tr.done:
	case <-time.After(2 * waitBound):
		tr.t.Fatal("the receiver did not stop")
	}
}

// killDestinations kills, by the pids in their pidfiles, the QEMUs a test left under dataDir.
func killDestinations(dataDir string) {
	files, _ := filepath.Glob(filepath.Join(dataDir, "*", "qemu.pid"))
	for _, f := range files {
		if pid := host.RunningPID(f); pid > 0 && host.IsQEMU(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func newDataDir(t *testing.T) string {
	dir := t.TempDir()
	t.Cleanup(func() { killDestinations(dir) })
	return dir
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fakeSender plays the sender's side of one receiver: a control connection holding the session open, and VM
// connections that write the frames a sender would.
type fakeSender struct {
	t       *testing.T
	addr    string
	session wire.SessionID
	control *secure.Conn
}

func newSender(t *testing.T, addr string) *fakeSender {
	t.Helper()
	s := &fakeSender{t: t, addr: addr}
	s.session[0], s.session[15] = 0x5c, 0x01
	s.control = s.dial(secure.RoleControl)
	if err := s.control.SendJSON(wire.FrameHello, wire.HelloMsg{Session: s.session, Sender: "test"}); err != nil {
		t.Fatal(err)
	}
	var info wire.InfoMsg
	if err := s.control.Expect(context.Background(), wire.FrameInfo, &info); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *fakeSender) dial(role byte) *secure.Conn {
	s.t.Helper()
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		s.t.Fatal(err)
	}
	sc, err := secure.ClientHandshake(c, testKey, role)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { sc.Close() })
	return sc
}

// vmConn is one scripted VM connection.
type vmConnT struct {
	t  *testing.T
	sc *secure.Conn
}

func (s *fakeSender) open(bin, vm string, epoch uint64, run bool) *vmConnT {
	s.t.Helper()
	c := &vmConnT{t: s.t, sc: s.dial(secure.RoleVM)}
	c.send(wire.FrameOpen, wire.OpenMsg{Session: s.session, VM: vm, Epoch: epoch, Argv: guestArgv(bin, vm), Run: run})
	return c
}

func (s *fakeSender) attach(vm string, epoch uint64) *vmConnT {
	s.t.Helper()
	c := &vmConnT{t: s.t, sc: s.dial(secure.RoleVM)}
	c.send(wire.FrameAttach, wire.AttachMsg{Session: s.session, VM: vm, Epoch: epoch})
	return c
}

func (c *vmConnT) send(t wire.FrameType, v any) {
	c.t.Helper()
	if err := c.sc.SendJSON(t, v); err != nil {
		c.t.Fatalf("sending %s: %v", t, err)
	}
}

// expect reads the next frame that is not the return path and checks its type; v gets its payload.
func (c *vmConnT) expect(want wire.FrameType, v any) {
	c.t.Helper()
	_ = c.sc.NetConn().SetReadDeadline(time.Now().Add(waitBound))
	defer c.sc.NetConn().SetReadDeadline(time.Time{})
	for {
		t, b, err := c.sc.Recv()
		if err != nil {
			c.t.Fatalf("waiting for %s: %v", want, err)
		}
		if t == wire.FrameReturnPath {
			continue
		}
		if t != want {
			c.t.Fatalf("got %s %s, want %s", t, b, want)
		}
		if v != nil {
			if err := json.Unmarshal(b, v); err != nil {
				c.t.Fatalf("%s payload %q: %v", t, b, err)
			}
		}
		return
	}
}

// expectClosed waits for the receiver to close the connection.
func (c *vmConnT) expectClosed() {
	c.t.Helper()
	_ = c.sc.NetConn().SetReadDeadline(time.Now().Add(waitBound))
	for {
		t, b, err := c.sc.Recv()
		if err != nil {
			return
		}
		if t != wire.FrameReturnPath {
			c.t.Fatalf("got %s %s, want the connection closed", t, b)
		}
	}
}

func (c *vmConnT) query() wire.StateMsg {
	c.t.Helper()
	c.send(wire.FrameQuery, wire.EpochMsg{})
	var st wire.StateMsg
	c.expect(wire.FrameState, &st)
	return st
}

// eventually waits, within waitBound, until cond holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitBound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitBound)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil && host.IsQEMU(pid) }

// readRecord reads a VM's commit record.
func readRecord(t *testing.T, dataDir, vm string) record {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, vm, recordName+".json"))
	if err != nil {
		t.Fatalf("commit record of %s: %v", vm, err)
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

func wantRecord(t *testing.T, dataDir, vm, phase string, epoch uint64) {
	t.Helper()
	if rec := readRecord(t, dataDir, vm); rec.Phase != phase || rec.Epoch != epoch {
		t.Fatalf("journal of %s: %s e=%d, want %s e=%d", vm, rec.Phase, rec.Epoch, phase, epoch)
	}
}

// leftDestination starts, in the VM's directory, the paused QEMU an earlier receiver would have left (-S: it never
// ran), with the record rec, as a receiver that died would leave them. It returns the QEMU's pid.
func leftDestination(t *testing.T, bin, dataDir, vm string, rec record) int {
	t.Helper()
	dir := filepath.Join(dataDir, vm)
	p := qemu.PathsIn(dir)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-accel", "tcg", "-machine", "pc", "-m", "32", "-nodefaults", "-display", "none",
		"-no-user-config", "-name", vm, "-S", "-qmp", "unix:"+p.QMP+",server=on,wait=off", "-pidfile", p.PIDFile)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait() // reaped, as the earlier receiver's Wait would
	t.Cleanup(func() { _ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL) })
	eventually(t, "the left QEMU writes its pidfile", func() bool { return host.RunningPID(p.PIDFile) == cmd.Process.Pid })
	eventually(t, "the left QEMU opens its QMP socket", func() bool { _, err := os.Stat(p.QMP); return err == nil })
	if err := putRecord(dir, rec); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// OPEN starts a paused destination and journals Prepare; ABORT tears it down: RolledBack is journaled, the process
// is gone, and ABORTED says so. The epoch stays resolved to the source: ABORT and START again get ABORTED again.
func TestOpenThenAbort(t *testing.T) {
	bin := requireQEMU(t)
	data := newDataDir(t)
	r := startReceiver(t, data, nil)
	s := newSender(t, r.addr)
	c := s.open(bin, "vm1", 5, true)
	var ready wire.ReadyMsg
	c.expect(wire.FrameReady, &ready)
	if ready.Epoch != 5 || !alive(ready.PID) {
		t.Fatalf("READY %+v: want epoch 5 and a live QEMU", ready)
	}
	wantRecord(t, data, "vm1", "Prepare", 5)
	if st := c.query(); st.Epoch != 5 || st.Phase != "Prepare" || st.Dest != "inmigrate" {
		t.Errorf("STATE %+v, want the journal's Prepare e=5 and an incoming destination", st)
	}

	c.send(wire.FrameAbort, wire.ErrorMsg{Epoch: 5, Error: "the operator said no"})
	var ab wire.ErrorMsg
	c.expect(wire.FrameAborted, &ab)
	if ab.Epoch != 5 || !strings.Contains(ab.Error, "the operator said no") {
		t.Errorf("ABORTED %+v", ab)
	}
	if alive(ready.PID) {
		t.Errorf("ABORTED said before the destination (pid %d) was gone", ready.PID)
	}
	wantRecord(t, data, "vm1", "RolledBack", 5)

	c.send(wire.FrameAbort, wire.ErrorMsg{Epoch: 5})
	c.expect(wire.FrameAborted, nil)
	c.send(wire.FrameStart, wire.EpochMsg{Epoch: 5})
	c.expect(wire.FrameAborted, nil)
	if st := c.query(); st.Epoch != 5 || st.Phase != "RolledBack" || st.Dest != "gone" {
		t.Errorf("STATE %+v", st)
	}
}

// The sender's connection breaks before LOADED: the destination is torn down and the epoch resolved to the
// source, so a START of it that comes later (on ATTACH) is answered ABORTED.
func TestLostConnectionBeforeLoadedTearsDown(t *testing.T) {
	bin := requireQEMU(t)
	data := newDataDir(t)
	r := startReceiver(t, data, nil)
	s := newSender(t, r.addr)
	c := s.open(bin, "vm1", 2, true)
	var ready wire.ReadyMsg
	c.expect(wire.FrameReady, &ready)
	c.sc.Close()
	eventually(t, "the destination is torn down", func() bool { return !alive(ready.PID) })
	eventually(t, "RolledBack is journaled", func() bool { return readRecord(t, data, "vm1").Phase == "RolledBack" })

	a := s.attach("vm1", 2)
	a.send(wire.FrameStart, wire.EpochMsg{Epoch: 2})
	a.expect(wire.FrameAborted, nil)
}

// A second OPEN of another epoch while a migration is in progress is refused; the same epoch's OPEN again on a new
// connection takes the VM over: the first connection is lost (PeerLost), so the destination that had not loaded
// is torn down, and ABORTED reaches the new connection. A later epoch then opens anew.
func TestOpenWhileInProgress(t *testing.T) {
	bin := requireQEMU(t)
	data := newDataDir(t)
	r := startReceiver(t, data, nil)
	s := newSender(t, r.addr)
	c := s.open(bin, "vm1", 4, true)
	var ready wire.ReadyMsg
	c.expect(wire.FrameReady, &ready)

	other := s.open(bin, "vm1", 5, true)
	var e wire.ErrorMsg
	other.expect(wire.FrameError, &e)
	if !strings.Contains(e.Error, "in progress") {
		t.Errorf("ERROR %q", e.Error)
	}
	other.expectClosed()
	if !alive(ready.PID) {
		t.Fatal("a refused OPEN touched the migration in progress")
	}

	again := s.open(bin, "vm1", 4, true)
	again.expect(wire.FrameAborted, nil)
	c.expectClosed()
	if alive(ready.PID) {
		t.Fatal("ABORTED before the destination was gone")
	}

	next := s.open(bin, "vm1", 6, false)
	var r6 wire.ReadyMsg
	next.expect(wire.FrameReady, &r6)
	if r6.Epoch != 6 || r6.PID == ready.PID {
		t.Fatalf("READY %+v for the new epoch", r6)
	}
	stale := s.open(bin, "vm1", 3, true)
	stale.expect(wire.FrameError, nil)
}

// An ATTACH for a migration the receiver never heard of: QUERY says so, START is refused, ABORT is answered
// ABORTED (and journaled, so that the epoch stays resolved).
func TestAttachUnknownMigration(t *testing.T) {
	requireQEMU(t)
	data := newDataDir(t)
	r := startReceiver(t, data, nil)
	s := newSender(t, r.addr)
	a := s.attach("ghost", 9)
	if st := a.query(); st.Epoch != 0 || st.Phase != "" || st.Dest != "gone" {
		t.Errorf("STATE %+v, want no record and no destination", st)
	}
	a.send(wire.FrameStart, wire.EpochMsg{Epoch: 9})
	a.expect(wire.FrameError, nil)
	a.send(wire.FrameAbort, wire.ErrorMsg{Epoch: 9, Error: "recover: tear down"})
	a.expect(wire.FrameAborted, nil)
	wantRecord(t, data, "ghost", "RolledBack", 9)
	a.send(wire.FrameStart, wire.EpochMsg{Epoch: 9})
	a.expect(wire.FrameAborted, nil)
}

// A receiver restarts with a destination journaled Loaded: it adopts it and never reaps it, through its own
// shutdown too; the sender's ATTACH and START start it, and COMMIT ends the migration.
func TestRestartAtLoadedWaitsAndStartsOnAttach(t *testing.T) {
	bin := requireQEMU(t)
	data := newDataDir(t)
	pid := leftDestination(t, bin, data, "vm1", record{Phase: "Loaded", Epoch: 7, Run: true})

	r1 := startReceiver(t, data, nil)
	s := newSender(t, r1.addr)
	a := s.attach("vm1", 7)
	if st := a.query(); st.Epoch != 7 || st.Phase != "Loaded" || st.Dest != "prelaunch" {
		t.Fatalf("STATE %+v, want Loaded e=7 and the paused destination", st)
	}
	r1.stop() // SIGTERM while Loaded: not a safe point to tear down, and no need to wait
	a.expectClosed()
	if !alive(pid) {
		t.Fatal("a stopping receiver tore down a loaded destination")
	}
	wantRecord(t, data, "vm1", "Loaded", 7)

	r2 := startReceiver(t, data, nil)
	s = newSender(t, r2.addr)
	a = s.attach("vm1", 7)
	a.send(wire.FrameStart, wire.EpochMsg{Epoch: 7})
	var running wire.RunningMsg
	a.expect(wire.FrameRunning, &running)
	if running.Epoch != 7 || running.Status != "running" || running.PID != pid {
		t.Fatalf("RUNNING %+v, want epoch 7, running, pid %d", running, pid)
	}
	wantRecord(t, data, "vm1", "Finish", 7)
	a.send(wire.FrameStart, wire.EpochMsg{Epoch: 7}) // a START sent again is answered again
	a.expect(wire.FrameRunning, nil)
	a.send(wire.FrameAbort, wire.ErrorMsg{Epoch: 7}) // too late: the VM is the destination's
	a.expect(wire.FrameError, nil)
	a.send(wire.FrameCommit, wire.EpochMsg{Epoch: 7})
	var done wire.DoneMsg
	a.expect(wire.FrameDone, &done)
	if done.Epoch != 7 {
		t.Errorf("DONE %+v", done)
	}
	wantRecord(t, data, "vm1", "Committed", 7)
	r2.stop()
	if !alive(pid) {
		t.Fatal("the migrated VM did not outlive the receiver")
	}
}

// A receiver restarts after it journaled Finish (START received, `cont` may or may not have run): it starts the
// destination and never hands it back.
func TestRestartAtFinishStarts(t *testing.T) {
	bin := requireQEMU(t)
	data := newDataDir(t)
	pid := leftDestination(t, bin, data, "vm1", record{Phase: "Finish", Epoch: 3, Run: true})
	r := startReceiver(t, data, nil)
	s := newSender(t, r.addr)
	a := s.attach("vm1", 3)
	a.send(wire.FrameStart, wire.EpochMsg{Epoch: 3})
	var running wire.RunningMsg
	a.expect(wire.FrameRunning, &running)
	if running.Status != "running" || running.PID != pid {
		t.Fatalf("RUNNING %+v", running)
	}
	if st := a.query(); st.Phase != "Finish" || st.Dest != "running" {
		t.Errorf("STATE %+v", st)
	}
}

// A receiver restarts with a destination left from before LOADED (journal Prepare): it tears it down.
func TestRestartAtPrepareTearsDown(t *testing.T) {
	bin := requireQEMU(t)
	data := newDataDir(t)
	pid := leftDestination(t, bin, data, "vm1", record{Phase: "Prepare", Epoch: 4, Run: true})
	startReceiver(t, data, nil)
	eventually(t, "the unfinished destination is killed", func() bool { return !alive(pid) })
	eventually(t, "RolledBack is journaled", func() bool { return readRecord(t, data, "vm1").Phase == "RolledBack" })
}

// A receiver restarts with an epoch journaled RolledBack whose destination still exists (it died between the
// journal entry and the kill): the destination is killed, and a START of that epoch is answered ABORTED.
func TestRestartAtRolledBackRefusesStart(t *testing.T) {
	bin := requireQEMU(t)
	data := newDataDir(t)
	pid := leftDestination(t, bin, data, "vm1", record{Phase: "RolledBack", Epoch: 8, Run: true})
	r := startReceiver(t, data, nil)
	eventually(t, "the destination of a rolled-back epoch is killed", func() bool { return !alive(pid) })
	s := newSender(t, r.addr)
	a := s.attach("vm1", 8)
	a.send(wire.FrameStart, wire.EpochMsg{Epoch: 8})
	var ab wire.ErrorMsg
	a.expect(wire.FrameAborted, &ab)
	if ab.Epoch != 8 {
		t.Errorf("ABORTED %+v", ab)
	}
	if st := a.query(); st.Epoch != 8 || st.Phase != "RolledBack" || st.Dest != "gone" {
		t.Errorf("STATE %+v", st)
	}
}

// A receiver that stops (SIGTERM) while a destination waits for its stream tears it down and says ABORTED before
// it closes the connection.
func TestStopBeforeLoadedAbortsFirst(t *testing.T) {
	bin := requireQEMU(t)
	data := newDataDir(t)
	r := startReceiver(t, data, nil)
	s := newSender(t, r.addr)
	c := s.open(bin, "vm1", 1, true)
	var ready wire.ReadyMsg
	c.expect(wire.FrameReady, &ready)
	go r.stop()
	var ab wire.ErrorMsg
	c.expect(wire.FrameAborted, &ab)
	if !strings.Contains(ab.Error, "stopping") || alive(ready.PID) {
		t.Errorf("ABORTED %+v; destination alive: %v", ab, alive(ready.PID))
	}
	c.expectClosed()
	<-r.done
	wantRecord(t, data, "vm1", "RolledBack", 1)
}

// The phase bounds: a destination whose sender sends nothing after READY is torn down when Perform's bound runs
// out (counted from the last frame), and ABORTED says why.
func TestPerformBoundTearsDown(t *testing.T) {
	bin := requireQEMU(t)
	data := newDataDir(t)
	r := startReceiver(t, data, func(c *Config) { c.Bounds.Perform = 300 * time.Millisecond })
	s := newSender(t, r.addr)
	c := s.open(bin, "vm1", 1, true)
	c.expect(wire.FrameReady, nil)
	var ab wire.ErrorMsg
	c.expect(wire.FrameAborted, &ab)
	if !strings.Contains(ab.Error, "timed out in Perform") {
		t.Errorf("ABORTED %+v", ab)
	}
}

// An ATTACH beside the VM's connection (`vmscatter recover` asking) is answered and changes nothing: the
// destination waiting for its stream stays, and the first connection still speaks for the migration. A frame other
// than QUERY on the attached connection takes the VM over, and the first connection is lost.
func TestQueryBesideConnectionChangesNothing(t *testing.T) {
	bin := requireQEMU(t)
	data := newDataDir(t)
	r := startReceiver(t, data, nil)
	s := newSender(t, r.addr)
	c := s.open(bin, "vm1", 3, true)
	var ready wire.ReadyMsg
	c.expect(wire.FrameReady, &ready)
	side := s.attach("vm1", 3)
	if st := side.query(); st.Epoch != 3 || st.Phase != "Prepare" {
		t.Fatalf("STATE %+v", st)
	}
	if st := c.query(); st.Phase != "Prepare" || !alive(ready.PID) {
		t.Fatalf("the first connection lost the migration to a QUERY: STATE %+v", st)
	}
	side.send(wire.FrameAbort, wire.ErrorMsg{Epoch: 3, Error: "recover: the source keeps it"})
	side.expect(wire.FrameAborted, nil)
	c.expectClosed()
	if alive(ready.PID) {
		t.Fatal("ABORTED while the destination lives")
	}
}
