package dest

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/bench/datapath"
	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// The driver's paths through a real migration stream: a source QEMU migrates into a socket of the test's, and the
// scripted sender sends the frames the sender's pump would for that stream (datapath.SenderFrames).

const guestMiB = 32

// recordedStream is a source guest's migration stream, as the source QEMU wrote it, and its memory.
type recordedStream struct {
	argv   []string // the source's command line, as OPEN carries it
	stream []byte
	mem    []byte
}

// recordStream boots a BIOS-only guest, pauses it, saves its memory, and migrates it into a unix socket.
func recordStream(t *testing.T, bin, name string) recordedStream {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "qmp.sock")
	argv := guestArgv(bin, name)
	args := append(append([]string{}, argv[1:len(argv)-2]...), "-qmp", "unix:"+sock+",server=on,wait=off")
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	var q *qmp.Client
	eventually(t, "the source QEMU opens its QMP socket", func() bool {
		var err error
		q, err = qmp.Dial(ctx, sock)
		return err == nil
	})
	defer q.Close()
	time.Sleep(500 * time.Millisecond) // SeaBIOS writes into RAM
	if err := q.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	memFile := filepath.Join(dir, "src.mem")
	if err := q.Pmemsave(ctx, 0, guestMiB<<20, memFile); err != nil {
		t.Fatal(err)
	}
	mem, err := os.ReadFile(memFile)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(dir, "migrate.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := q.Migrate(ctx, "unix:"+ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(waitBound))
	stream, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the source's stream: %v", err)
	}
	return recordedStream{argv: argv, stream: stream, mem: mem}
}

// frames is what the sender's pump sends for the stream (no contents held by the target).
func (rs recordedStream) frames(t *testing.T) []datapath.Frame {
	t.Helper()
	frames, err := datapath.SenderFrames(rs.stream, nil, dedup.CodecZstd)
	if err != nil {
		t.Fatal(err)
	}
	return frames
}

func (c *vmConnT) sendFrames(frames []datapath.Frame) {
	c.t.Helper()
	for _, f := range frames {
		if err := c.sc.Send(f.Type, f.Payload, true); err != nil {
			c.t.Fatalf("sending %s: %v", f.Type, err)
		}
	}
}

func (s *fakeSender) openStream(rs recordedStream, vm string, epoch uint64) *vmConnT {
	s.t.Helper()
	c := &vmConnT{t: s.t, sc: s.dial(2)}
	c.send(wire.FrameOpen, wire.OpenMsg{Session: s.session, VM: vm, Epoch: epoch, Argv: rs.argv, Run: false})
	return c
}

// The stream loads; the sender is lost after LOADED; the destination waits, paused, through the loss and a
// receiver restart, and the sender's ATTACH and START of the epoch start it (paused, as its source was). Its
// memory is the source's byte for byte.
func TestLoadedSurvivesLossAndRestart(t *testing.T) {
	bin := requireQEMU(t)
	rs := recordStream(t, bin, "vm1")
	data := newDataDir(t)
	r1 := startReceiver(t, data, nil)
	s := newSender(t, r1.addr)
	c := s.openStream(rs, "vm1", 11)
	var ready wire.ReadyMsg
	c.expect(wire.FrameReady, &ready)
	c.sendFrames(rs.frames(t))
	var loaded wire.RunningMsg
	c.expect(wire.FrameLoaded, &loaded)
	if loaded.Epoch != 11 || loaded.Status != "paused" || loaded.PID != ready.PID {
		t.Fatalf("LOADED %+v", loaded)
	}
	wantRecord(t, data, "vm1", "Loaded", 11)

	c.sc.Close() // the sender is lost
	a := s.attach("vm1", 11)
	if st := a.query(); st.Phase != "Loaded" || st.Dest != "paused" {
		t.Fatalf("STATE %+v after the sender was lost", st)
	}
	r1.stop()
	if !alive(ready.PID) {
		t.Fatal("the loaded destination did not survive the receiver's stop")
	}

	r2 := startReceiver(t, data, nil)
	s = newSender(t, r2.addr)
	a = s.attach("vm1", 11)
	a.send(wire.FrameStart, wire.EpochMsg{Epoch: 11})
	var running wire.RunningMsg
	a.expect(wire.FrameRunning, &running)
	if running.Status != "paused" || running.PID != ready.PID {
		t.Fatalf("RUNNING %+v: want the destination as its source was (paused), pid %d", running, ready.PID)
	}
	a.send(wire.FrameCommit, wire.EpochMsg{Epoch: 11})
	a.expect(wire.FrameDone, nil)
	wantRecord(t, data, "vm1", "Committed", 11)

	// Committed: the receiver let go of the destination's QMP socket.
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	q, err := qmp.Dial(ctx, filepath.Join(data, "vm1", "qmp.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	memFile := filepath.Join(t.TempDir(), "dst.mem")
	if err := q.Pmemsave(ctx, 0, guestMiB<<20, memFile); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(memFile); !bytes.Equal(got, rs.mem) {
		t.Fatal("the destination's memory differs from the source's")
	}
}

// The destination refuses the stream (its device state corrupted in the tail): the load's failure tears it
// down and ABORTED says why.
func TestRefusedStreamAborts(t *testing.T) {
	bin := requireQEMU(t)
	rs := recordStream(t, bin, "vm1")
	frames := rs.frames(t)
	corrupted := false
	for i, f := range frames {
		if f.Type == wire.FrameTail && len(f.Payload) > 64 {
			p := bytes.Clone(f.Payload)
			for j := 16; j < len(p); j++ {
				p[j] ^= 0x5a
			}
			frames[i].Payload, corrupted = p, true
			break
		}
	}
	if !corrupted {
		t.Fatal("the stream has no tail to corrupt")
	}
	data := newDataDir(t)
	r := startReceiver(t, data, nil)
	s := newSender(t, r.addr)
	c := s.openStream(rs, "vm1", 1)
	var ready wire.ReadyMsg
	c.expect(wire.FrameReady, &ready)
	c.sendFrames(frames)
	var ab wire.ErrorMsg
	c.expect(wire.FrameAborted, &ab)
	if ab.Epoch != 1 || alive(ready.PID) {
		t.Fatalf("ABORTED %+v; destination alive: %v", ab, alive(ready.PID))
	}
	t.Logf("ABORTED: %s", ab.Error)
	wantRecord(t, data, "vm1", "RolledBack", 1)
	if strings.TrimSpace(ab.Error) == "" {
		t.Error("ABORTED without a reason")
	}
}
