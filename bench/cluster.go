// Package bench runs vmscatter for real: guests from the fixture on a source host, receivers on target hosts, all
// in a network-namespace lab, driven through the vmscatter binary exactly as an operator would. The demo, the
// integration tests and the benchmarks all stand on Cluster. Subpackages hold the parts: fixture (guest kernel,
// initramfs, QEMU command line), guest (the workload inside the guests), lab (the namespaces).
package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmscatter/vmscatter/bench/fixture"
	"github.com/vmscatter/vmscatter/bench/lab"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/secure"
)

// ReceiverPort is the port receivers listen on inside the lab.
const ReceiverPort = 7400

// ClusterConfig describes a cluster.
type ClusterConfig struct {
	Targets int    // target hosts; default 2
	MTU     int    // lab MTU; default 1500
	Bin     string // the vmscatter binary; required
	Dir     string // work directory (guests, receivers' data, logs, reports); required
	// TargetCapacity is each receiver's --capacity (memory offered to migrated VMs), e.g. "300M"; "" offers what is
	// available. Small capacities make the planner spread VMs.
	TargetCapacity string
	ReceiverQEMU   string // the receivers' `--qemu`: the binary destinations run; "" means the source's, looked up
	Subnet         string // lab subnet inside 198.18.0.0/15; default chosen by the lab
	// Snooping turns on IGMP snooping on the lab's bridge, so multicast reaches only the hosts that joined.
	Snooping bool
	// Disks gives every guest of StartGuests a qcow2 disk of its own on the cluster's shared storage (SharedDir),
	// which its workload writes and verifies (fixture.Disk).
	Disks bool
}

// Cluster is a lab with a source host, target hosts running `vmscatter receive`, and guests. Close removes
// everything it created: receivers, destination QEMUs, guests, namespaces.
type Cluster struct {
	Lab     *lab.Lab
	Source  *lab.Host
	Targets []*lab.Host
	KeyFile string
	Guests  []*fixture.Guest

	// Progress, if set, also receives the stderr of `vmscatter send` (its progress lines) as they come.
	Progress io.Writer

	cfg       ClusterConfig
	mu        sync.Mutex
	receivers []*exec.Cmd // by target index; nil once killed
	sends     int
}

// spreadCapacity is the receiver capacity that makes the planner spread guests evenly over targets: room for
// ceil(guests/targets) guests and half of one more.
func spreadCapacity(guests, targets, memMiB int) string {
	per := (guests + targets - 1) / targets
	return fmt.Sprintf("%dM", per*memMiB+memMiB/2)
}

// NewCluster builds the lab, writes a key and starts a receiver on every target.
func NewCluster(ctx context.Context, cfg ClusterConfig) (_ *Cluster, err error) {
	if cfg.Bin == "" || cfg.Dir == "" {
		return nil, errors.New("bench: ClusterConfig needs Bin and Dir")
	}
	if cfg.Targets == 0 {
		cfg.Targets = 2
	}
	// Every path the cluster hands a host (data dirs, shared storage, --allow-path) must be absolute.
	if cfg.Dir, err = filepath.Abs(cfg.Dir); err != nil {
		return nil, err
	}
	hosts := []string{"src"}
	for i := range cfg.Targets {
		hosts = append(hosts, fmt.Sprintf("t%d", i+1))
	}
	lc := lab.Config{Hosts: hosts, MTU: cfg.MTU, Snooping: cfg.Snooping}
	l, err := lab.New(ctx, lc)
	if err != nil {
		return nil, err
	}
	c := &Cluster{Lab: l, Source: l.Host("src"), cfg: cfg}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	for _, h := range hosts[1:] {
		c.Targets = append(c.Targets, l.Host(h))
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	c.KeyFile = filepath.Join(cfg.Dir, "key")
	os.Remove(c.KeyFile)
	if err := secure.WriteNewKey(c.KeyFile); err != nil {
		return nil, err
	}
	c.receivers = make([]*exec.Cmd, len(c.Targets))
	for i := range c.Targets {
		if err := c.StartReceiver(ctx, i); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// ReceiverAddr is target i's receiver address.
func (c *Cluster) ReceiverAddr(i int) string {
	return net.JoinHostPort(c.Targets[i].Addr.String(), strconv.Itoa(ReceiverPort))
}

// ReceiverAddrs lists every receiver's address.
func (c *Cluster) ReceiverAddrs() []string {
	var out []string
	for i := range c.Targets {
		out = append(out, c.ReceiverAddr(i))
	}
	return out
}

// DataDir is target i's receiver data directory.
func (c *Cluster) DataDir(i int) string {
	return filepath.Join(c.cfg.Dir, "targets", c.Targets[i].Name)
}

// ReceiverLog is target i's receiver log file.
func (c *Cluster) ReceiverLog(i int) string {
	return filepath.Join(c.cfg.Dir, "receiver-"+c.Targets[i].Name+".log")
}

// StartReceiver starts `vmscatter receive` on target i and waits until it accepts connections.
func (c *Cluster) StartReceiver(ctx context.Context, i int) error {
	t := c.Targets[i]
	if err := os.MkdirAll(c.DataDir(i), 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(c.ReceiverLog(i), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{"receive", "--listen", c.ReceiverAddr(i), "--data-dir", c.DataDir(i), "--key-file", c.KeyFile}
	if c.cfg.TargetCapacity != "" {
		args = append(args, "--capacity", c.cfg.TargetCapacity)
	}
	if c.cfg.ReceiverQEMU != "" {
		args = append(args, "--qemu", c.cfg.ReceiverQEMU)
	}
	// What the lab's guests boot from and write to: the fixture's kernel and initramfs and the fetched QEMUs'
	// firmware (all in the project's cache), and the cluster's shared storage.
	if cache, err := fixture.CacheDir(); err == nil {
		args = append(args, "--allow-path", filepath.Dir(cache))
	}
	if err := os.MkdirAll(c.SharedDir(), 0o755); err != nil {
		return err
	}
	args = append(args, "--allow-path", c.SharedDir())
	cmd := t.Command(context.Background(), c.cfg.Bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the receiver on %s: %w", t.Name, err)
	}
	c.mu.Lock()
	c.receivers[i] = cmd
	c.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var conn net.Conn
		err := t.Do(func() (err error) {
			conn, err = net.DialTimeout("tcp", c.ReceiverAddr(i), time.Second)
			return err
		})
		if err == nil {
			conn.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("receiver on %s does not accept connections: %v", t.Name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// KillReceiver kills target i's receiver process with SIGKILL, by PID, as a crash would.
func (c *Cluster) KillReceiver(i int) {
	c.mu.Lock()
	cmd := c.receivers[i]
	c.receivers[i] = nil
	c.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}

// SharedDir is the cluster's shared storage: the guests' disk images, at the same path from the source and every
// target (package lab: the hosts share the file system).
func (c *Cluster) SharedDir() string { return filepath.Join(c.cfg.Dir, "shared") }

// StartGuests boots n guests named prefix1..prefixN on the source, two at a time. With ClusterConfig.Disks, each gets
// the disk SharedDir/NAME.qcow2 (created when missing).
func (c *Cluster) StartGuests(ctx context.Context, prefix string, n int, o fixture.GuestOptions) ([]*fixture.Guest, error) {
	guests := make([]*fixture.Guest, n)
	errs := make([]error, n)
	sem := make(chan struct{}, 2)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			name, o := fmt.Sprintf("%s%d", prefix, i+1), o
			if c.cfg.Disks && o.Disk.Path == "" {
				o.Disk.Path = filepath.Join(c.SharedDir(), name+".qcow2")
			}
			guests[i], errs[i] = fixture.StartGuest(ctx, filepath.Join(c.cfg.Dir, "source"), name, o)
		}()
	}
	wg.Wait()
	for _, g := range guests {
		if g != nil {
			c.mu.Lock()
			c.Guests = append(c.Guests, g)
			c.mu.Unlock()
		}
	}
	return guests, errors.Join(errs...)
}

// SendResult is what one `vmscatter send` run gave.
type SendResult struct {
	Report     report.Report
	ReportPath string
	Exit       int
	Stderr     string
	SourceTx   uint64 // bytes that left the source host's interface (its counters)
	TargetRx   []uint64
	Elapsed    time.Duration
	CPU        time.Duration // the sender's CPU time, its whole life (wait4's rusage)
}

// StateDir is the lab sender's journal: one per cluster, so that no run of another lab holds its VMs.
func (c *Cluster) StateDir() string { return filepath.Join(c.cfg.Dir, "send-state") }

// Send runs `vmscatter send` on the source host for the given guests, to every target, with extra arguments.
func (c *Cluster) Send(ctx context.Context, guests []*fixture.Guest, extra ...string) (*SendResult, error) {
	var vms []string
	for _, g := range guests {
		vms = append(vms, g.Name+"="+g.QMPPath)
	}
	c.mu.Lock()
	c.sends++
	report := filepath.Join(c.cfg.Dir, fmt.Sprintf("report-%d.json", c.sends))
	c.mu.Unlock()
	args := append([]string{"send", "--vms", strings.Join(vms, ","), "--targets", strings.Join(c.ReceiverAddrs(), ","),
		"--key-file", c.KeyFile, "--report", report, "--state-dir", c.StateDir()}, extra...)
	_, tx0, _ := c.Source.Counters()
	rx0 := c.targetRx()
	var stderr bytes.Buffer
	cmd := c.Source.Command(ctx, c.cfg.Bin, args...)
	cmd.Stderr = &stderr
	if c.Progress != nil {
		cmd.Stderr = io.MultiWriter(&stderr, c.Progress)
	}
	start := time.Now()
	err := cmd.Run()
	res := &SendResult{Stderr: stderr.String(), Elapsed: time.Since(start), ReportPath: report, CPU: exitedCPU(cmd.ProcessState)}
	_ = os.WriteFile(strings.TrimSuffix(report, ".json")+".stderr", stderr.Bytes(), 0o644)
	_, tx1, _ := c.Source.Counters()
	res.SourceTx = tx1 - tx0
	for i, rx := range c.targetRx() {
		res.TargetRx = append(res.TargetRx, rx-rx0[i])
	}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		res.Exit = ee.ExitCode()
	case err != nil:
		return res, err
	}
	b, rerr := os.ReadFile(report)
	if rerr != nil {
		return res, fmt.Errorf("no report (exit %d): %v\n%s", res.Exit, rerr, res.Stderr)
	}
	if err := json.Unmarshal(b, &res.Report); err != nil {
		return res, fmt.Errorf("report: %w", err)
	}
	return res, nil
}

func (c *Cluster) targetRx() []uint64 {
	var out []uint64
	for _, t := range c.Targets {
		rx, _, _ := t.Counters()
		out = append(out, rx)
	}
	return out
}

// DestinationDir is where VM vm lives on target i.
func (c *Cluster) DestinationDir(i int, vm string) string { return filepath.Join(c.DataDir(i), vm) }

// TargetIndex finds a receiver address's target.
func (c *Cluster) TargetIndex(addr string) int {
	for i := range c.Targets {
		if c.ReceiverAddr(i) == addr {
			return i
		}
	}
	return -1
}

// Close stops everything: receivers, destination QEMUs (by the PIDs in their pidfiles), guests, then the lab.
func (c *Cluster) Close() error {
	for i := range c.receivers {
		c.mu.Lock()
		cmd := c.receivers[i]
		c.receivers[i] = nil
		c.mu.Unlock()
		if cmd != nil {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
			}
		}
	}
	for i := range c.Targets {
		KillByPidfiles(c.DataDir(i))
	}
	for _, g := range c.Guests {
		g.Kill()
	}
	if c.Lab != nil {
		return c.Lab.Close()
	}
	return nil
}

// KillByPidfiles kills, by PID, every live process named by a qemu.pid below dir/*/ and waits for it to go.
func KillByPidfiles(dir string) {
	files, _ := filepath.Glob(filepath.Join(dir, "*", "qemu.pid"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 1 {
			continue
		}
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			for range 100 {
				if syscall.Kill(pid, 0) != nil {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
}
