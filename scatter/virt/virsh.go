package virt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// DefaultCallTimeout bounds one virsh call whose context has no earlier deadline. Migrate has its own bound.
const DefaultCallTimeout = 30 * time.Second

// DefaultRunDir is libvirt's run directory on a host: its QEMU driver writes each domain's pidfile under qemu/.
const DefaultRunDir = "/run/libvirt"

// ErrNoDomain says libvirt knows no domain of that name.
var ErrNoDomain = errors.New("libvirt: no such domain")

// Client talks to one libvirtd through virsh. Its methods are safe for concurrent use (each runs its own virsh).
type Client struct {
	URI    string // libvirt connection URI, e.g. qemu:///system; "" means virsh's default
	Virsh  string // the virsh binary; "" means "virsh" on PATH
	RunDir string // the host's libvirt run directory, for pidfiles; "" means DefaultRunDir
}

// run runs virsh with args and returns its standard output. The call is bounded by ctx and, when ctx has no
// deadline, by DefaultCallTimeout. A failure carries virsh's own message.
func (c *Client) run(ctx context.Context, args ...string) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultCallTimeout)
		defer cancel()
	}
	bin := c.Virsh
	if bin == "" {
		bin = "virsh"
	}
	full := []string{"-q"}
	if c.URI != "" {
		full = append(full, "-c", c.URI)
	}
	full = append(full, args...)
	cmd := exec.CommandContext(ctx, bin, full...)
	cmd.WaitDelay = 2 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		msg := strings.TrimSpace(errb.String())
		if ctx.Err() != nil {
			return out.String(), fmt.Errorf("virsh %s: %w (is libvirtd at %s answering?)", args[0], ctx.Err(), c.uriName())
		}
		if strings.Contains(msg, "Domain not found") || strings.Contains(msg, "failed to get domain") {
			return out.String(), fmt.Errorf("%w: virsh %s: %s", ErrNoDomain, args[0], msg)
		}
		if errors.Is(err, exec.ErrNotFound) {
			return "", fmt.Errorf("virsh not found: install libvirt-clients (scripts/install-libvirt.sh): %w", err)
		}
		return out.String(), fmt.Errorf("virsh %s (libvirt at %s): %s", verb(args), c.uriName(), strings.TrimPrefix(msg, "error: "))
	}
	return out.String(), nil
}

// verb names a virsh call for messages: its command and, where one is named, its domain.
func verb(args []string) string {
	for i, a := range args {
		if (a == "--" || a == "--domain") && i+1 < len(args) {
			return args[0] + " " + args[i+1]
		}
	}
	return args[0]
}

func (c *Client) uriName() string {
	if c.URI == "" {
		return "(default)"
	}
	return c.URI
}

// DumpXML reads a domain's live definition.
func (c *Client) DumpXML(ctx context.Context, dom string) (*Domain, error) {
	out, err := c.run(ctx, "dumpxml", "--", dom)
	if err != nil {
		return nil, err
	}
	return ParseDomain([]byte(out))
}

// State reads a domain's state (domstate).
func (c *Client) State(ctx context.Context, dom string) (State, error) {
	out, err := c.run(ctx, "domstate", "--", dom)
	if err != nil {
		return "", err
	}
	return ParseState(out)
}

// Exists reports whether libvirt has a domain of that name, defined or transient.
func (c *Client) Exists(ctx context.Context, dom string) (bool, error) {
	_, err := c.run(ctx, "domid", "--", dom) // domid works for inactive domains too ("-")
	if errors.Is(err, ErrNoDomain) {
		return false, nil
	}
	return err == nil, err
}

// Persistent reports whether the domain has a persistent definition (dominfo's "Persistent:").
func (c *Client) Persistent(ctx context.Context, dom string) (bool, error) {
	out, err := c.run(ctx, "dominfo", "--", dom)
	if err != nil {
		return false, err
	}
	kv := ParseKeyValues(out)
	return kv["Persistent"] == "yes", nil
}

// List names the domains libvirt knows: the running ones, or all of them.
func (c *Client) List(ctx context.Context, all bool) ([]string, error) {
	args := []string{"list", "--name"}
	if all {
		args = append(args, "--all")
	}
	out, err := c.run(ctx, args...)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			names = append(names, l)
		}
	}
	return names, nil
}

// PID is the domain's QEMU process id, read from its pidfile (RUN_DIR/qemu/DOM.pid), which libvirt writes for
// every running domain. Reading it does not taint the domain, as a monitor command would. The caller must run in
// the host's mount namespace (the path is the host's own).
func (c *Client) PID(dom string) (int, error) {
	dir := c.RunDir
	if dir == "" {
		dir = DefaultRunDir
	}
	path := filepath.Join(dir, "qemu", dom+".pid")
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("the QEMU pid of domain %s: %w (is it running, and is --libvirt-run-dir right?)", dom, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("the QEMU pid of domain %s: %s holds %q", dom, path, strings.TrimSpace(string(b)))
	}
	return pid, nil
}

// JobInfo reads the domain's migration job statistics: the job under way, or with completed the last one that
// ended (on a migration's destination only the completed form works, after the job).
func (c *Client) JobInfo(ctx context.Context, dom string, completed bool) (JobInfo, error) {
	args := []string{"domjobinfo", "--", dom}
	if completed {
		args = []string{"domjobinfo", "--completed", "--", dom}
	}
	out, err := c.run(ctx, args...)
	if err != nil {
		return JobInfo{}, err
	}
	return ParseJobInfo(out), nil
}

// HMP runs a human-monitor command through libvirt's QEMU pass-through (qemu-monitor-command --hmp). libvirt marks
// the domain tainted ("custom-monitor") when it is used: vmscatter uses it only where libvirt offers nothing better
// (the host address of guest RAM for the scan).
func (c *Client) HMP(ctx context.Context, dom, cmd string) (string, error) {
	return c.run(ctx, "qemu-monitor-command", "--hmp", "--", dom, cmd)
}

// Define defines a domain from an XML file; Start starts a defined domain; Destroy kills a running one; Undefine
// removes a definition.
func (c *Client) Define(ctx context.Context, xmlPath string) error {
	_, err := c.run(ctx, "define", "--file", xmlPath)
	return err
}

func (c *Client) Start(ctx context.Context, dom string) error {
	_, err := c.run(ctx, "start", "--", dom)
	return err
}

func (c *Client) Destroy(ctx context.Context, dom string) error {
	_, err := c.run(ctx, "destroy", "--", dom)
	return err
}

func (c *Client) Undefine(ctx context.Context, dom string) error {
	_, err := c.run(ctx, "undefine", "--", dom)
	return err
}

// SetMaxDowntime changes the running migration job's downtime limit (migrate-setmaxdowntime).
func (c *Client) SetMaxDowntime(ctx context.Context, dom string, d time.Duration) error {
	_, err := c.run(ctx, "migrate-setmaxdowntime", "--", dom, strconv.FormatInt(max(1, d.Milliseconds()), 10))
	return err
}

// AbortJob aborts the domain's job under way (domjobabort): a migration before its switch-over rolls back.
func (c *Client) AbortJob(ctx context.Context, dom string) error {
	_, err := c.run(ctx, "domjobabort", "--", dom)
	return err
}
