package dest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmscatter/vmscatter/qemu/qemutest"
	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

func TestPrefaultPaths(t *testing.T) {
	ram := qmp.MemoryBackend{ID: "pc.ram", Size: 64 << 20, Reserve: true}
	for _, c := range []struct {
		name      string
		backends  []qmp.MemoryBackend
		devs      []qmp.MemoryDevice
		wantPaths []string
		wantBytes int64
	}{
		{"the main RAM", []qmp.MemoryBackend{ram}, nil, []string{"/objects/pc.ram"}, 64 << 20},
		{"allocated already (-mem-prealloc)", []qmp.MemoryBackend{{ID: "pc.ram", Size: 1, Reserve: true, Prealloc: true}},
			nil, nil, 0},
		{"shared", []qmp.MemoryBackend{{ID: "shm", Size: 1, Reserve: true, Share: true}}, nil, nil, 0},
		{"no reserved swap", []qmp.MemoryBackend{{ID: "m", Size: 1}}, nil, nil, 0},
		{"no id: the main RAM, once", []qmp.MemoryBackend{{Size: 8, Reserve: true}, {Size: 8, Reserve: true}}, nil,
			[]string{"/objects/pc.ram"}, 8},
		{"NUMA nodes, a DIMM and a virtio-mem device",
			[]qmp.MemoryBackend{{ID: "n0", Size: 1 << 20, Reserve: true}, {ID: "n1", Size: 2 << 20, Reserve: true},
				{ID: "dimm0", Size: 4 << 20, Reserve: true}, {ID: "vmem0", Size: 1 << 30, Reserve: true}},
			[]qmp.MemoryDevice{{Type: qmp.MemoryDeviceDIMM, Memdev: "/objects/dimm0"},
				{Type: qmp.MemoryDeviceVirtioMem, Memdev: "/objects/vmem0"}},
			[]string{"/objects/n0", "/objects/n1", "/objects/dimm0"}, 7 << 20},
	} {
		paths, bytes := prefaultPaths(c.backends, c.devs)
		if !reflect.DeepEqual(paths, c.wantPaths) || bytes != c.wantBytes {
			t.Errorf("%s: prefaultPaths = %q, %d; want %q, %d", c.name, paths, bytes, c.wantPaths, c.wantBytes)
		}
	}
}

// policy returns the scheduling policy and nice of thread tid.
func policy(t *testing.T, tid int) (uint32, int32) {
	t.Helper()
	a, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		t.Fatalf("sched_getattr(%d): %v", tid, err)
	}
	return a.Policy, a.Nice
}

// threadPolicies returns the policy of every thread of process pid.
func threadPolicies(t *testing.T, pid int) map[int]uint32 {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]uint32{}
	for _, e := range ents {
		tid, _ := strconv.Atoi(e.Name())
		out[tid], _ = policy(t, tid)
	}
	return out
}

// The threads go to SCHED_IDLE and come back to what they had on boost; a boost before the prefault lowers them keeps
// it from doing so, and a second boost changes nothing. The process is a plain child, not a QEMU: this is the
// scheduling alone.
func TestPrefaultSchedulingAndBoost(t *testing.T) {
	if !hasCapSysNice() {
		t.Skip("the prefault needs CAP_SYS_NICE, which this test process lacks")
	}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pid := cmd.Process.Pid
	wantPol, wantNice := policy(t, pid)
	proc, err := os.Open("/proc/" + strconv.Itoa(pid))
	if err != nil {
		t.Fatal(err)
	}
	defer proc.Close()
	p := &prefault{pid: pid, proc: proc, log: slog.New(slog.DiscardHandler)}
	if err := p.lower(); err != nil {
		t.Fatal(err)
	}
	if pol, _ := policy(t, pid); pol != unix.SCHED_IDLE {
		t.Fatalf("after lower: policy %d, want SCHED_IDLE", pol)
	}
	p.boost()
	if pol, nice := policy(t, pid); pol != wantPol || nice != wantNice || !p.boosted || p.lowered {
		t.Fatalf("after boost: policy %d nice %d (boosted %v, lowered %v), want %d %d", pol, nice, p.boosted, p.lowered,
			wantPol, wantNice)
	}
	if err := p.lower(); err != nil {
		t.Fatal(err)
	}
	if pol, _ := policy(t, pid); pol != wantPol || p.lowered {
		t.Fatalf("lower after boost changed the policy to %d", pol)
	}
	p.boost()
	if pol, _ := policy(t, pid); pol != wantPol {
		t.Fatalf("a second boost: policy %d", pol)
	}
	var none *prefault // a destination with no prefault
	none.boost()
	none.stop()
	if none.holding() {
		t.Fatal("a nil prefault holds")
	}
}

// rssBytes is VmRSS of process pid.
func rssBytes(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// incomingQEMU starts a paused QEMU with ram of RAM that waits for its stream (-incoming defer), as a destination
// does, and connects to its QMP socket. It is killed by its pid when the test ends.
func incomingQEMU(t *testing.T, ctx context.Context, bin, ram string) (*qmp.Client, int) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	cmd := exec.Command(bin, "-accel", "tcg", "-machine", "pc", "-m", ram, "-nodefaults", "-display", "none",
		"-no-user-config", "-S", "-incoming", "defer", "-qmp", "unix:"+sock+",server=on,wait=off")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	var q *qmp.Client
	eventually(t, "QEMU opens its QMP socket", func() bool {
		var err error
		q, err = qmp.Dial(ctx, sock)
		return err == nil
	})
	t.Cleanup(func() { q.Close() })
	return q, cmd.Process.Pid
}

// A real QEMU of each version, waiting for its stream (-incoming defer, paused), allocates its 64 MiB: query-memdev
// says prealloc, its RSS grew by about the RAM's size, its threads have their scheduling back, and the outcome is
// logged.
func TestPrefaultRealQEMU(t *testing.T) {
	requireQEMU(t)
	if !hasCapSysNice() {
		t.Skip("the prefault needs CAP_SYS_NICE, which this test process lacks")
	}
	for _, v := range qemutest.Versions {
		t.Run(v, func(t *testing.T) { testPrefaultRealQEMU(t, qemutest.Binary(t, v)) })
	}
}

func testPrefaultRealQEMU(t *testing.T, bin string) {
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	q, pid := incomingQEMU(t, ctx, bin, "64")
	wantPol, wantNice := policy(t, pid)
	before := rssBytes(t, pid)

	var logged syncBuffer
	p := startPrefault(q, pid, slog.New(slog.NewTextHandler(io.MultiWriter(&logged, testWriter{t}), nil)))
	if p == nil {
		t.Fatal("no prefault started")
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		t.Fatal("the prefault did not end")
	}

	bs, err := q.MemoryBackends(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 1 || !bs[0].Prealloc {
		t.Errorf("query-memdev after the prefault: %+v, want pc.ram preallocated", bs)
	}
	after := rssBytes(t, pid)
	// Some of the RAM was touched before (the firmware's copy below 1 MiB, and what TCG mapped): most of it was not.
	if grew := after - before; grew < 48<<20 || after < 64<<20 {
		t.Errorf("RSS grew by %d MiB (%d → %d), want about the RAM's 64", grew>>20, before>>20, after>>20)
	}
	for tid, pol := range threadPolicies(t, pid) {
		if _, nice := policy(t, tid); pol != wantPol || nice != wantNice {
			t.Errorf("thread %d: policy %d nice %d after the prefault, want %d %d", tid, pol, nice, wantPol, wantNice)
		}
	}
	line := logged.String()
	if !strings.Contains(line, "prefault done") || !strings.Contains(line, "backends=1") ||
		!strings.Contains(line, "bytes=67108864") || !strings.Contains(line, "boosted=false") || strings.Contains(line, "err=") {
		t.Errorf("log %q, want one prefault done line for 64 MiB with no error", line)
	}
	if st, err := q.Status(ctx); err != nil || st != qmp.RunStateInMigrate {
		t.Errorf("status after the prefault = %q, %v; want inmigrate", st, err)
	}
	p.stop() // after the end: returns at once
}

// While QEMU allocates 512 MiB, its threads are at SCHED_IDLE and the prefault holds it; a boost gives every thread
// its scheduling back at once, before the allocation ends; stop waits for the end.
func TestPrefaultBoostRealQEMU(t *testing.T) {
	bin := requireQEMU(t)
	if !hasCapSysNice() {
		t.Skip("the prefault needs CAP_SYS_NICE, which this test process lacks")
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	q, pid := incomingQEMU(t, ctx, bin, "512")
	wantPol, _ := policy(t, pid)
	p := startPrefault(q, pid, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	for !p.holding() {
		select {
		case <-p.done:
			t.Fatal("the prefault ended before it was seen allocating")
		case <-time.After(time.Millisecond):
		}
	}
	idle := 0
	for _, pol := range threadPolicies(t, pid) {
		if pol == unix.SCHED_IDLE {
			idle++
		}
	}
	if idle == 0 {
		t.Error("no thread of the allocating QEMU is at SCHED_IDLE")
	}
	p.boost()
	for tid, pol := range threadPolicies(t, pid) {
		if pol != wantPol {
			t.Errorf("thread %d: policy %d after the boost, want %d", tid, pol, wantPol)
		}
	}
	p.stop()
	if !p.over {
		t.Error("stop returned before the prefault ended")
	}
}

// A receiver's launched destination allocates its RAM after READY, logged once with no error, and is torn down as
// usual; with NoPrefault it does not.
func TestDriverPrefaultsLaunchedDestination(t *testing.T) {
	bin := requireQEMU(t)
	if !hasCapSysNice() {
		t.Skip("the prefault needs CAP_SYS_NICE, which this test process lacks")
	}
	for _, off := range []bool{false, true} {
		name := map[bool]string{false: "prefault", true: "none"}[off] // no '=': the data dir is in QEMU's options
		t.Run(name, func(t *testing.T) {
			data := newDataDir(t)
			r := startReceiver(t, data, func(c *Config) { c.NoPrefault = off })
			s := newSender(t, r.addr)
			c := s.open(bin, "vm1", 1, true)
			var ready wire.ReadyMsg
			c.expect(wire.FrameReady, &ready)
			if st := c.query(); st.Dest != "inmigrate" {
				t.Errorf("STATE during the prefault: dest %q, want inmigrate", st.Dest)
			}
			if off {
				time.Sleep(200 * time.Millisecond)
				if strings.Contains(r.log.String(), "prefault") {
					t.Errorf("NoPrefault, yet: %s", r.log.String())
				}
			} else {
				eventually(t, "the prefault is logged", func() bool { return strings.Contains(r.log.String(), "prefault done") })
				var line string
				for _, l := range strings.Split(r.log.String(), "\n") {
					if strings.Contains(l, "prefault done") {
						line = l
					}
				}
				if strings.Contains(line, "err=") || !strings.Contains(line, "vm=vm1") || !strings.Contains(line, "bytes=33554432") {
					t.Errorf("prefault line %q: want the VM's 32 MiB with no error", line)
				}
				if rss := rssBytes(t, ready.PID); rss < 32<<20 {
					t.Errorf("the destination's RSS is %d MiB after its prefault, want at least its 32 MiB of RAM", rss>>20)
				}
				for tid, pol := range threadPolicies(t, ready.PID) {
					if pol == unix.SCHED_IDLE {
						t.Errorf("thread %d of the destination is still SCHED_IDLE", tid)
					}
				}
			}
			c.send(wire.FrameAbort, wire.ErrorMsg{Epoch: 1})
			c.expect(wire.FrameAborted, nil)
			if alive(ready.PID) {
				t.Errorf("ABORTED before the destination was gone")
			}
		})
	}
}

// The rebuilder calls its started hook (the prefault's boost) once, at the stream's first frame, whatever that frame.
func TestRebuilderStartedOnce(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	rb := newRebuilder(a, nil, 0)
	calls := 0
	rb.started = func() { calls++ }
	for range 3 {
		if err := rb.frame(context.Background(), wire.FrameHello, nil); err == nil {
			t.Fatal("a HELLO in a stream was accepted")
		}
	}
	if calls != 1 {
		t.Fatalf("started called %d times, want once", calls)
	}
}
