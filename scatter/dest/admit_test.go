package dest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmscatter/vmscatter/scatter/secure"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

var admitKey = []byte("0123456789abcdef0123456789abcdef")

func TestHandshakeGate(t *testing.T) {
	g := newHandshakeGate(3, 2)
	if !g.enter("a") || !g.enter("a") || g.enter("a") {
		t.Fatal("per-host cap of 2 not kept")
	}
	if !g.enter("b") || g.enter("c") {
		t.Fatal("global cap of 3 not kept")
	}
	g.leave("a")
	if !g.enter("c") || g.enter("b") {
		t.Fatal("a freed slot goes to the next host, within the global cap")
	}
	g.leave("a")
	g.leave("b")
	g.leave("c")
	if g.total != 0 || len(g.byHost) != 0 {
		t.Fatalf("left %d, %v", g.total, g.byHost)
	}
}

func TestAcceptBackoff(t *testing.T) {
	want := []time.Duration{5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000}
	for i, w := range want {
		if got := acceptBackoff(i + 1); got != w*time.Millisecond {
			t.Errorf("backoff %d = %v, want %v", i+1, got, w*time.Millisecond)
		}
	}
	for _, e := range []error{unix.EMFILE, unix.ENFILE, unix.ECONNABORTED, fmt.Errorf("accept: %w", unix.EMFILE)} {
		if !temporaryAcceptError(e) {
			t.Errorf("%v is not temporary", e)
		}
	}
	if temporaryAcceptError(net.ErrClosed) {
		t.Error("a closed listener is temporary")
	}
}

// A flood of refusals logs a burst per interval, then one line with the count of the rest.
func TestRefusalLogIsRateLimited(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1000, 0)
	l := newRefusalLog(slog.New(slog.NewTextHandler(&buf, nil)))
	l.now = func() time.Time { return now }
	for range 1000 {
		l.warn("refused connection", "peer", "10.0.0.1:1")
	}
	if n := strings.Count(buf.String(), "refused connection"); n != refusalLogBurst {
		t.Fatalf("%d lines in one interval, want %d", n, refusalLogBurst)
	}
	now = now.Add(refusalLogInterval)
	l.warn("refused connection", "peer", "10.0.0.1:1")
	if !strings.Contains(buf.String(), "count=980") {
		t.Fatalf("the suppressed count is not reported:\n%s", buf.String())
	}
}

// controlSession runs the start and end of a sender's control session with a receiver: handshake, HELLO, INFO, BYE.
func controlSession(ctx context.Context, addr, localIP string, cr secure.Credentials) error {
	d := net.Dialer{Timeout: 10 * time.Second}
	if localIP != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(localIP)}
	}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	sc, err := secure.ClientHandshake(c, cr, secure.RoleControl)
	if err != nil {
		return err
	}
	if err := sc.SendJSON(wire.FrameHello, wire.HelloMsg{Session: wire.SessionID{1, 2, 3}, Sender: "test"}); err != nil {
		return err
	}
	var info wire.InfoMsg
	if err := sc.Expect(ctx, wire.FrameInfo, &info); err != nil {
		return err
	}
	if info.CPUs == 0 {
		return fmt.Errorf("INFO without CPUs: %+v", info)
	}
	return sc.Send(wire.FrameBye, nil, true)
}

// watchedLog collects a process's log and closes seen when a line holds every string of match.
type watchedLog struct {
	syncBuffer
	match   []string
	seen    chan struct{}
	once    sync.Once
	partial []byte
}

func (w *watchedLog) Write(p []byte) (int, error) {
	w.syncBuffer.Write(p)
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(w.partial[:i])
		w.partial = w.partial[i+1:]
		all := true
		for _, m := range w.match {
			all = all && strings.Contains(line, m)
		}
		if all {
			w.once.Do(func() { close(w.seen) })
		}
	}
}

// A receiver with host keys serves the sources on its list and refuses, and logs, one that is not, even with the
// shared key.
func TestReceiverHostKeys(t *testing.T) {
	srcKey, _ := secure.NewHostKey()
	dstKey, _ := secure.NewHostKey()
	thiefKey, _ := secure.NewHostKey()
	var sources, targets secure.Peers
	sources.Add(srcKey.Public, "source-1")
	targets.Add(dstKey.Public, "target-a")
	var logs syncBuffer
	r, err := NewReceiver(Config{DataDir: t.TempDir(), Key: admitKey, HostKey: dstKey, Peers: &sources,
		Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	stopped := make(chan struct{})
	go func() { r.Serve(ctx, ln); close(stopped) }()
	defer func() { cancel(); <-stopped }()
	if err := controlSession(ctx, ln.Addr().String(), "", secure.Credentials{Key: admitKey, Host: srcKey, Peers: &targets}); err != nil {
		t.Fatalf("a listed source: %v", err)
	}
	if err := controlSession(ctx, ln.Addr().String(), "", secure.Credentials{Key: admitKey, Host: thiefKey, Peers: &targets}); err == nil {
		t.Fatal("an unlisted source with the shared key got a session")
	}
	if err := controlSession(ctx, ln.Addr().String(), "", secure.Credentials{Key: admitKey}); err == nil {
		t.Fatal("the shared key alone got a session")
	}
	cancel()
	<-stopped
	if s := logs.String(); !strings.Contains(s, "source-1") || !strings.Contains(s, "not on --allow-peers") {
		t.Errorf("the receiver's log does not name the accepted source and the refusal:\n%s", s)
	}
}

// helperEnv runs TestReceiverHelperProcess as a receiver under a low descriptor limit.
const helperEnv = "VMSCATTER_TEST_RECEIVER_HELPER"

// TestReceiverHelperProcess is not a test: TestFloodedReceiverServesAnAuthenticatedSession runs the test binary
// with it as a receiver, in a process of its own whose descriptor limit is 64. It prints its address, serves until
// its stdin closes, and logs to stderr.
func TestReceiverHelperProcess(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		t.Skip("the receiver of TestFloodedReceiverServesAnAuthenticatedSession, run in its own process")
	}
	lim := unix.Rlimit{Cur: 64, Max: 64}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Fprintln(os.Stderr, "setrlimit:", err)
		os.Exit(2)
	}
	key, _ := hex.DecodeString(os.Getenv(helperEnv + "_KEY"))
	// The global cap is above what 64 descriptors allow, so that a flood from many addresses exhausts them.
	r, err := NewReceiver(Config{DataDir: dir, Key: key, MaxHandshakes: 1000, MaxHandshakesPerHost: 8,
		Log: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println(ln.Addr().String())
	ctx, cancel := context.WithCancel(context.Background())
	go func() { io.Copy(io.Discard, os.Stdin); cancel() }()
	if err := r.Serve(ctx, ln); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// A receiver limited to 64 descriptors is flooded with idle connections: first from one address (the per-address
// cap answers the surplus "busy" and keeps the descriptors free, and an authenticated session completes meanwhile),
// then from many (its descriptors run out and accept fails with EMFILE, which it rides out). Once the flood ends, an
// authenticated session completes: the daemon never stopped.
func TestFloodedReceiverServesAnAuthenticatedSession(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a receiver process and floods it (skipped with -short)")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestReceiverHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+t.TempDir(), helperEnv+"_KEY="+hex.EncodeToString(admitKey))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	logs := &watchedLog{match: []string{"accept failed", "too many open files"}, seen: make(chan struct{})}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	emfile := logs.seen
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill() // by its PID
			<-exited
		}
		if t.Failed() {
			t.Logf("receiver's log:\n%s", logs.String())
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	go func() { exited <- cmd.Wait() }()
	if err != nil {
		t.Fatalf("the receiver printed no address: %v", err)
	}
	addr := strings.TrimSpace(line)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cr := secure.Credentials{Key: admitKey}

	var flood []net.Conn
	defer func() {
		for _, c := range flood {
			c.Close()
		}
	}()
	dialFrom := func(ip string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("flood from %s: %v", ip, err)
		}
		flood = append(flood, c)
		return c
	}
	// One address, 200 idle connections: at most 8 of them wait in the handshake, the rest are told "busy".
	for range 200 {
		dialFrom("127.0.0.2")
	}
	busy := flood[len(flood)-1]
	busy.SetReadDeadline(time.Now().Add(time.Minute)) // a bound on a hang, not a timing assertion
	head := make([]byte, 6)
	if _, err := io.ReadFull(busy, head); err != nil || string(head[:4]) != "VMSC" || head[5] != secure.StatusBusy {
		t.Fatalf("a connection over the per-address cap was answered %x (%v), want busy", head, err)
	}
	if err := controlSession(ctx, addr, "127.0.0.1", cr); err != nil {
		t.Fatalf("a session during a one-address flood: %v", err)
	}
	// Many addresses, two connections each: more than 64 descriptors.
	for i := range 60 {
		dialFrom(fmt.Sprintf("127.0.1.%d", i+1))
		dialFrom(fmt.Sprintf("127.0.1.%d", i+1))
	}
	select {
	case <-emfile:
	case err := <-exited:
		t.Fatalf("the receiver exited under the flood: %v", err)
	case <-ctx.Done():
		t.Fatal("the flood never exhausted the receiver's descriptors")
	}
	for _, c := range flood {
		c.Close()
	}
	flood = nil
	// The receiver rides out the exhaustion: a session completes once the flood is gone (its half-open handshakes
	// fail as their clients hang up).
	var last error
	for range 50 {
		if last = controlSession(ctx, addr, "127.0.0.1", cr); last == nil {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("the receiver exited: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	if last != nil {
		t.Fatalf("no session after the flood: %v", last)
	}
	l := logs.String()
	t.Logf("the receiver logged %d accept failures and %d refusals", strings.Count(l, "accept failed"), strings.Count(l, "refused connection"))
}
