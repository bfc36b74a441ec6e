// Package bench runs vmscatter for real: guests from the fixture on a source host, receivers on target hosts, all
// in a network-namespace lab, driven through the vmscatter binary exactly as an operator would. The demo, the
// integration tests and the benchmarks all stand on Cluster. Subpackages hold the parts: fixture (guest kernel,
// initramfs, QEMU command line), guest (the workload inside the guests), lab (the namespaces).
package bench

import (
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
	// Big makes every guest of StartGuests a guest of a real size (BigShape: GiBs of RAM filled with a mix of shared
	// page cache, private data and zeros, 2 vCPUs, a disk, a NIC); it implies Disks. At most MaxBigGuests per call.
	Big *BigShape
	// StoreLimit is each receiver's --store-limit (memory for primed contents per session), e.g. "1G"; "" keeps the
	// receiver's default.
	StoreLimit string
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
	recovers  int
	running   []*SendRun // started by StartSend; Close kills any still running
	big       *bigNet    // with ClusterConfig.Big
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
	if cfg.Big != nil {
		shape := *cfg.Big
		if err := shape.fill(); err != nil {
			return nil, err
		}
		cfg.Big, cfg.Disks = &shape, true
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
	if cfg.Big != nil {
		if err := c.setUpBig(ctx); err != nil {
			return nil, err
		}
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
	if c.cfg.StoreLimit != "" {
		args = append(args, "--store-limit", c.cfg.StoreLimit)
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
	return c.StartGuestsWith(ctx, prefix, n, func(string) fixture.GuestOptions { return o })
}

// StartGuestsWith is StartGuests with each guest's options from opts, given the guest's name (for paths of its own,
// under GuestDir); with ClusterConfig.Disks, a guest whose options name no disk gets SharedDir/NAME.qcow2. With
// ClusterConfig.Big, the guests take the big shape (the memory, CPU, workload, cache and NIC options), and it returns
// once each has filled its memory (its first progress line).
func (c *Cluster) StartGuestsWith(ctx context.Context, prefix string, n int, opts func(name string) fixture.GuestOptions) ([]*fixture.Guest, error) {
	if c.cfg.Big != nil && n > MaxBigGuests {
		return nil, fmt.Errorf("bench: %d big guests at once, at most %d", n, MaxBigGuests)
	}
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
			name := fmt.Sprintf("%s%d", prefix, i+1)
			o := opts(name)
			if c.cfg.Big != nil {
				o = c.bigOptions(o, i)
			}
			if c.cfg.Disks && o.Disk.Path == "" {
				o.Disk.Path = filepath.Join(c.SharedDir(), name+".qcow2")
			}
			guests[i], errs[i] = fixture.StartGuest(ctx, c.sourceDir(), name, o)
		}()
	}
	wg.Wait()
	if c.cfg.Big != nil && errors.Join(errs...) == nil {
		// The workload prints its first progress line once it has filled its memory and read its page cache.
		fctx, cancel := context.WithTimeout(ctx, BigFillTimeout)
		for i, g := range guests {
			errs[i] = waitFilled(fctx, g)
		}
		cancel()
	}
	for _, g := range guests {
		if g != nil {
			c.mu.Lock()
			c.Guests = append(c.Guests, g)
			c.mu.Unlock()
		}
	}
	return guests, errors.Join(errs...)
}

func (c *Cluster) sourceDir() string { return filepath.Join(c.cfg.Dir, "source") }

// GuestDir is where guest name's files live on the source (fixture.Guest.Dir).
func (c *Cluster) GuestDir(name string) string { return filepath.Join(c.sourceDir(), name) }

// SendResult is what one `vmscatter send` run gave.
type SendResult struct {
	Report     report.Report
	ReportPath string
	Exit       int
	Stderr     string
	SourceTx   uint64 // bytes that left the source host's interface (its counters)
	TargetRx   []uint64
	Elapsed    time.Duration
	CPU        time.Duration  // the sender's CPU time, its whole life (wait4's rusage)
	PeakRSS    int64          // the sender's peak resident set in bytes (wait4's rusage, bench/cpu.go)
	Killed     syscall.Signal // the signal that ended the sender, if one did (Exit is then -1)
}

// StateDir is the lab sender's journal: one per cluster, so that no run of another lab holds its VMs.
func (c *Cluster) StateDir() string { return filepath.Join(c.cfg.Dir, "send-state") }

// Send runs `vmscatter send` on the source host for the given guests, to every target, with extra arguments.
func (c *Cluster) Send(ctx context.Context, guests []*fixture.Guest, extra ...string) (*SendResult, error) {
	r, err := c.StartSend(ctx, guests, extra...)
	if err != nil {
		return nil, err
	}
	return r.Wait()
}

// SendRun is a `vmscatter send` running in the background (StartSend): signal it by its PID, then Wait.
type SendRun struct {
	PID        int // vmscatter's own (ip netns exec execs it)
	ReportPath string

	c          *Cluster
	cmd        *exec.Cmd
	stderrPath string
	start      time.Time
	tx0        uint64
	rx0        []uint64
	done       chan struct{} // closed once the process is reaped
	waitErr    error         // cmd.Wait's, valid after done
}

// StartSend starts `vmscatter send` on the source host, as Send does, and returns while it runs. Its stderr goes to
// the report's name with .stderr (and to Progress).
func (c *Cluster) StartSend(ctx context.Context, guests []*fixture.Guest, extra ...string) (*SendRun, error) {
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
	r := &SendRun{ReportPath: report, c: c, stderrPath: strings.TrimSuffix(report, ".json") + ".stderr", done: make(chan struct{})}
	stderr, err := os.Create(r.stderrPath)
	if err != nil {
		return nil, err
	}
	_, r.tx0, _ = c.Source.Counters()
	r.rx0 = c.targetRx()
	r.cmd = c.Source.Command(ctx, c.cfg.Bin, args...)
	r.cmd.Stderr = stderr
	if c.Progress != nil {
		r.cmd.Stderr = io.MultiWriter(stderr, c.Progress)
	}
	r.start = time.Now()
	if err := r.cmd.Start(); err != nil {
		stderr.Close()
		return nil, fmt.Errorf("starting vmscatter send: %w", err)
	}
	r.PID = r.cmd.Process.Pid
	c.mu.Lock()
	c.running = append(c.running, r)
	c.mu.Unlock()
	go func() {
		r.waitErr = r.cmd.Wait()
		// Only now: with Progress, exec's copier writes into the file until Wait has returned.
		stderr.Close()
		close(r.done)
	}()
	return r, nil
}

// Signal sends sig to the sender's process (its PID only). Signalling one that has exited does nothing.
func (r *SendRun) Signal(sig syscall.Signal) error {
	select {
	case <-r.done:
		return nil
	default:
		return r.cmd.Process.Signal(sig)
	}
}

// Done is closed once the sender has exited and been reaped.
func (r *SendRun) Done() <-chan struct{} { return r.done }

// Killed is the signal that ended the sender, 0 if it exited by itself. Call it after Done is closed.
func (r *SendRun) Killed() syscall.Signal {
	if ws, ok := r.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return ws.Signal()
	}
	return 0
}

// Wait waits for the sender to exit and reads its report. A sender killed by a signal exits -1 (Killed says by
// which); its report, if it wrote none, is an error beside the result, which is returned all the same.
func (r *SendRun) Wait() (*SendResult, error) {
	<-r.done
	c := r.c
	b, _ := os.ReadFile(r.stderrPath)
	res := &SendResult{Stderr: string(b), Elapsed: time.Since(r.start), ReportPath: r.ReportPath, CPU: exitedCPU(r.cmd.ProcessState),
		PeakRSS: exitedPeakRSS(r.cmd.ProcessState)}
	_, tx1, _ := c.Source.Counters()
	res.SourceTx = tx1 - r.tx0
	for i, rx := range c.targetRx() {
		res.TargetRx = append(res.TargetRx, rx-r.rx0[i])
	}
	var ee *exec.ExitError
	switch {
	case errors.As(r.waitErr, &ee):
		res.Exit = ee.ExitCode()
		res.Killed = r.Killed()
	case r.waitErr != nil:
		return res, r.waitErr
	}
	b, rerr := os.ReadFile(r.ReportPath)
	if rerr != nil {
		return res, fmt.Errorf("no report (exit %d): %v\n%s", res.Exit, rerr, res.Stderr)
	}
	if err := json.Unmarshal(b, &res.Report); err != nil {
		return res, fmt.Errorf("report: %w", err)
	}
	return res, nil
}

// RecoverResult is what one `vmscatter recover` gave.
type RecoverResult struct {
	Report     report.Report
	ReportPath string
	Exit       int
	Stderr     string // its progress lines and log (--log-level info)
}

// Recover runs `vmscatter recover` over the lab sender's journal (StateDir), on the source host, from where it
// reaches the source QEMUs and the receivers.
func (c *Cluster) Recover(ctx context.Context) (*RecoverResult, error) {
	c.mu.Lock()
	c.recovers++
	rep := filepath.Join(c.cfg.Dir, fmt.Sprintf("recover-%d.json", c.recovers))
	c.mu.Unlock()
	res := &RecoverResult{ReportPath: rep}
	out, err := c.runOnSource(ctx, strings.TrimSuffix(rep, ".json")+".stderr", "recover", "--state-dir", c.StateDir(),
		"--key-file", c.KeyFile, "--report", rep, "--log-level", "info")
	res.Stderr = out
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		res.Exit = ee.ExitCode()
	case err != nil:
		return res, err
	}
	b, rerr := os.ReadFile(rep)
	if rerr != nil {
		return res, fmt.Errorf("vmscatter recover wrote no report (exit %d): %v\n%s", res.Exit, rerr, out)
	}
	if err := json.Unmarshal(b, &res.Report); err != nil {
		return res, fmt.Errorf("recover report: %w", err)
	}
	return res, nil
}

// Status runs `vmscatter status` over the lab sender's journal and returns what it printed.
func (c *Cluster) Status(ctx context.Context) (string, error) {
	return c.runOnSource(ctx, "", "status", "--state-dir", c.StateDir())
}

// runOnSource runs the vmscatter binary on the source host and returns its stdout and stderr together, also kept in
// logPath if one is given.
func (c *Cluster) runOnSource(ctx context.Context, logPath string, args ...string) (string, error) {
	out, err := c.Source.Command(ctx, c.cfg.Bin, args...).CombinedOutput()
	if logPath != "" {
		_ = os.WriteFile(logPath, out, 0o644)
	}
	return string(out), err
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

// Close stops everything: senders still running, receivers, destination QEMUs (by the PIDs in their pidfiles),
// guests, then the lab.
func (c *Cluster) Close() error {
	c.mu.Lock()
	running := c.running
	c.running = nil
	c.mu.Unlock()
	for _, r := range running {
		_ = r.Signal(syscall.SIGKILL)
		<-r.done
	}
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
	if c.big != nil {
		c.big.close()
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
