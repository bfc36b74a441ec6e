package dest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/vmscatter/vmscatter/qemu"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// The QEMU a destination runs: Config.QEMU (receive --qemu) for every VM, else the source's binary name looked up
// on this host's PATH. INFO tells the sender which binary that is for each name its VMs run, with its version and
// machine types, so that the sender places no VM on a target whose QEMU cannot run it.

// probeTimeout bounds one probe of a binary (two runs of it that start and exit at once).
const probeTimeout = 10 * time.Second

// checkQEMU resolves and probes the configured binary at start, so that a wrong --qemu fails at once.
func (r *Receiver) checkQEMU() error {
	if r.cfg.QEMU == "" {
		return nil
	}
	path, err := exec.LookPath(r.cfg.QEMU) // a name without a slash is looked up on PATH, a path is checked
	if err != nil {
		return fmt.Errorf("--qemu: %w", err)
	}
	if path, err = filepath.Abs(path); err != nil {
		return fmt.Errorf("--qemu: %w", err)
	}
	r.cfg.QEMU = path
	b, err := r.probes.probe(context.Background(), path)
	if err != nil {
		return fmt.Errorf("--qemu: %w", err)
	}
	r.log.Info("destinations run this QEMU", "qemu", path, "version", b.Version.String(), "machine_types", len(b.Machines))
	return nil
}

// qemuBinary returns the binary that runs the destinations of VMs whose source binary is src (a path or a name).
// Only a qemu-system binary is looked up on a sender's word; the configured one is the operator's choice.
func (r *Receiver) qemuBinary(src string) (string, error) {
	if !qemu.IsQEMUBinary(src) {
		return "", fmt.Errorf("refusing to look up %q: not a qemu-system binary", src)
	}
	if r.cfg.QEMU != "" {
		return r.cfg.QEMU, nil
	}
	name := filepath.Base(src)
	path, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s is not on this host's PATH: install QEMU, or start vmscatter receive with --qemu PATH", name)
	}
	return path, nil
}

// destinationCommandLine turns a source's argv into its destination's under dir (qemu.RewriteCommandLine), started
// by this receiver's QEMU binary for it, under the receiver's policy (qemu.ApplyPolicy: an allow-list of options,
// host paths confined to dir and the allowed roots, the seccomp sandbox, --runas). A command line the policy
// refuses starts nothing; the error names the option.
func (r *Receiver) destinationCommandLine(src []string, dir string) ([]string, error) {
	argv, err := qemu.RewriteCommandLine(src, dir)
	if err != nil {
		return nil, err
	}
	if argv[0], err = r.qemuBinary(src[0]); err != nil {
		return nil, err
	}
	pol := r.qemuPolicy(dir)
	if pol.RunAs != "" {
		// QEMU 9.1 spells it -run-with user= (10.0 removed -runas).
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		b, err := r.probes.probe(ctx, argv[0])
		cancel()
		if err != nil {
			return nil, err
		}
		pol.RunWith = b.Version.Major > 9 || (b.Version.Major == 9 && b.Version.Minor >= 1)
	}
	if argv, err = qemu.ApplyPolicy(argv, pol); err != nil {
		return nil, err
	}
	if err := qemu.PrepareVMDir(pol); err != nil {
		return nil, err
	}
	return argv, nil
}

// qemuInfo says which binary runs the destinations of source binary name, and what it can run.
func (r *Receiver) qemuInfo(ctx context.Context, name string) wire.QEMUInfo {
	info := wire.QEMUInfo{Name: name}
	path, err := r.qemuBinary(name)
	if err != nil {
		info.Error = err.Error()
		return info
	}
	info.Path = path
	b, err := r.probes.probe(ctx, path)
	if err != nil {
		info.Error = err.Error()
		return info
	}
	info.Version, info.Machines = b.Version.String(), b.Machines
	return info
}

// qemuInfos answers HELLO's binary names, at most wire.MaxHelloQEMU of them.
func (r *Receiver) qemuInfos(ctx context.Context, names []string) []wire.QEMUInfo {
	names = names[:min(len(names), wire.MaxHelloQEMU)]
	var out []wire.QEMUInfo
	for _, n := range names {
		info := r.qemuInfo(ctx, n)
		if info.Error != "" {
			r.log.Warn("no QEMU for the sender's VMs", "qemu", n, "err", info.Error)
		}
		out = append(out, info)
	}
	return out
}

// warmProbes probes, in the background as the receiver starts, the QEMU binary a session most likely asks about
// (--qemu, else qemu-system-x86_64 on PATH), so that the first session's INFO does not wait for it: the probe runs
// QEMU twice (-version, -machine help), 60-90 ms on the bench's targets, on the run's critical path before placement.
// A binary that is not there, or fails, is left for the session to report.
func (r *Receiver) warmProbes(ctx context.Context) {
	path, err := r.qemuBinary("qemu-system-x86_64")
	if err != nil {
		return
	}
	if _, err := r.probes.probe(ctx, path); err != nil {
		r.log.Debug("QEMU probe at start failed; the first session probes again", "qemu", path, "err", err)
	}
}

// probeCache keeps what each binary said of itself while the file stays the same (an upgrade of QEMU replaces the
// file, and the next session probes it again). It is safe for concurrent use.
type probeCache struct {
	mu     sync.Mutex
	probes map[string]cachedProbe // by path
}

type cachedProbe struct {
	size    int64
	modTime time.Time
	binary  qemu.Binary
}

// probe returns what the binary at path says of itself (qemu.Probe), from the cache if the file has not changed.
// A failed probe is not kept.
func (c *probeCache) probe(ctx context.Context, path string) (qemu.Binary, error) {
	st, err := os.Stat(path)
	if err != nil {
		return qemu.Binary{}, err
	}
	if st.IsDir() {
		return qemu.Binary{}, errors.New(path + " is a directory")
	}
	c.mu.Lock()
	defer c.mu.Unlock() // one probe at a time: concurrent sessions wait for it instead of probing again
	if p, ok := c.probes[path]; ok && p.size == st.Size() && p.modTime.Equal(st.ModTime()) {
		return p.binary, nil
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	b, err := qemu.Probe(ctx, path)
	if err != nil {
		return b, err
	}
	if c.probes == nil {
		c.probes = map[string]cachedProbe{}
	}
	c.probes[path] = cachedProbe{size: st.Size(), modTime: st.ModTime(), binary: b}
	return b, nil
}
