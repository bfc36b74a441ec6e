package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeQMP serves a scripted QMP peer on a unix socket. handle gets each command and returns the line(s) to send;
// a line "CLOSE" closes the connection instead.
func fakeQMP(t *testing.T, handle func(cmd map[string]any) []string) string {
	t.Helper()
	path, _ := fakeQMPPush(t, handle)
	return path
}

// fakeQMPPush is fakeQMP, and also returns push, which sends a line (an event) unprompted.
func fakeQMPPush(t *testing.T, handle func(cmd map[string]any) []string) (path string, push func(line string)) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	conns := make(chan net.Conn, 1)
	var writeMu sync.Mutex
	write := func(c net.Conn, l string) bool {
		writeMu.Lock()
		defer writeMu.Unlock()
		if l == "CLOSE" {
			c.Close()
			return false
		}
		_, err := c.Write([]byte(l + "\n"))
		return err == nil
	}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(conns)
			return
		}
		defer c.Close()
		fmt.Fprintf(c, `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}`+"\n")
		conns <- c
		sc := bufio.NewScanner(c)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var cmd map[string]any
			if json.Unmarshal(sc.Bytes(), &cmd) != nil {
				return
			}
			for _, l := range handle(cmd) {
				if !write(c, l) {
					return
				}
			}
		}
	}()
	var conn net.Conn
	push = func(line string) {
		t.Helper()
		if conn == nil {
			c, ok := <-conns
			if !ok {
				t.Fatal("fake QMP: no client connected")
			}
			conn = c
		}
		if !write(conn, line) {
			t.Fatalf("fake QMP: pushing %s failed", line)
		}
	}
	return path, push
}

func reply(cmd map[string]any, ret string) string {
	id, _ := json.Marshal(cmd["id"])
	return fmt.Sprintf(`{"return": %s, "id": %s}`, ret, id)
}

func TestQMPCommandsEventsAndLongLines(t *testing.T) {
	long := strings.Repeat("x", 3<<20) // far beyond any bufio buffer
	path := fakeQMP(t, func(cmd map[string]any) []string {
		switch cmd["execute"] {
		case "qmp_capabilities":
			return []string{reply(cmd, "{}")}
		case "query-status":
			// An event arrives before the answer; the answer must still match by id.
			return []string{
				`{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}`,
				reply(cmd, `{"status": "paused", "running": false}`),
			}
		case "human-monitor-command":
			return []string{reply(cmd, `"`+long+`"`)}
		case "bad":
			id, _ := json.Marshal(cmd["id"])
			return []string{fmt.Sprintf(`{"error": {"class": "CommandNotFound", "desc": "The command bad has not been found"}, "id": %s}`, id)}
		case "never":
			return nil
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()

	sub := q.Subscribe(EventStop)
	defer sub.Close()
	var st struct {
		Status string `json:"status"`
	}
	if err := q.Execute(ctx, "query-status", nil, &st); err != nil || st.Status != "paused" {
		t.Fatalf("query-status = %+v, %v", st, err)
	}
	ev, err := sub.Next(ctx)
	if err != nil || ev.Name != "STOP" || ev.Time().Unix() != 1 {
		t.Fatalf("Next = %+v, %v", ev, err)
	}
	out, err := q.HMP(ctx, "info something")
	if err != nil || len(out) != len(long) {
		t.Fatalf("HMP: len %d, err %v", len(out), err)
	}
	var qe *Error
	if err := q.Execute(ctx, "bad", nil, nil); !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("bad command error = %v", err)
	}
	short, cancel2 := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel2()
	if err := q.Execute(short, "never", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("deadline: %v", err)
	}
}

func TestQMPPeerGoneFailsPendingCommands(t *testing.T) {
	path := fakeQMP(t, func(cmd map[string]any) []string {
		if cmd["execute"] == "qmp_capabilities" {
			return []string{reply(cmd, "{}")}
		}
		return []string{"this is not json"}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("got %v, want ErrClosed", err)
	}
	<-q.Done()
	if _, err := q.Status(ctx); !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "query-status") {
		t.Fatalf("command after close: %v", err)
	}
	if _, err := q.Subscribe(EventStop).Next(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after close: %v", err)
	}
	if _, err := q.WaitStop(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitStop after close: %v", err)
	}
}

func TestQMPNotAQMPSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("hello there\n"))
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := Dial(ctx, path); err == nil || !strings.Contains(err.Error(), "not a QMP greeting") {
		t.Fatalf("got %v", err)
	}
}

// dialWhenReady retries until QEMU has created its QMP socket.
// dialWhenReady is qemutest.DialWhenReady, which this package's tests cannot import (it imports qmp).
func dialWhenReady(ctx context.Context, t *testing.T, sock string) *Client {
	t.Helper()
	for {
		if _, err := os.Stat(sock); err == nil {
			if q, err := Dial(ctx, sock); err == nil {
				return q
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("QMP socket %s never answered", sock)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// requireQEMU is qemutest.Require, likewise.
func requireQEMU(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed (make deps installs it)")
	}
	return bin
}
