package dest

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"
)

// Defaults of the receiver's admission limits (Config.MaxHandshakes, Config.MaxHandshakesPerHost). A sender opens
// one control connection and one per migration in flight (--parallel), each handshake taking about a round trip:
// 32 per address leaves room for a wide --parallel, and bounds what one address can hold to 32 descriptors for the
// handshake timeout (10 s).
const (
	DefaultMaxHandshakes        = 128
	DefaultMaxHandshakesPerHost = 32
)

// handshakeGate bounds the handshakes in progress, in all and per source address, so that idle or slow clients
// cannot hold every connection slot and file descriptor of the receiver: each costs a descriptor and a goroutine
// until it proves the key or its handshake times out. Authenticated connections are not counted. Safe for concurrent
// use.
type handshakeGate struct {
	max, perHost int

	mu     sync.Mutex
	total  int
	byHost map[string]int
}

func newHandshakeGate(max, perHost int) *handshakeGate {
	return &handshakeGate{max: max, perHost: perHost, byHost: map[string]int{}}
}

// enter admits one more handshake from host, or says no.
func (g *handshakeGate) enter(host string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.total >= g.max || g.byHost[host] >= g.perHost {
		return false
	}
	g.total++
	g.byHost[host]++
	return true
}

// leave ends one handshake of host.
func (g *handshakeGate) leave(host string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.total--
	if g.byHost[host]--; g.byHost[host] <= 0 {
		delete(g.byHost, host)
	}
}

// hostOf is the address a connection comes from, without its port.
func hostOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	h, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return h
}

// Accept errors that say the system is short of something for now: the receiver waits and accepts again. EMFILE
// and ENFILE leave the pending connection in the queue, so accepting again at once would spin.
func temporaryAcceptError(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED, syscall.ENOBUFS,
		syscall.ENOMEM, syscall.EAGAIN, syscall.EINTR, syscall.EPROTO, syscall.EPERM} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// acceptBackoff is the wait after the n-th temporary accept error in a row: 5 ms, doubling, at most 1 s.
func acceptBackoff(n int) time.Duration {
	d := 5 * time.Millisecond
	for i := 1; i < n && d < time.Second; i++ {
		d *= 2
	}
	return min(d, time.Second)
}

// Refusal logs: at most refusalLogBurst lines per refusalLogInterval; the rest are counted and reported in one line
// when the next interval starts.
const (
	refusalLogBurst    = 20
	refusalLogInterval = time.Minute
)

// refusalLog logs refused connections and accept failures at a bounded rate, so that a flood of bad connections
// cannot fill the disk or drown the operator's log. Safe for concurrent use.
type refusalLog struct {
	log *slog.Logger
	now func() time.Time

	mu         sync.Mutex
	start      time.Time
	n, dropped int
}

func newRefusalLog(log *slog.Logger) *refusalLog { return &refusalLog{log: log, now: time.Now} }

// warn logs one refusal, unless this interval's burst is spent.
func (l *refusalLog) warn(msg string, args ...any) {
	l.mu.Lock()
	now := l.now()
	dropped := 0
	if l.start.IsZero() || now.Sub(l.start) >= refusalLogInterval {
		dropped = l.dropped
		l.start, l.n, l.dropped = now, 0, 0
	}
	l.n++
	ok := l.n <= refusalLogBurst
	if !ok {
		l.dropped++
	}
	l.mu.Unlock()
	if dropped > 0 {
		l.log.Warn("refusals not logged in the last interval", "count", dropped, "interval", refusalLogInterval)
	}
	if ok {
		l.log.Warn(msg, args...)
	}
}
