package dest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/vmscatter/vmscatter/scatter/virt"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// A libvirt-managed migration (LIBVIRT_OPEN, docs/libvirt.md): libvirt's Prepare starts the destination QEMU, which
// listens on the migration socket, the same path on both hosts (/run/vmscatter/RUN/DOM.sock, in each host's own
// /run). The receiver starts nothing and runs no commit machine: libvirt owns the lifecycle (Finish resumes the
// destination, Confirm ends the source, a failure before the switch-over rolls back to the source). The stages:
//
//   - LIBVIRT_OPEN: the session's content store is attached, the disks checked (shared storage), the socket's
//     directory created (libvirt's destination QEMU needs it to exist), READY answered.
//   - The stream's first frame: only now the receiver connects to the socket (Prepare created it before the source
//     could send anything; any connection to it is taken as the migration stream, so it is never probed), and the
//     stream is rebuilt into it frame by frame, as for a destination of its own.
//   - The return path, both ways: what the destination QEMU writes back (PONG, and SHUT at the end, which the source
//     QEMU waits for) goes to the sender as RETURN_PATH frames, as they come; its end as an empty one.
//   - STREAM_END: the rebuilder half-closes the socket; once the destination has closed its side too (it does when
//     its load ends) the receiver answers LIBVIRT_DONE and the connection ends.
//   - Any failure, or the sender's connection lost before STREAM_END: the socket is closed, the destination's load
//     fails, and libvirt rolls the migration back to the source.

// libvirtDialWait bounds the wait for the destination's socket to accept, from the stream's first frame.
const libvirtDialWait = 30 * time.Second

// serveLibvirt serves a VM connection that began with LIBVIRT_OPEN (payload b) until the stream and its return path
// have ended.
func (r *Receiver) serveLibvirt(ctx context.Context, c *vmConn, b []byte) error {
	var open wire.LibvirtOpenMsg
	if err := wire.Unmarshal(wire.FrameLibvirtOpen, b, &open); err != nil {
		c.refuse(0, err.Error())
		return err
	}
	if err := wire.CheckVMName(open.VM); err != nil {
		c.refuse(0, err.Error())
		return err
	}
	if err := virt.CheckSocket(open.Socket); err != nil {
		c.refuse(0, err.Error())
		return err
	}
	if r.isStopping() {
		c.refuse(0, "the receiver is stopping")
		return nil
	}
	s := r.attach(open.Session, false)
	if s == nil {
		err := fmt.Errorf("unknown session %s: open the control connection first", open.Session)
		c.refuse(0, err.Error())
		return err
	}
	defer r.detach(s)
	defer s.store.ReleaseVM(open.Slot)
	c.store = s.store
	log := r.log.With("vm", open.VM, "peer", c.peer, "socket", open.Socket)
	unchecked, err := checkSharedStorage(open.Argv, open.Disks)
	if err != nil {
		c.refuse(0, "shared storage: "+err.Error())
		return err
	}
	for _, u := range unchecked {
		log.Warn("disk image not checked: the operator keeps it reachable from every host", "image", u)
	}
	dir := filepath.Dir(open.Socket)
	if err := r.sockets.acquire(dir); err != nil {
		c.refuse(0, fmt.Sprintf("creating the migration socket's directory: %v", err))
		return err
	}
	defer r.sockets.release(dir)
	if err := c.send(wire.FrameReady, wire.ReadyMsg{}); err != nil {
		return err
	}
	log.Info("libvirt migration opened")
	ls := &libvirtStream{r: r, c: c, open: &open}
	err = ls.run(ctx)
	if err != nil {
		log.Warn("libvirt migration stream ended", "err", err)
		_ = c.send(wire.FrameLibvirtDone, wire.LibvirtDoneMsg{Pages: ls.pages(), Referenced: ls.refs(), Error: err.Error()})
		return err
	}
	log.Info("libvirt migration stream rebuilt", "pages", ls.pages(), "referenced", ls.refs())
	return c.send(wire.FrameLibvirtDone, wire.LibvirtDoneMsg{Pages: ls.pages(), Referenced: ls.refs()})
}

// libvirtStream is one libvirt-managed stream: used by serveLibvirt's goroutine, and by the return path's relay.
type libvirtStream struct {
	r    *Receiver
	c    *vmConn
	open *wire.LibvirtOpenMsg
	rb   *rebuilder
}

func (ls *libvirtStream) pages() int {
	if ls.rb == nil {
		return 0
	}
	return ls.rb.pages
}

func (ls *libvirtStream) refs() int {
	if ls.rb == nil {
		return 0
	}
	return ls.rb.refs
}

// run reads the connection's frames into the destination's socket until STREAM_END and the return path's end.
func (ls *libvirtStream) run(ctx context.Context) error {
	var qc net.Conn
	relayed := make(chan struct{})
	defer func() {
		if qc != nil {
			qc.Close() // a stream cut short: the destination's load fails, libvirt rolls back
			<-relayed
		}
	}()
	for {
		t, b, err := ls.c.sc.Recv()
		if err != nil {
			return fmt.Errorf("the sender's connection ended before the stream did: %w", err)
		}
		ls.c.lastFrame.Store(time.Now().UnixNano())
		if !isStreamFrame(t) {
			switch t {
			case wire.FrameError, wire.FrameAbort, wire.FrameStreamCancel:
				var m wire.ErrorMsg
				_ = wire.Unmarshal(t, b, &m)
				return fmt.Errorf("the sender gave up (%s): %s", t, m.Error)
			}
			return fmt.Errorf("%w: %s on a libvirt VM connection", wire.ErrFrame, t)
		}
		if qc == nil {
			if qc, err = dialLibvirtSocket(ctx, ls.open.Socket); err != nil {
				return err
			}
			ls.rb = newRebuilder(qc, ls.c.store, ls.r.cfg.RefWait)
			go func() {
				defer close(relayed)
				relayReturnPath(qc, ls.c)
				_ = ls.c.sc.Send(wire.FrameReturnPath, nil, true) // the destination closed its side
			}()
		}
		if err := ls.rb.frame(ctx, t, b); err != nil {
			return fmt.Errorf("rebuilding the stream for libvirt's destination: %w", err)
		}
		if t == wire.FrameStreamEnd {
			wait := ls.r.cfg.LoadTimeout
			if wait <= 0 {
				wait = 2 * time.Minute
			}
			select {
			case <-relayed:
			case <-time.After(wait):
				return fmt.Errorf("the destination did not close its migration socket within %v of the stream's end", wait)
			case <-ctx.Done():
				return ctx.Err()
			}
			qc.Close()
			qc = nil
			return nil
		}
	}
}

// socketDirs counts, per run's socket directory, the libvirt migrations of this receiver that use it. The directory
// goes when the last of them ends, not when the first one's socket does: a VM whose destination QEMU has not yet
// created its socket (its libvirt job not yet at Prepare) would find the directory gone, and libvirt's
// migrate-incoming fails to bind there (seen in TestLibvirtScatter: two VMs to one target, the second rolled back).
type socketDirs struct {
	mu   sync.Mutex
	used map[string]int
}

// acquire creates dir if this is its first user (makeSocketDir), and counts one more user.
func (d *socketDirs) acquire(dir string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.used[dir] == 0 {
		if err := makeSocketDir(dir); err != nil {
			return err
		}
	}
	if d.used == nil {
		d.used = map[string]int{}
	}
	d.used[dir]++
	return nil
}

// release counts one user less, and removes dir when it was the last and dir is empty (QEMU unlinks its socket when
// its load ends; a socket left there is left alone).
func (d *socketDirs) release(dir string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.used[dir]--; d.used[dir] > 0 {
		return
	}
	delete(d.used, dir)
	_ = os.Remove(dir)
}

// libvirtQEMUUser is the user libvirt runs QEMU as on Debian and Ubuntu (qemu.conf's default).
const libvirtQEMUUser = "libvirt-qemu"

// makeSocketDir creates the run's socket directory, where libvirt's destination QEMU creates its listening socket:
// mode 0700, owned by libvirt's QEMU user where that user exists, so that a QEMU that runs as that user (libvirt's
// default) may create the socket and nobody else may connect to it (root, the receiver, still can).
func makeSocketDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	u, err := user.Lookup(libvirtQEMUUser)
	if err != nil {
		return nil // no such user: QEMU runs as root, or as a user qemu.conf names, who must own SocketDir itself
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return nil
	}
	return os.Chown(dir, uid, gid)
}

// dialLibvirtSocket connects to the socket libvirt's destination QEMU listens on. It exists by the time the
// stream's first frame arrives (Prepare comes before Perform); a short retry covers a QEMU that is still between
// creating it and listening.
func dialLibvirtSocket(ctx context.Context, path string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, libvirtDialWait)
	defer cancel()
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("connecting to libvirt's destination socket %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("libvirt's destination socket %s: nothing listens there (did libvirt's Prepare run on this host, in this mount namespace?): %w", path, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
