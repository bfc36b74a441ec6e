package bench

import (
	"bytes"
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
	"time"

	"github.com/vmscatter/vmscatter/bench/fixture"
	"github.com/vmscatter/vmscatter/bench/virtlab"
	"github.com/vmscatter/vmscatter/scatter/report"
)

// LibvirtRig is the libvirt lab with vmscatter on it (docs/libvirt.md): a source host and target hosts, each with
// its own libvirtd (bench/virtlab), and `vmscatter receive` running next to each target's libvirtd, in its
// namespaces. Its methods are safe for concurrent use.
type LibvirtRig struct {
	Lab     *virtlab.Lab
	Dir     string // the lab's shared storage and logs
	Bin     string // the vmscatter binary, absolute
	Key     string
	Src     *virtlab.Host
	Targets []*virtlab.Host

	mu   sync.Mutex
	recv map[string]*exec.Cmd
}

// LibvirtReceiverPort is where the rig's receivers listen.
const LibvirtReceiverPort = "7400"

// NewLibvirtRig builds the lab (hosts "src" and targets), makes a key and starts a receiver on every target.
func NewLibvirtRig(ctx context.Context, dir, bin string, targets ...string) (_ *LibvirtRig, err error) {
	if err := virtlab.Available(); err != nil {
		return nil, err
	}
	l, err := virtlab.New(ctx, virtlab.Config{Hosts: append([]string{"src"}, targets...), Dir: dir})
	if err != nil {
		return nil, err
	}
	r := &LibvirtRig{Lab: l, Dir: dir, Bin: bin, Key: filepath.Join(dir, "key"), Src: l.Host("src"), recv: map[string]*exec.Cmd{}}
	defer func() {
		if err != nil {
			r.Close()
		}
	}()
	if out, err := exec.CommandContext(ctx, bin, "keygen", "--out", r.Key).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("keygen: %v: %s", err, out)
	}
	for _, name := range targets {
		h := l.Host(name)
		r.Targets = append(r.Targets, h)
		if err := r.StartReceiver(ctx, h); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Close ends the receivers by PID and removes the lab.
func (r *LibvirtRig) Close() error {
	r.mu.Lock()
	for name, cmd := range r.recv {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		delete(r.recv, name)
	}
	r.mu.Unlock()
	return r.Lab.Close()
}

// Addr is target h's receiver address.
func (r *LibvirtRig) Addr(h *virtlab.Host) string {
	return net.JoinHostPort(h.Addr.String(), LibvirtReceiverPort)
}

// TargetOf is the target host whose receiver address is addr, or nil.
func (r *LibvirtRig) TargetOf(addr string) *virtlab.Host {
	for _, h := range r.Targets {
		if r.Addr(h) == addr {
			return h
		}
	}
	return nil
}

// ReceiverLog is target name's receiver log.
func (r *LibvirtRig) ReceiverLog(name string) string {
	return filepath.Join(r.Dir, "receiver-"+name+".log")
}

// SharedDir holds the domains' files: XML, qcow2 disk, console log.
func (r *LibvirtRig) SharedDir() string { return filepath.Join(r.Dir, "shared") }

// StartReceiver runs `vmscatter receive` in target h's namespaces, next to its libvirtd, and waits until it accepts.
func (r *LibvirtRig) StartReceiver(ctx context.Context, h *virtlab.Host) error {
	logf, err := os.OpenFile(r.ReceiverLog(h.Name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{"receive", "--listen", r.Addr(h), "--data-dir", filepath.Join(r.Dir, "data-"+h.Name),
		"--key-file", r.Key, "--allow-path", r.Dir, "--log-level", "info"}
	if cache, err := fixture.CacheDir(); err == nil {
		args = append(args, "--allow-path", filepath.Dir(cache))
	}
	cmd := h.Command(context.Background(), r.Bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the receiver on %s: %w", h.Name, err)
	}
	r.mu.Lock()
	r.recv[h.Name] = cmd
	r.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var c net.Conn
		err := h.Do(func() (err error) { c, err = net.DialTimeout("tcp", r.Addr(h), time.Second); return })
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("receiver on %s does not accept connections: %v", h.Name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// KillReceiver kills target name's receiver with SIGKILL, by PID, as a crash would.
func (r *LibvirtRig) KillReceiver(name string) error {
	r.mu.Lock()
	cmd := r.recv[name]
	delete(r.recv, name)
	r.mu.Unlock()
	if cmd == nil {
		return fmt.Errorf("no receiver runs on %s", name)
	}
	err := cmd.Process.Kill()
	_ = cmd.Wait()
	return err
}

// BootDomains defines the domains on the source's libvirtd and starts them, one after another, each to its
// workload's first progress line.
func (r *LibvirtRig) BootDomains(ctx context.Context, names []string, o virtlab.GuestOptions) ([]*virtlab.Guest, error) {
	var gs []*virtlab.Guest
	for _, n := range names {
		g, err := r.Src.DefineGuest(ctx, r.SharedDir(), n, o)
		if err != nil {
			return nil, err
		}
		if err := r.Src.StartGuest(ctx, g); err != nil {
			return nil, err
		}
		gs = append(gs, g)
	}
	return gs, nil
}

// LibvirtSend is one `vmscatter send --domains` run.
type LibvirtSend struct {
	Report *report.Report
	Code   int    // its exit code
	Output string // its progress lines and messages
}

// Send runs `vmscatter send --domains` in the source host's namespaces, to every target, with extra arguments.
func (r *LibvirtRig) Send(ctx context.Context, domains []string, extra ...string) (*LibvirtSend, error) {
	var addrs, uris []string
	for _, h := range r.Targets {
		addrs = append(addrs, r.Addr(h))
		uris = append(uris, r.Addr(h)+"="+h.URI)
	}
	repPath := filepath.Join(r.Dir, fmt.Sprintf("report-%d.json", time.Now().UnixNano()))
	// --libvirt-unsafe: the lab's shared storage is a local directory, which libvirt's own check refuses; the
	// receiver still checks that every image is the same file.
	args := append([]string{"send", "--domains", strings.Join(domains, ","), "--connect", r.Src.URI,
		"--targets", strings.Join(addrs, ","), "--target-connect", strings.Join(uris, ","), "--libvirt-unsafe",
		"--key-file", r.Key, "--report", repPath, "--state-dir", filepath.Join(r.Dir, "state")}, extra...)
	cmd := r.Src.Command(ctx, r.Bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	res := &LibvirtSend{Output: out.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		res.Code = ee.ExitCode()
	} else if err != nil {
		return res, fmt.Errorf("send: %w", err)
	}
	b, err := os.ReadFile(repPath)
	if err != nil {
		return res, fmt.Errorf("send exited %d without a report: %w", res.Code, err)
	}
	res.Report = new(report.Report)
	if err := json.Unmarshal(b, res.Report); err != nil {
		return res, err
	}
	return res, nil
}

// NativeMigrate migrates each domain to its target with libvirt's own migration, all at once, as an operator
// would without vmscatter: `virsh migrate --live --p2p --persistent --undefinesource` with the data over TCP to
// the target's address. It returns the first failure.
func (r *LibvirtRig) NativeMigrate(ctx context.Context, placement map[string]*virtlab.Host) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(placement))
	for dom, h := range placement {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := r.Src.Virt.MigrateDirect(ctx, dom, h.URI, "tcp://"+h.Addr.String(), true)
			if err != nil {
				errs <- fmt.Errorf("%s → %s: %w", dom, h.Name, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// RemoveDomains destroys and undefines the named domains wherever the rig's libvirtds know them.
func (r *LibvirtRig) RemoveDomains(ctx context.Context, names []string) {
	for _, h := range r.Lab.Hosts() {
		for _, n := range names {
			_ = h.Virt.Destroy(ctx, n)
			_ = h.Virt.Undefine(ctx, n)
		}
	}
}
