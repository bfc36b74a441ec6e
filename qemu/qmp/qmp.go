// Package qmp is vmscatter's QEMU Machine Protocol client: one connection to a QEMU's QMP socket, commands with
// their answers matched by id, and asynchronous events. It is the only package that knows QMP command names; the
// rest of the project calls its typed methods (vm.go: run state, vCPUs, memory, machine type; migrate.go: migration,
// its capabilities and parameters; events.go: subscriptions and waits on STOP, RESUME and MIGRATION events).
//
// Every method takes a context that bounds it. Errors are typed: a QEMU error answer is an *Error naming the command;
// a connection that ended (QEMU quit or crashed, or Close was called) gives an error that wraps ErrClosed.
package qmp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// maxQMPLine bounds one QMP message. QEMU's answers to query commands are a few KiB; 64 MiB leaves room for
// human-monitor output of large guests while still refusing a runaway peer.
const maxQMPLine = 64 << 20

// Error is an error answer from QEMU ({"error":{"class":...,"desc":...}}).
type Error struct {
	Command string
	Class   string
	Desc    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// ErrClosed is wrapped by the error of every command or wait that the end of the connection cut short, and of those
// issued after it.
var ErrClosed = errors.New("qmp: connection closed")

// Event is an asynchronous QMP event.
type Event struct {
	Name      string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// Time is the event's QEMU-side timestamp.
func (e Event) Time() time.Time {
	return time.Unix(e.Timestamp.Seconds, e.Timestamp.Microseconds*1000)
}

// Client is a client for one QMP socket. It is safe for concurrent use: commands are matched to answers by id, and one
// reader goroutine owns the socket's read side.
type Client struct {
	conn net.Conn
	path string

	writeMu sync.Mutex // serializes writes

	mu      sync.Mutex // guards the fields below and every Subscription's queue
	nextID  uint64
	pending map[string]chan qmpReply
	subs    map[*Subscription]struct{}
	evSig   chan struct{} // closed and replaced whenever an event is queued
	err     error         // set once the reader stops
	done    chan struct{}
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	ID     json.RawMessage `json:"id"`
	Event  string          `json:"event"`
	Client json.RawMessage `json:"QMP"`
}

// Dial connects to a QMP unix socket, reads the greeting and enters command mode (qmp_capabilities).
func Dial(ctx context.Context, socketPath string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("qmp: connect %s: %w (is the VM running with -qmp unix:%s,server=on,wait=off?)", socketPath, err, socketPath)
	}
	q := &Client{conn: conn, path: socketPath, pending: map[string]chan qmpReply{}, subs: map[*Subscription]struct{}{},
		evSig: make(chan struct{}), done: make(chan struct{})}
	br := bufio.NewReaderSize(conn, 64<<10)
	// The greeting comes first and unprompted.
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(dl)
	}
	line, err := readLine(br)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: %s: no greeting (%w): QEMU serves one client per QMP socket; if another tool holds this one, give the VM a second -qmp socket for vmscatter", socketPath, err)
	}
	var greet qmpReply
	if err := json.Unmarshal(line, &greet); err != nil || greet.Client == nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: %s: not a QMP greeting: %.80q", socketPath, line)
	}
	_ = conn.SetReadDeadline(time.Time{})
	go q.readLoop(br)
	if err := q.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

// readLine reads one newline-terminated message of any length up to maxQMPLine.
func readLine(br *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(buf)+len(chunk) > maxQMPLine {
			return nil, fmt.Errorf("qmp: message longer than %d bytes", maxQMPLine)
		}
		buf = append(buf, chunk...)
		if err == nil {
			return bytes.TrimSpace(buf), nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}

func (q *Client) readLoop(br *bufio.Reader) {
	var err error
	for {
		var line []byte
		line, err = readLine(br)
		if err != nil {
			break
		}
		if len(line) == 0 {
			continue
		}
		var r qmpReply
		if jerr := json.Unmarshal(line, &r); jerr != nil {
			err = fmt.Errorf("qmp: bad message: %w", jerr)
			break
		}
		if r.Event != "" {
			var ev Event
			if json.Unmarshal(line, &ev) == nil {
				q.deliver(ev)
			}
			continue
		}
		id := string(r.ID)
		q.mu.Lock()
		ch := q.pending[id]
		delete(q.pending, id)
		q.mu.Unlock()
		if ch != nil {
			ch <- r // buffered, never blocks
		}
	}
	q.mu.Lock()
	q.err = fmt.Errorf("%w (%v)", ErrClosed, err)
	for id, ch := range q.pending {
		close(ch)
		delete(q.pending, id)
	}
	close(q.done)
	close(q.evSig) // wakes every waiter; they see q.err
	q.mu.Unlock()
}

// Execute runs one command by its QMP name. It is the low-level escape hatch: the rest of the project calls the
// typed methods (Status, Migrate, SetParameters, ...), which are the only places that name QMP commands; use Execute
// only for a command that has none yet, and then add one. args is marshalled as "arguments" unless nil; the "return"
// value is unmarshalled into result unless result is nil. A QEMU error answer comes back as *Error; a connection
// that ended before the answer as an error wrapping ErrClosed.
func (q *Client) Execute(ctx context.Context, command string, args any, result any) error {
	_, err := q.call(ctx, command, args, result)
	return err
}

// call is Execute, and also says whether the command was written to QEMU (Quit needs to know).
func (q *Client) call(ctx context.Context, command string, args any, result any) (sent bool, err error) {
	q.mu.Lock()
	if q.err != nil {
		err := q.err
		q.mu.Unlock()
		return false, fmt.Errorf("qmp %s: %w", command, err)
	}
	q.nextID++
	id := strconv.FormatUint(q.nextID, 10)
	ch := make(chan qmpReply, 1)
	q.pending[strconv.Quote(id)] = ch
	q.mu.Unlock()

	msg := map[string]any{"execute": command, "id": id}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		q.forget(id)
		return false, fmt.Errorf("qmp %s: %w", command, err)
	}
	b = append(b, '\n')
	q.writeMu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		_ = q.conn.SetWriteDeadline(dl)
	} else {
		_ = q.conn.SetWriteDeadline(time.Time{})
	}
	_, err = q.conn.Write(b)
	q.writeMu.Unlock()
	if err != nil {
		q.forget(id)
		select {
		case <-q.done: // the peer went away while we wrote
			return true, fmt.Errorf("qmp %s: %w", command, q.closedErr())
		default:
		}
		return true, fmt.Errorf("qmp %s: %w", command, err)
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return true, fmt.Errorf("qmp %s: %w", command, q.closedErr())
		}
		if r.Error != nil {
			return true, &Error{Command: command, Class: r.Error.Class, Desc: r.Error.Desc}
		}
		if result != nil && len(r.Return) > 0 {
			if err := json.Unmarshal(r.Return, result); err != nil {
				return true, fmt.Errorf("qmp %s: decoding answer: %w", command, err)
			}
		}
		return true, nil
	case <-ctx.Done():
		q.forget(id)
		return true, fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}

func isClosed(err error) bool { return errors.Is(err, ErrClosed) }

func (q *Client) forget(id string) {
	q.mu.Lock()
	delete(q.pending, strconv.Quote(id))
	q.mu.Unlock()
}

func (q *Client) closedErr() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return q.err
	}
	return ErrClosed
}

// HMP runs a human-monitor command through QMP and returns its text output.
func (q *Client) HMP(ctx context.Context, cmdline string) (string, error) {
	var out string
	err := q.Execute(ctx, "human-monitor-command", map[string]any{"command-line": cmdline}, &out)
	return out, err
}

// Done is closed when the connection ends (QEMU quit or Close was called).
func (q *Client) Done() <-chan struct{} { return q.done }

// PeerPID returns the process id of the QEMU at the other end of the socket (SO_PEERCRED).
func (q *Client) PeerPID() (int, error) {
	uc, ok := q.conn.(*net.UnixConn)
	if !ok {
		return 0, errors.New("qmp: not a unix socket, cannot learn the QEMU pid")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, fmt.Errorf("qmp: SO_PEERCRED on %s: %w", q.path, cerr)
	}
	return int(cred.Pid), nil
}

// Close ends the connection.
func (q *Client) Close() error {
	err := q.conn.Close()
	<-q.done
	return err
}
