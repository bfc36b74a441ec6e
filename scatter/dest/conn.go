package dest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/qemu"
	"github.com/vmscatter/vmscatter/scatter/commit"
	"github.com/vmscatter/vmscatter/scatter/host"
	"github.com/vmscatter/vmscatter/scatter/secure"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// sendTimeout bounds one frame written to the sender by the driver: a sender that stops reading loses the
// connection, not the driver's loop.
const sendTimeout = 10 * time.Second

// vmConn is one VM connection: started by OPEN (a new migration, whose stream it carries) or ATTACH (a known
// migration: the sender reconnecting, or `vmscatter recover`). Its reader goroutine (serveVM) reads every frame:
// the stream's go to the rebuilder while the driver has installed one, the others to the VM's driver as events.
// Sends are safe from any goroutine (secure.Conn's are).
type vmConn struct {
	sc    *secure.Conn
	peer  string
	epoch uint64              // of its OPEN or ATTACH: the epoch of the stream frames, which carry none
	store *dedup.ContentStore // OPEN's session's content store, for the stream's references; nil for ATTACH

	mu sync.Mutex
	rb *rebuilder // the stream being rebuilt from this connection's frames, from READY on; nil when none

	lastFrame atomic.Int64 // unix nanoseconds of the last frame read

	// the driver loop's
	gen     uint64 // the machine it was handed to (vmDriver.gen)
	dropped bool   // the VM took another connection: this one's frames are ignored
}

func (c *vmConn) setStream(rb *rebuilder) {
	c.mu.Lock()
	c.rb = rb
	c.mu.Unlock()
}

func (c *vmConn) stream() *rebuilder {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rb
}

// idle is how long ago the last frame arrived.
func (c *vmConn) idle() time.Duration { return time.Since(time.Unix(0, c.lastFrame.Load())) }

// send writes one JSON frame, bounded by sendTimeout.
func (c *vmConn) send(t wire.FrameType, v any) error {
	nc := c.sc.NetConn()
	_ = nc.SetWriteDeadline(time.Now().Add(sendTimeout))
	defer nc.SetWriteDeadline(time.Time{})
	return c.sc.SendJSON(t, v)
}

// refuse answers the connection's first frame with ERROR and closes it.
func (c *vmConn) refuse(epoch uint64, why string) {
	_ = c.send(wire.FrameError, wire.ErrorMsg{Epoch: epoch, Error: why})
	c.sc.Close()
}

// firstFrameWait bounds the wait for a VM connection's OPEN or ATTACH.
const firstFrameWait = secure.DefaultWait

// serveVM serves one VM connection: it reads OPEN or ATTACH, hands the connection to the VM's driver, and then
// reads the connection's frames until it ends. The driver decides everything else.
func (r *Receiver) serveVM(ctx context.Context, sc *secure.Conn, peer string) error {
	c := &vmConn{sc: sc, peer: peer}
	_ = sc.NetConn().SetReadDeadline(time.Now().Add(firstFrameWait))
	t, b, err := sc.Recv()
	_ = sc.NetConn().SetReadDeadline(time.Time{})
	if err != nil {
		return fmt.Errorf("waiting for OPEN or ATTACH: %w", err)
	}
	c.lastFrame.Store(time.Now().UnixNano())
	var m *vmDriver
	switch t {
	case wire.FrameOpen:
		var open wire.OpenMsg
		if err := wire.Unmarshal(t, b, &open); err != nil {
			c.refuse(0, err.Error())
			return err
		}
		if err := wire.CheckVMName(open.VM); err != nil {
			c.refuse(open.Epoch, err.Error())
			return err
		}
		s := r.attach(open.Session, false)
		if s == nil {
			err := fmt.Errorf("unknown session %s: open the control connection first", open.Session)
			c.refuse(open.Epoch, err.Error())
			return err
		}
		defer r.detach(s)
		defer s.store.ReleaseVM(open.Slot) // this VM's references end with its stream's connection
		c.epoch, c.store = open.Epoch, s.store
		m = r.vm(open.VM)
		m.post(func() { m.opened(c, &open) })
	case wire.FrameLibvirtOpen: // libvirt starts the destination: libvirt.go
		return r.serveLibvirt(ctx, c, b)
	case wire.FrameAttach:
		var at wire.AttachMsg
		if err := wire.Unmarshal(t, b, &at); err != nil {
			c.refuse(0, err.Error())
			return err
		}
		if err := wire.CheckVMName(at.VM); err != nil {
			c.refuse(at.Epoch, err.Error())
			return err
		}
		c.epoch = at.Epoch
		m = r.vm(at.VM)
		m.post(func() { m.attached(c, at.Epoch) })
	default:
		err := fmt.Errorf("%w: %s first on a VM connection, want OPEN or ATTACH", wire.ErrFrame, t)
		c.refuse(0, err.Error())
		return err
	}
	return c.read(ctx, m)
}

// read is the connection's reader: stream frames to the rebuilder, the rest to the driver, the end as PeerLost.
func (c *vmConn) read(ctx context.Context, m *vmDriver) error {
	log := m.r.log.With("vm", m.name, "peer", c.peer) // m.log is the loop's
	for {
		t, b, err := c.sc.Recv()
		if err != nil {
			m.post(func() { m.lost(c, err) })
			if errors.Is(err, io.EOF) {
				return nil // the sender hung up
			}
			return err
		}
		c.lastFrame.Store(time.Now().UnixNano())
		if isStreamFrame(t) {
			if rb := c.stream(); rb != nil {
				if err := rb.frame(ctx, t, b); err != nil {
					c.setStream(nil) // the rest of the stream is dropped
					m.post(func() { m.streamFailed(rb, err) })
				} else if t == wire.FrameStreamEnd {
					log.Info("stream received", "pages", rb.pages, "referenced", rb.refs)
				}
			} // else: no stream is open here (before READY, or after a teardown): dropped
			if t != wire.FrameStreamEnd {
				continue
			}
		}
		ev, err := frameEvent(t, b, c.epoch)
		if err != nil {
			log.Warn("bad frame on a VM connection: closing it", "err", err)
			c.sc.Close()
			m.post(func() { m.lost(c, err) })
			return err
		}
		m.post(func() { m.fromConn(c, ev) })
	}
}

// frameEvent turns a control frame into the machine's event, with the epoch its payload carries (the stream's
// STREAM_END carries none: it belongs to the connection's epoch). A START or COMMIT without a payload has epoch 0.
func frameEvent(t wire.FrameType, b []byte, connEpoch uint64) (commit.Event, error) {
	epochOf := func() (uint64, error) {
		if len(b) == 0 {
			return 0, nil
		}
		var m wire.EpochMsg
		err := wire.Unmarshal(t, b, &m)
		return m.Epoch, err
	}
	errorOf := func(f commit.Frame) (commit.Event, error) {
		var m wire.ErrorMsg
		if len(b) > 0 {
			if err := wire.Unmarshal(t, b, &m); err != nil {
				return commit.Event{}, err
			}
		}
		return commit.Received(f, m.Epoch, m.Error), nil
	}
	switch t {
	case wire.FrameStreamEnd:
		return commit.Received(commit.FrameStreamEnd, connEpoch, ""), nil
	case wire.FrameStart, wire.FrameCommit:
		e, err := epochOf()
		f := commit.FrameStart
		if t == wire.FrameCommit {
			f = commit.FrameCommit
		}
		return commit.Received(f, e, ""), err
	case wire.FrameQuery:
		return commit.Event{Kind: commit.Query}, nil
	case wire.FrameAbort:
		return errorOf(commit.FrameAbort)
	case wire.FrameStreamCancel:
		return errorOf(commit.FrameStreamCancel)
	case wire.FrameError:
		return errorOf(commit.FrameError)
	case wire.FrameOpen:
		var m wire.OpenMsg
		err := wire.Unmarshal(t, b, &m)
		return commit.Received(commit.FrameOpen, m.Epoch, "a second OPEN on one connection"), err
	}
	return commit.Event{}, fmt.Errorf("%w: %s on a VM connection", wire.ErrFrame, t)
}

// relayReturnPath copies the destination's return-path bytes to the sender as they come, until the destination's
// socket closes.
func relayReturnPath(qc net.Conn, c *vmConn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := qc.Read(buf)
		if n > 0 {
			if serr := c.sc.Send(wire.FrameReturnPath, buf[:n], true); serr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

var (
	errLoadTimeout = errors.New("the load's time ran out")
	errTornDown    = errors.New("torn down")
)

// opened handles a connection that starts with OPEN: a new migration, or the same one's OPEN again.
func (m *vmDriver) opened(c *vmConn, open *wire.OpenMsg) {
	if m.r.isStopping() {
		c.refuse(open.Epoch, "the receiver is stopping")
		return
	}
	if m.d == nil || m.d.Epoch() != open.Epoch || m.d.Phase() == commit.Begin {
		if m.d == nil || m.d.Epoch() != open.Epoch {
			if why := m.cannotReplace(open.Epoch); why != "" {
				m.log.Warn("OPEN refused", "epoch", open.Epoch, "peer", c.peer, "reason", why)
				c.refuse(open.Epoch, why)
				return
			}
			m.takeConn(c)
			m.reset(commit.NewDest(open.Epoch))
			c.gen = m.gen
		} else { // an ATTACH made it in Begin
			if why := m.runsHere(); why != "" {
				c.refuse(open.Epoch, why)
				return
			}
			c.gen = m.gen
			m.takeConn(c)
		}
		m.open, m.run, m.streamConn = open, open.Run, c
		m.log = m.r.log.With("vm", m.name, "epoch", open.Epoch)
		m.log.Info("OPEN", "peer", c.peer, "session", open.Session.String())
	} else {
		c.gen = m.gen
		m.takeConn(c) // the same migration's OPEN again: the machine says what it means in its phase
	}
	m.step(commit.Received(commit.FrameOpen, open.Epoch, ""))
}

// attached handles a connection that starts with ATTACH: frames for a known migration follow. An epoch the
// receiver has no machine of gets one in Begin, so that ABORT is answered and START refused.
//
// An ATTACH beside a current connection does not take the VM over at once: a QUERY (`vmscatter recover` looking)
// is answered on it and changes nothing; its first other frame (the sender's START, ABORT or COMMIT after it lost
// its connection) makes it the VM's connection, and the earlier one is lost.
func (m *vmDriver) attached(c *vmConn, epoch uint64) {
	if m.d == nil || m.d.Epoch() != epoch {
		if why := m.cannotReplace(epoch); why != "" {
			m.log.Warn("ATTACH refused", "epoch", epoch, "peer", c.peer, "reason", why)
			c.refuse(epoch, why)
			return
		}
		m.takeConn(c)
		m.reset(commit.NewDest(epoch))
		c.gen = m.gen
		m.log.Info("ATTACH for a migration this receiver has no record of", "peer", c.peer)
		return
	}
	c.gen = m.gen
	if m.conn != nil {
		m.log.Info("ATTACH beside the VM's connection", "peer", c.peer, "phase", m.d.Phase().String())
		return
	}
	m.log.Info("ATTACH", "peer", c.peer, "phase", m.d.Phase().String())
	m.takeConn(c)
}

// takeConn makes c the VM's connection. An earlier one is closed, and its loss delivered first (PeerLost): a sender
// that reconnects has lost it. Then Reconnected, where there is something to reconnect to (not before LOADED: the
// stream's connection is gone for good).
func (m *vmDriver) takeConn(c *vmConn) {
	old := m.conn
	if old == c {
		return
	}
	if old != nil {
		m.conn, old.dropped = nil, true
		old.sc.Close()
		if m.d != nil {
			m.step(commit.Event{Kind: commit.PeerLost, Reason: "another connection for the VM came from " + c.peer})
		}
	}
	m.conn = c
	if m.d != nil && c.gen == m.gen {
		switch m.d.Phase() {
		case commit.Begin, commit.Prepare, commit.Perform:
		default:
			m.step(commit.Event{Kind: commit.Reconnected})
		}
	}
}

// cannotReplace says why the VM's machine cannot give way to one for epoch: a machine is replaced only by a later
// epoch, only once terminal and settled, and never while a QEMU of the VM runs here (its journal record would be
// overwritten, and a restarted receiver would act on the wrong process). "" if it can.
func (m *vmDriver) cannotReplace(epoch uint64) string {
	if m.d != nil {
		cur, p := m.d.Epoch(), m.d.Phase()
		switch {
		case epoch < cur:
			return fmt.Sprintf("epoch %d of VM %s is older than this receiver's epoch %d (%v)", epoch, m.name, cur, p)
		case !p.Terminal():
			return fmt.Sprintf("a migration of VM %s (epoch %d, %v) is in progress here", m.name, cur, p)
		case m.launching != nil || m.starting || m.load != nil:
			return fmt.Sprintf("the migration of VM %s (epoch %d) is still settling here", m.name, cur)
		}
	}
	return m.runsHere()
}

// runsHere says so when a QEMU of the VM runs in its directory.
func (m *vmDriver) runsHere() string {
	if pid := host.RunningPID(qemu.PathsIn(m.dir).PIDFile); pid > 0 && host.IsQEMU(pid) {
		return fmt.Sprintf("VM %s already runs here (pid %d): stop it or choose another target", m.name, pid)
	}
	return ""
}

// reset gives the VM a new machine; what belonged to the earlier migration is let go.
func (m *vmDriver) reset(d *commit.Dest) {
	m.letGo()
	m.closeStream()
	m.gen++
	m.d = d
	m.open, m.streamConn = nil, nil
	m.run, m.stopping = false, m.r.isStopping()
	m.pid, m.exitSeen, m.started, m.streamEnded = 0, false, "", false
	m.launching, m.killAfterLaunch, m.starting = nil, false, false
	m.log = m.r.log.With("vm", m.name, "epoch", d.Epoch())
}

// fromConn delivers a frame of connection c: the VM's own, or one attached beside it (see attached).
func (m *vmDriver) fromConn(c *vmConn, ev commit.Event) {
	if m.d == nil || c.gen != m.gen || c.dropped {
		m.log.Debug("frame of a connection the VM no longer has: ignored", "event", ev.String(), "peer", c.peer)
		return
	}
	if c != m.conn {
		if ev.Kind == commit.Query {
			m.answerTo = c
			m.step(ev)
			m.answerTo = nil
			return
		}
		m.takeConn(c)
	}
	if ev.Kind == commit.Recv && ev.Frame == commit.FrameStreamEnd && c == m.streamConn {
		m.streamEnd()
	}
	m.step(ev)
}

// lost delivers the end of connection c, if it is the VM's current one.
func (m *vmDriver) lost(c *vmConn, err error) {
	if c != m.conn {
		return
	}
	m.conn = nil
	if m.d != nil {
		m.step(commit.Event{Kind: commit.PeerLost, Reason: err.Error()})
	}
}
