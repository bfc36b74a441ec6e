// Package virtlab runs one real libvirtd per lab host, for the libvirt lab's tests: each host is a network
// namespace of package lab, and its libvirtd runs in a mount and UTS namespace of its own
// (`ip netns exec NS unshare --mount --uts --propagation private`), with private directories bound over /run,
// /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt, a private /etc/hosts naming every lab
// host, a distinct host_uuid and a dotted hostname (NAME.test). docs/libvirt.md has why each is needed
// (libvirt refuses a migration to "the same host" otherwise, and two daemons would share pidfiles and sockets).
//
// Everything else of the file system is shared, as package lab's hosts share it: a disk image under the test's
// directory is at the same path for every host (the lab's shared storage).
//
// Processes that must see a host's /run (vmscatter's sender and receiver, whose migration sockets live under
// /run/vmscatter) run through Host.Command, which enters the host's namespaces with nsenter. virsh runs anywhere:
// Host.Virt's URI names the host's socket by its path outside the namespace. The source libvirtd reaches a target's
// (--p2p) through that same path: a unix socket is not confined to a network namespace, so the control connection
// needs no relay in the lab.
//
// Close destroys every domain, ends each libvirtd and QEMU by PID, and removes the namespaces; the mounts go with
// the mount namespaces' last processes. scripts/install-libvirt.sh installs what it needs.
package virtlab

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmscatter/vmscatter/bench/lab"
	"github.com/vmscatter/vmscatter/scatter/virt"
)

// LibvirtdPath is the daemon the lab starts (Debian 12's monolithic libvirtd).
const LibvirtdPath = "/usr/sbin/libvirtd"

// ErrMissing says libvirt is not installed here.
var ErrMissing = errors.New("virtlab: libvirtd or virsh is missing (run scripts/install-libvirt.sh as root)")

// Config describes a libvirt lab.
type Config struct {
	Hosts []string // lab host names, as package lab takes them
	Dir   string   // where each host's private directories go (DIR/NAME/...); the test's temporary directory
	MTU   int      // of the lab's links; 0 means 9000
}

// Lab is a set of lab hosts, each with its own libvirtd.
type Lab struct {
	Net   *lab.Lab
	hosts map[string]*Host
	order []*Host
}

// Host is one lab host with its libvirtd.
type Host struct {
	*lab.Host
	Hostname string // NAME.test
	Root     string // its private directories
	URI      string // its libvirtd, from anywhere on the machine
	Virt     *virt.Client
	daemon   *exec.Cmd
	exited   chan struct{}
}

// EnvLab is the environment variable that turns the libvirt lab's tests on (`make test-libvirt` sets it to 1): they
// are not yet part of `make test` (docs/libvirt.md, "The lab").
const EnvLab = "VMSCATTER_LIBVIRT_LAB"

// TestsWanted reports why the libvirt lab's tests should not run here, or nil: EnvLab unset, or Available's reasons.
func TestsWanted() error {
	if os.Getenv(EnvLab) != "1" {
		return fmt.Errorf("virtlab: the libvirt lab's tests run with %s=1 (make test-libvirt)", EnvLab)
	}
	return Available()
}

// Available reports why the lab cannot run here, or nil.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("virtlab: needs root (namespaces, mounts, libvirtd)")
	}
	if _, err := os.Stat(LibvirtdPath); err != nil {
		return ErrMissing
	}
	if _, err := exec.LookPath("virsh"); err != nil {
		return ErrMissing
	}
	for _, b := range []string{"nsenter", "unshare", "qemu-system-x86_64"} {
		if _, err := exec.LookPath(b); err != nil {
			return fmt.Errorf("virtlab: %s is missing: %w", b, err)
		}
	}
	return nil
}

// New creates the namespaces and starts every host's libvirtd, returning once each answers. On failure it removes
// whatever it created.
func New(ctx context.Context, cfg Config) (_ *Lab, err error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if cfg.MTU == 0 {
		cfg.MTU = 9000
	}
	nl, err := lab.New(ctx, lab.Config{Hosts: cfg.Hosts, MTU: cfg.MTU})
	if err != nil {
		return nil, err
	}
	l := &Lab{Net: nl, hosts: map[string]*Host{}}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	var hostsFile strings.Builder
	hostsFile.WriteString("127.0.0.1 localhost\n")
	for _, name := range cfg.Hosts {
		fmt.Fprintf(&hostsFile, "%s %s.test %s\n", nl.Host(name).Addr, name, name)
	}
	for _, name := range cfg.Hosts {
		h := &Host{Host: nl.Host(name), Hostname: name + ".test", Root: filepath.Join(cfg.Dir, name), exited: make(chan struct{})}
		sock := filepath.Join(h.Root, "run", "libvirt", "libvirt-sock")
		h.URI = "qemu+unix:///system?socket=" + sock
		h.Virt = &virt.Client{URI: h.URI, RunDir: filepath.Join(h.Root, "run", "libvirt")}
		if err := h.writeFiles(hostsFile.String()); err != nil {
			return nil, err
		}
		if err := h.startDaemon(); err != nil {
			return nil, err
		}
		l.hosts[name], l.order = h, append(l.order, h)
	}
	for _, h := range l.order {
		if err := h.waitReady(ctx); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// Host returns the named host, or nil.
func (l *Lab) Host(name string) *Host { return l.hosts[name] }

// Hosts returns the hosts in configuration order.
func (l *Lab) Hosts() []*Host { return l.order }

// privateDirs are bound over the host's own paths: ROOT/<key> over <value>.
var privateDirs = [][2]string{
	{"run", "/run"},
	{"etc", "/etc/libvirt"},
	{"lib", "/var/lib/libvirt"},
	{"cache", "/var/cache/libvirt"},
	{"log", "/var/log/libvirt"},
}

const libvirtdConf = `# virtlab: one libvirtd per lab host
listen_tls = 0
listen_tcp = 0
auth_unix_rw = "none"
auth_unix_ro = "none"
unix_sock_group = "root"
host_uuid = "%s"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
`

// qemuConf is the test qemu.conf (docs/libvirt.md): QEMU as root without a security driver, no owner
// bookkeeping (two daemons on one kernel would fight over the owner xattrs of the same files), console logs to
// files (no virtlogd), no cgroups (ip netns exec remounts /sys, so libvirt sees none anyway).
const qemuConf = `# virtlab: the test qemu.conf
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
`

func (h *Host) writeFiles(hosts string) error {
	for _, d := range privateDirs {
		if err := os.MkdirAll(filepath.Join(h.Root, d[0]), 0o755); err != nil {
			return err
		}
	}
	for _, d := range []string{"log/qemu", "lib/qemu", "cache/qemu", "run/vmscatter"} {
		if err := os.MkdirAll(filepath.Join(h.Root, d), 0o755); err != nil {
			return err
		}
	}
	uuid := make([]byte, 16)
	if _, err := rand.Read(uuid); err != nil {
		return err
	}
	uuid[6], uuid[8] = uuid[6]&0x0f|0x40, uuid[8]&0x3f|0x80
	u := fmt.Sprintf("%x-%x-%x-%x-%x", uuid[0:4], uuid[4:6], uuid[6:8], uuid[8:10], uuid[10:16])
	files := map[string]string{
		"etc/libvirtd.conf": fmt.Sprintf(libvirtdConf, u),
		"etc/qemu.conf":     qemuConf,
		"hosts":             hosts,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(h.Root, name), []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// startDaemon starts libvirtd in the host's network namespace and new mount and UTS namespaces. The shell binds the
// private directories and execs libvirtd, so the process's PID is libvirtd's.
func (h *Host) startDaemon() error {
	var script strings.Builder
	script.WriteString("set -e\n")
	for _, d := range privateDirs {
		fmt.Fprintf(&script, "mkdir -p %s && mount --bind %s %s\n", d[1], shellQuote(filepath.Join(h.Root, d[0])), d[1])
	}
	fmt.Fprintf(&script, "mount --bind %s /etc/hosts\n", shellQuote(filepath.Join(h.Root, "hosts")))
	fmt.Fprintf(&script, "hostname %s\n", h.Hostname)
	fmt.Fprintf(&script, "exec %s\n", LibvirtdPath)
	// Not bound to a context: the daemon lives until Close, which ends it by PID.
	cmd := exec.Command("ip", "netns", "exec", h.NS, "unshare", "--mount", "--uts", "--propagation", "private",
		"sh", "-c", script.String())
	logf, err := os.Create(filepath.Join(h.Root, "libvirtd.out"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("virtlab: starting libvirtd on %s: %w", h.Name, err)
	}
	logf.Close()
	h.daemon = cmd
	go func() { cmd.Wait(); close(h.exited) }()
	return nil
}

// waitReady waits until the host's libvirtd answers, at most 30 s.
func (h *Host) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := h.Virt.List(cctx, true)
		ccancel()
		if err == nil {
			return nil
		}
		select {
		case <-h.exited:
			out, _ := os.ReadFile(filepath.Join(h.Root, "libvirtd.out"))
			return fmt.Errorf("virtlab: libvirtd on %s exited: %s", h.Name, tail(string(out), 800))
		case <-ctx.Done():
			return fmt.Errorf("virtlab: libvirtd on %s does not answer: %v (log: %s)", h.Name, err, filepath.Join(h.Root, "log"))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// PID is the host's libvirtd process id.
func (h *Host) PID() int { return h.daemon.Process.Pid }

// Command returns a command that runs inside the host's network, mount and UTS namespaces (nsenter into its
// libvirtd's), so that it sees the host's own /run. The caller starts it and must end it before Close.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	full := append([]string{"-t", strconv.Itoa(h.PID()), "-m", "-u", "-n", "--", name}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", full...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// RunPath is a path of the host's /run as seen from outside its namespaces.
func (h *Host) RunPath(p string) string {
	return filepath.Join(h.Root, "run", strings.TrimPrefix(p, "/run/"))
}

// Close destroys every domain of every host, ends the libvirtds and the QEMUs they started (by PID), and removes the
// namespaces. It returns the first error and goes on past it.
func (l *Lab) Close() error {
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	for _, h := range l.order {
		keep(h.close())
	}
	if l.Net != nil {
		keep(l.Net.Close())
	}
	return first
}

func (h *Host) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if h.daemon == nil {
		return nil
	}
	select {
	case <-h.exited:
	default:
		if names, err := h.Virt.List(ctx, false); err == nil {
			for _, n := range names {
				_ = h.Virt.Destroy(ctx, n)
			}
		}
	}
	// QEMUs libvirt could not destroy (or that outlived a dead daemon): by their pidfiles, checked to be QEMU.
	pids, _ := filepath.Glob(filepath.Join(h.Root, "run", "libvirt", "qemu", "*.pid"))
	for _, p := range pids {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 && isQEMU(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	_ = h.daemon.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.exited:
	case <-time.After(10 * time.Second):
		_ = h.daemon.Process.Kill()
		<-h.exited
	}
	return nil
}

func isQEMU(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(strings.SplitN(string(b), "\x00", 2)[0], "qemu-system")
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
