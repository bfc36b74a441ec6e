package main

import (
	"github.com/urfave/cli/v2"

	"github.com/vmscatter/vmscatter/scatter/source"
	"github.com/vmscatter/vmscatter/scatter/virt"
)

// libvirtSendFlags are send's flags for libvirt-managed domains (docs/libvirt.md).
func libvirtSendFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "domains", Usage: "libvirt domains to move, `NAME[,...]`: libvirt migrates each through vmscatter (instead of --vms)"},
		&cli.StringFlag{Name: "connect", Aliases: []string{"c"}, Usage: "with --domains: this host's libvirt `URI` (default: virsh's, e.g. qemu:///system)"},
		&cli.StringSliceFlag{Name: "target-connect", Usage: "with --domains: each target's libvirt URI as this host's libvirtd reaches it, `ADDR:PORT=URI[,...]` (default qemu://HOST/system)"},
		&cli.StringFlag{Name: "libvirt-run-dir", Value: virt.DefaultRunDir, Usage: "with --domains: libvirt's run directory on this host (the domains' pidfiles are under qemu/)"},
		&cli.BoolFlag{Name: "libvirt-unsafe", Usage: "with --domains: pass --unsafe to virsh migrate (libvirt's own shared-file-system check off; vmscatter's receiver still checks every disk image); for labs", Hidden: true},
	}
}

// applyLibvirt turns --domains and its companions into cfg.VMs and cfg.Libvirt; it checks that exactly one of
// --vms and --domains is given.
func applyLibvirt(c *cli.Context, cfg *source.Config) error {
	domains := splitList(c.StringSlice("domains"))
	switch {
	case len(domains) == 0 && len(cfg.VMs) == 0:
		return usageError("give the VMs to move: --vms NAME=QMP_SOCKET,... or --domains NAME,... (libvirt)")
	case len(domains) > 0 && len(cfg.VMs) > 0:
		return usageError("--vms and --domains exclude each other: QMP VMs and libvirt domains move in separate runs")
	case len(domains) == 0:
		for _, f := range []string{"connect", "target-connect", "libvirt-unsafe"} {
			if c.IsSet(f) {
				return usageError("--%s goes with --domains", f)
			}
		}
		return nil
	}
	uris, err := parsePairs("target-connect", c.StringSlice("target-connect"))
	if err != nil {
		return err
	}
	lc := &source.LibvirtConfig{Connect: c.String("connect"), RunDir: c.String("libvirt-run-dir"),
		TargetURIs: map[string]string{}, Unsafe: c.Bool("libvirt-unsafe")}
	for _, p := range uris {
		lc.TargetURIs[p[0]] = p[1]
	}
	for _, d := range domains {
		cfg.VMs = append(cfg.VMs, source.VMSpec{Name: d})
	}
	cfg.Libvirt = lc
	return nil
}
