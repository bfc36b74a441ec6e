package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/vmscatter/vmscatter/bench/fixture"
	"github.com/vmscatter/vmscatter/bench/lab"
	"github.com/vmscatter/vmscatter/bench/virtlab"
	"github.com/vmscatter/vmscatter/scatter/report"
)

// LibvirtWorkload is what the libvirt lab's guests run: a 16 MiB working set shared across guests except 25%, no
// dirtying beyond the kernel's and the disk part's. libvirt rounds <memory> to whole MiB, which QEMU 7.2's TCG
// dirty-tracking bug (bench/fixture's MemArg) punishes in a guest that dirties much.
var LibvirtWorkload = fixture.Workload{WSS: 16 << 20, Seed: 7, Private: 0.25}

// LibvirtCompareConfig is one side-by-side run of the libvirt mode of `vmscatter-lab bench --libvirt`.
type LibvirtCompareConfig struct {
	Bin       string // the vmscatter binary
	Dir       string // work directory
	Domains   int    // domains per run; 0 means 4
	Targets   int    // target hosts; 0 means 2
	UplinkBps uint64 // the source link's rate; 0 means unshaped
	Settle    time.Duration
	Out       io.Writer // progress; nil means none
}

// LibvirtComparison is what the run measured: the bytes that left the source host's interface, for vmscatter under
// libvirt and for libvirt's own migration of the same domains (fresh boots of the same guests) to the same targets
// with the same placement.
type LibvirtComparison struct {
	Domains, Targets   int
	RAMBytes           int64 // of every domain
	VmscatterLinkBytes uint64
	VmscatterSeconds   float64
	NativeLinkBytes    uint64
	NativeSeconds      float64
	Referenced         int64 // pages vmscatter sent as references
	Report             *report.Report
}

// RunLibvirtCompare boots the domains, moves them with vmscatter (send --domains), removes them, boots them again
// and moves them with libvirt's own `virsh migrate` to the same targets, measuring the source link both times.
func RunLibvirtCompare(ctx context.Context, cfg LibvirtCompareConfig) (*LibvirtComparison, error) {
	if cfg.Domains == 0 {
		cfg.Domains = 4
	}
	if cfg.Targets == 0 {
		cfg.Targets = 2
	}
	logf := func(format string, args ...any) {
		if cfg.Out != nil {
			fmt.Fprintf(cfg.Out, "bench --libvirt: "+format+"\n", args...)
		}
	}
	var targets []string
	for i := range cfg.Targets {
		targets = append(targets, fmt.Sprintf("t%d", i+1))
	}
	// A fresh lab directory: the hosts' private /run and /var/lib/libvirt must hold nothing of an earlier run.
	dir, err := os.MkdirTemp(cfg.Dir, "libvirt-lab-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	r, err := NewLibvirtRig(ctx, dir, cfg.Bin, targets...)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if cfg.UplinkBps > 0 {
		if err := r.Src.Shape(lab.Shaping{Rate: cfg.UplinkBps}); err != nil {
			return nil, err
		}
	}
	var names []string
	for i := range cfg.Domains {
		names = append(names, fmt.Sprintf("lvb%d", i+1))
	}
	res := &LibvirtComparison{Domains: cfg.Domains, Targets: cfg.Targets}

	logf("booting %d domains for vmscatter", len(names))
	if _, err := r.BootDomains(ctx, names, virtlab.GuestOptions{Workload: LibvirtWorkload}); err != nil {
		return nil, err
	}
	sleepCtx(ctx, cfg.Settle)
	_, tx0, err := r.Src.Counters()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	sent, err := r.Send(ctx, names)
	if err != nil {
		return nil, err
	}
	res.VmscatterSeconds = time.Since(start).Seconds()
	_, tx1, _ := r.Src.Counters()
	if sent.Code != 0 {
		return nil, fmt.Errorf("vmscatter send exited %d:\n%s", sent.Code, sent.Output)
	}
	res.Report = sent.Report
	placement := map[string]*virtlab.Host{}
	for _, v := range sent.Report.VMs {
		placement[v.Name] = r.TargetOf(v.Target)
		res.Referenced += v.Pages.Referenced
		res.RAMBytes += v.RAMBytes
	}
	res.VmscatterLinkBytes = tx1 - tx0
	logf("vmscatter: %d bytes on the source link in %.1f s", res.VmscatterLinkBytes, res.VmscatterSeconds)
	r.RemoveDomains(ctx, names)

	logf("booting %d domains for libvirt's own migration", len(names))
	if _, err := r.BootDomains(ctx, names, virtlab.GuestOptions{Workload: LibvirtWorkload}); err != nil {
		return nil, err
	}
	sleepCtx(ctx, cfg.Settle)
	_, n0, err := r.Src.Counters()
	if err != nil {
		return nil, err
	}
	start = time.Now()
	if err := r.NativeMigrate(ctx, placement); err != nil {
		return nil, err
	}
	res.NativeSeconds = time.Since(start).Seconds()
	_, n1, _ := r.Src.Counters()
	res.NativeLinkBytes = n1 - n0
	logf("libvirt's own: %d bytes on the source link in %.1f s", res.NativeLinkBytes, res.NativeSeconds)
	r.RemoveDomains(ctx, names)
	return res, nil
}

// Markdown is the comparison as a table.
func (c *LibvirtComparison) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "## libvirt: vmscatter under libvirt vs libvirt's own migration\n\n")
	fmt.Fprintf(&b, "%d domains (%.0f MiB of RAM in all) to %d targets, the same placement; bytes that left the source host's interface.\n\n",
		c.Domains, float64(c.RAMBytes)/(1<<20), c.Targets)
	fmt.Fprintf(&b, "| method | source link | time |\n|---|---:|---:|\n")
	fmt.Fprintf(&b, "| libvirt `virsh migrate --live --p2p` | %.1f MB | %.1f s |\n", float64(c.NativeLinkBytes)/1e6, c.NativeSeconds)
	fmt.Fprintf(&b, "| vmscatter `send --domains` | %.1f MB | %.1f s |\n", float64(c.VmscatterLinkBytes)/1e6, c.VmscatterSeconds)
	if c.VmscatterLinkBytes > 0 {
		fmt.Fprintf(&b, "\nvmscatter sent %.2f× fewer bytes (%d pages as references).\n", float64(c.NativeLinkBytes)/float64(c.VmscatterLinkBytes), c.Referenced)
	}
	return b.String()
}
