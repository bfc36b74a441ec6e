package virt

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// SocketDir is where vmscatter's migration sockets live on every host: SocketDir/RUN/DOM.sock, the same path on
// the source (the sender listens on it) and on the target (libvirt's destination QEMU listens on it).
const SocketDir = "/run/vmscatter"

// ErrRefused says vmscatter will not carry a migration with these options.
var ErrRefused = errors.New("libvirt migration refused")

// MigrateOptions are the choices of one libvirt migration through vmscatter.
type MigrateOptions struct {
	DestURI string // the target host's libvirt URI, as the source libvirtd reaches it (--p2p)
	Socket  string // the unix socket, SocketDir/RUN/DOM.sock
	// AutoConverge throttles the guest's vCPUs while dirtying outruns the link (--auto-converge).
	AutoConverge bool
	// Timeout, when set, makes libvirt act when the migration has not converged after it (--timeout with
	// --timeout-suspend: the source is paused, which starts the stop-and-copy).
	Timeout time.Duration
	// BandwidthMiB caps the migration's rate, MiB/s (--bandwidth); 0 means libvirt's default (unlimited).
	BandwidthMiB int64
	// Unsafe passes --unsafe: libvirt skips its check that every disk is on a shared or cluster file system (or
	// uncached). For a lab whose shared storage is a local directory; vmscatter's receiver checks each image itself.
	Unsafe bool

	// What vmscatter cannot carry; set any and MigrateArgs refuses. They are here so that a caller that wants them
	// is told why not.
	Parallel   bool // multifd: 1+N connections
	Compressed bool // XBZRLE or compression: records vmscatter does not decode
	Postcopy   bool // post-copy: pages the destination pulls over the return path
	CopyStore  bool // --copy-storage-*: non-shared disks, sent over NBD
	Tunnelled  bool // --tunnelled: the data rides libvirt's own connection, not the socket
}

// MigrateArgs returns virsh's arguments for migrating dom through vmscatter's socket:
//
//	migrate --live --p2p --persistent --undefinesource [--auto-converge] [--unsafe] [--bandwidth MiB/s]
//	        [--timeout N --timeout-suspend]
//	        DOM DESTURI --migrateuri unix://SOCKET
//
// Why each flag:
//   - --live: the guest keeps running during the pre-copy; vmscatter dedups the pages as they stream.
//   - --p2p: the source libvirtd itself talks to the destination's, so Prepare, Perform, Finish and Confirm are
//     libvirt's own protocol between the daemons and do not depend on virsh (or vmscatter) staying up.
//   - --persistent and --undefinesource: the domain ends defined on the target and undefined on the source, as a
//     host evacuation wants; a failed migration leaves the source definition untouched.
//   - --migrateuri unix://: both QEMUs use the same path, each in its own host's /run; vmscatter's sender owns the
//     source side, libvirt's destination QEMU listens on the target side, and the receiver connects to it.
//
// Refused: --parallel (multifd opens 1+N channels), --compressed (XBZRLE records), post-copy (the destination pulls
// pages vmscatter's stream does not carry), --copy-storage-* (disks must be on shared storage) and --tunnelled (no
// unix URI; the data would bypass vmscatter).
func MigrateArgs(dom string, o MigrateOptions) ([]string, error) {
	switch {
	case o.Parallel:
		return nil, fmt.Errorf("%w: --parallel (multifd) opens more than one channel, which vmscatter does not carry: migrate %s without it", ErrRefused, dom)
	case o.Compressed:
		return nil, fmt.Errorf("%w: --compressed changes the stream's page records (XBZRLE), which vmscatter does not decode; it compresses pages itself", ErrRefused)
	case o.Postcopy:
		return nil, fmt.Errorf("%w: post-copy moves pages on demand over the return path; vmscatter migrates pre-copy only (use --policy autoconverge for hot guests)", ErrRefused)
	case o.CopyStore:
		return nil, fmt.Errorf("%w: --copy-storage-* copies non-shared disks; vmscatter needs %s's disks on shared storage", ErrRefused, dom)
	case o.Tunnelled:
		return nil, fmt.Errorf("%w: --tunnelled carries the data on libvirt's own connection, never through vmscatter's socket", ErrRefused)
	}
	if o.DestURI == "" {
		return nil, fmt.Errorf("%w: no libvirt URI for the target of %s (--target-connect ADDR=URI)", ErrRefused, dom)
	}
	if err := CheckSocket(o.Socket); err != nil {
		return nil, err
	}
	args := []string{"migrate", "--live", "--p2p", "--persistent", "--undefinesource"}
	if o.AutoConverge {
		args = append(args, "--auto-converge")
	}
	if o.Unsafe {
		args = append(args, "--unsafe")
	}
	if o.BandwidthMiB > 0 {
		args = append(args, "--bandwidth", strconv.FormatInt(o.BandwidthMiB, 10))
	}
	if o.Timeout > 0 {
		args = append(args, "--timeout", strconv.Itoa(max(1, int(o.Timeout/time.Second))), "--timeout-suspend")
	}
	return append(args, "--domain", dom, "--desturi", o.DestURI, "--migrateuri", "unix://"+o.Socket), nil
}

// CheckSocket checks that path is a migration socket under SocketDir: clean, absolute, short enough for a unix
// socket address (108 bytes).
func CheckSocket(path string) error {
	if path == "" || !filepath.IsAbs(path) || filepath.Clean(path) != path ||
		!strings.HasPrefix(path, SocketDir+"/") || strings.Contains(path, ",") {
		return fmt.Errorf("%w: migration socket %q must be a clean path under %s/", ErrRefused, path, SocketDir)
	}
	if len(path) >= 108 {
		return fmt.Errorf("%w: migration socket %q is %d bytes; a unix socket path must be shorter than 108", ErrRefused, path, len(path))
	}
	return nil
}

// SocketPath is the socket of domain dom in run run: SocketDir/RUN/DOM.sock.
func SocketPath(run, dom string) string { return filepath.Join(SocketDir, run, dom+".sock") }

// Migrate runs libvirt's migration of dom (MigrateArgs) and waits for it to end; ctx bounds it. A nil error means
// libvirt completed it: Finish ran on the target and Confirm on the source.
func (c *Client) Migrate(ctx context.Context, dom string, o MigrateOptions) error {
	args, err := MigrateArgs(dom, o)
	if err != nil {
		return err
	}
	_, err = c.run(ctx, args...)
	return err
}

// MigrateDirect runs libvirt's own migration of dom with its data straight to the target (dataURI, e.g.
// tcp://198.18.0.2): `--live --p2p --persistent --undefinesource`, and --unsafe when asked. It is the baseline
// vmscatter is measured against (vmscatter-lab bench --libvirt), and what an operator runs without vmscatter.
func (c *Client) MigrateDirect(ctx context.Context, dom, destURI, dataURI string, unsafe bool) error {
	args := []string{"migrate", "--live", "--p2p", "--persistent", "--undefinesource"}
	if unsafe {
		args = append(args, "--unsafe")
	}
	_, err := c.run(ctx, append(args, "--domain", dom, "--desturi", destURI, "--migrateuri", dataURI)...)
	return err
}
