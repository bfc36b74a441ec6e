package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"github.com/vmscatter/vmscatter/scatter/converge"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/source"

	"github.com/vmscatter/vmscatter/cmd/internal/cliapp"
)

func sendCommand() *cli.Command {
	return &cli.Command{
		Name:  "send",
		Usage: "migrate running VMs from this host to the targets",
		Description: `Connects to each VM's QMP socket and to every target's receiver, places the VMs on the targets,
   primes the targets with the pages the VMs share, then live-migrates every VM through vmscatter. A source QEMU
   quits only after its destination runs; any failure before that resumes the source VM. Progress goes to stderr,
   the JSON report to --report.`,
		ArgsUsage: " ",
		Flags: append([]cli.Flag{
			&cli.StringSliceFlag{Name: "vms", Usage: "VMs to move, `NAME=QMP_SOCKET[,...]` (or --domains for libvirt's)"},
			&cli.StringSliceFlag{Name: "targets", Required: true, Usage: "receivers, `ADDR:PORT[,...]`"},
			&cli.StringFlag{Name: "key-file", Required: true, Usage: "the shared key (vmscatter keygen)"},
			&cli.StringFlag{Name: "report", Value: "vmscatter-report.json", Usage: "where to write the JSON report (rewritten as each VM settles)"},
			&cli.StringFlag{Name: "state-dir", Value: source.DefaultStateDir, Usage: "where the run is journaled, for `vmscatter recover` and `status`"},
			hostKeyFlag(), allowPeersFlag(),
			&cli.StringSliceFlag{Name: "placement", Usage: "`auto` (the planner places every VM, the default) or pins, NAME=ADDR:PORT[,...]; unpinned VMs are placed by the planner"},
			&cli.StringFlag{Name: "algorithm", Value: "ours", Usage: "placement: ours, greedy (VMScatter's), exact (≤ 12 VMs, ≤ 4 targets)"},
			&cli.IntFlag{Name: "parallel", Usage: "migrations at once (default min(4, VMs))"},
			&cli.DurationFlag{Name: "timeout", Value: 10 * time.Minute, Usage: "bound on each VM's migration; past it the VM rolls back"},
			&cli.StringFlag{Name: "policy", Value: "precopy", Usage: "convergence: precopy, autoconverge, timebound, membound"},
			&cli.DurationFlag{Name: "downtime", Value: converge.DefaultDowntime, Usage: "precopy/autoconverge: downtime limit"},
			&cli.IntFlag{Name: "throttle-initial", Value: 20, Usage: "autoconverge: first vCPU throttle, percent"},
			&cli.IntFlag{Name: "throttle-increment", Value: 10, Usage: "autoconverge: throttle step, percent"},
			&cli.DurationFlag{Name: "deadline", Usage: "timebound: finish the whole send (prime included) within this time"},
			&cli.Float64Flag{Name: "marker", Value: 0.5, Usage: "timebound: fraction of the first pass after which vCPUs are over-committed"},
			&cli.IntFlag{Name: "overcommit-cpus", Value: 1, Usage: "timebound: host CPUs the vCPUs are pinned onto after the marker"},
			&cli.StringFlag{Name: "compress", Value: "auto", Usage: "page compression: auto (literal pages adapt to the link and the CPU; the prime uses zstd), zstd (fewest bytes), s2 (least CPU), none; the prime compresses pages in bundles"},
			&cli.StringFlag{Name: "transport", Value: "auto", Usage: "prime contents over multicast, unicast, or auto (multicast where it works)"},
			&cli.StringFlag{Name: "rate", Value: "1G", Usage: "multicast rate cap in bit/s (k/M/G)"},
			&cli.StringFlag{Name: "iface", Usage: "data-plane interface for multicast (default: the one that reaches the targets)"},
			&cli.BoolFlag{Name: "no-dedup", Usage: "skip the scan and the prime: every page travels literal"},
			&cli.BoolFlag{Name: "guest-downtime", Usage: "measure the downtime the guest shows on its serial console (file serial ports; adds up to 3 s per VM)"},
			&cli.StringFlag{Name: "max-bandwidth", Usage: "cap on each source QEMU's migration rate (bytes/s, e.g. 100M); default none"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress lines"},
			&cli.StringFlag{Name: "cpuprofile", Usage: "write a Go CPU profile of the run to this file", Hidden: true},
			&cli.StringFlag{Name: "log-level", Value: "warn", Usage: "log detail besides the progress lines: debug, info, warn, error"},
		}, libvirtSendFlags()...),
		Action: runSend,
	}
}

func runSend(c *cli.Context) error {
	cfg, err := baseSendConfig(c)
	if err != nil {
		return err
	}
	if err := applyLibvirt(c, &cfg); err != nil { // sendlibvirt.go
		return err
	}
	cfg.Parallel, cfg.Timeout, cfg.Compress = c.Int("parallel"), c.Duration("timeout"), c.String("compress")
	cfg.NoDedup, cfg.GuestDowntime = c.Bool("no-dedup"), c.Bool("guest-downtime")
	cfg.Policy = converge.Policy{Kind: c.String("policy"), Downtime: c.Duration("downtime"),
		ThrottleInitial: c.Int("throttle-initial"), ThrottleIncrement: c.Int("throttle-increment"),
		Deadline: c.Duration("deadline"), Marker: c.Float64("marker"), OvercommitCPUs: c.Int("overcommit-cpus")}
	cfg.Transport, cfg.Iface = c.String("transport"), c.String("iface")
	if cfg.RateBps, err = cliapp.ParseRate(c.String("rate")); err != nil {
		return usageError("--rate: %v", err)
	}
	if s := c.String("max-bandwidth"); s != "" {
		if cfg.MaxBandwidth, err = cliapp.ParseSize(s); err != nil {
			return usageError("--max-bandwidth: %v", err)
		}
	}
	if !c.Bool("quiet") {
		cfg.Progress = c.App.ErrWriter
	}
	if path := c.String("cpuprofile"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return withCode(ExitError, err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return withCode(ExitError, err)
		}
		defer pprof.StopCPUProfile()
	}
	cfg.StateDir = c.String("state-dir")
	reportPath := c.String("report")
	cfg.Checkpoint = func(r *report.Report) {
		if err := r.WriteFile(reportPath); err != nil {
			fmt.Fprintf(c.App.ErrWriter, "vmscatter: writing the report: %v\n", err)
		}
	}
	// SIGTERM, SIGINT and SIGHUP (the SSH session dropped) stop the run at each VM's next safe point: before START
	// a VM rolls back, after it the switch-over completes. A closed stderr or report pipe (SIGPIPE) never ends the
	// process in the middle of a commit: the write fails instead.
	signal.Ignore(syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer stop()
	rep, err := source.Send(ctx, cfg)
	if rep != nil {
		if werr := rep.WriteFile(c.String("report")); werr != nil {
			return withCode(ExitFailed, fmt.Errorf("writing the report: %w", werr))
		}
		t := rep.Totals
		fmt.Fprintf(c.App.ErrWriter, "vmscatter: %d of %d VMs migrated, %d rolled back, %d failed, %d unresolved; %.1f MiB on the wire in %.1f s; report: %s\n",
			t.Migrated, t.VMs, t.RolledBack, t.Failed, t.Unresolved, float64(t.WireBytes)/(1<<20), float64(t.ElapsedMS)/1000, c.String("report"))
	}
	switch {
	case err != nil: // source.ErrNothingMigrated included: every VM was refused or rolled back before it moved
		return withCode(ExitError, err)
	case rep.Totals.Failed > 0 || rep.Totals.Unresolved > 0:
		return withCode(ExitFailed, errors.New("some VMs need an operator: see the report"))
	case rep.Totals.RolledBack > 0:
		return withCode(ExitRolledBack, errors.New("some VMs rolled back: their sources run on"))
	}
	return nil
}
