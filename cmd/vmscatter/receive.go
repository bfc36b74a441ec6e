package main

import (
	"context"
	"net"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"
	"github.com/vmscatter/vmscatter/scatter/dest"
	"github.com/vmscatter/vmscatter/scatter/secure"

	"github.com/vmscatter/vmscatter/cmd/internal/cliapp"
)

func receiveCommand() *cli.Command {
	return &cli.Command{
		Name:  "receive",
		Usage: "run the receiver daemon on a target host",
		Description: `Accepts authenticated sessions from 'vmscatter send', starts a destination QEMU per VM under
   DATA-DIR/<vm>/ (qmp.sock, serial.log, qemu.pid) and feeds it the migration stream. A destination's command line
   (the source's own, rewritten) must pass the receiver's policy: guest files only under --data-dir and --allow-path,
   no host programs, network listeners, host devices or file descriptors; every destination runs under QEMU's
   seccomp sandbox. Connections that do not prove knowledge of the key are refused and logged.

   Each VM's migration is journaled under DATA-DIR/<vm>/ (docs/commit.md). SIGTERM or SIGINT stops the daemon at a
   safe point: a destination that has not loaded is torn down (its source resumes), one that was told to start runs
   on, and a loaded one stays paused for the sender's word. A restarted receiver picks each VM up from its journal.

   Destinations run --qemu, else the source's QEMU binary name found on this host's PATH. The sender places a VM
   here only if that QEMU is the source's version or newer and has the VM's machine type.

   Each run's primed pages go to a file under DATA-DIR/store/ (unlinked once open, so nothing of it outlives the run),
   at most --store-disk of it; memory holds their index, at most --store-limit (about 160 bytes a page). The receiver
   tells the sender how many pages that is, and the sender primes no more (docs/store.md).

   While the prime runs, each destination allocates its RAM at idle CPU priority (--prefault, on by default), so
   that its stream loads without faulting pages in; it needs CAP_SYS_NICE to give the QEMU its priority back, and
   is skipped without it (docs/store.md).`,
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Value: ":7400", Usage: "control and data address, `ADDR:PORT`"},
			&cli.StringFlag{Name: "data-dir", Value: "/var/lib/vmscatter", Usage: "where destination VMs' files live"},
			&cli.StringFlag{Name: "key-file", Required: true, Usage: "the shared key (vmscatter keygen)"},
			&cli.StringFlag{Name: "store-limit", Value: "1G", Usage: "memory for a session's content store: its index, about 160 bytes per content (the pages are on --data-dir)"},
			&cli.StringFlag{Name: "store-disk", Usage: "bytes of --data-dir a session's content store may take (e.g. 50G); default: half the free space"},
			&cli.StringFlag{Name: "capacity", Usage: "memory offered to migrated VMs, for placement (e.g. 64G); default: what is available"},
			&cli.IntFlag{Name: "max-vms", Usage: "VMs accepted per run, for placement; default no limit"},
			&cli.StringFlag{Name: "iface", Usage: "interface to join multicast groups on (default: the one the sender's control connection arrives on)"},
			&cli.StringFlag{Name: "qemu", Usage: "the QEMU binary every destination runs (default: the source's binary name, e.g. qemu-system-x86_64, on this host's `PATH`)"},
			&cli.StringSliceFlag{Name: "allow-path", Usage: "a `DIR` guest files may come from besides --data-dir: disks, kernels, initrds, memory backends on shared storage (repeatable); destination command lines and seeds use nothing else"},
			&cli.StringFlag{Name: "runas", Usage: "`USER` destination QEMUs drop to after start-up (default: stay as the receiver's user)"},
			&cli.BoolFlag{Name: "prefault", Value: true, Usage: "allocate each destination's RAM while the prime runs, at idle CPU priority, so that loading the stream copies pages instead of faulting them in (placement already counts each VM's whole RAM); --prefault=false turns it off"},
			hostKeyFlag(), allowPeersFlag(),
			logLevelFlag,
		},
		Action: func(c *cli.Context) error {
			log, err := logger(c.String("log-level"), c.App.ErrWriter)
			if err != nil {
				return err
			}
			key, err := secure.LoadKey(c.String("key-file"))
			if err != nil {
				return withCode(ExitError, err)
			}
			hostKey, peers, err := loadHostKeys(c)
			if err != nil {
				return err
			}
			limit, err := cliapp.ParseSize(c.String("store-limit"))
			if err != nil {
				return usageError("--store-limit: %v", err)
			}
			var disk int64
			if s := c.String("store-disk"); s != "" {
				if disk, err = cliapp.ParseSize(s); err != nil {
					return usageError("--store-disk: %v", err)
				}
			}
			var capacity int64
			if s := c.String("capacity"); s != "" {
				if capacity, err = cliapp.ParseSize(s); err != nil {
					return usageError("--capacity: %v", err)
				}
			}
			r, err := dest.NewReceiver(dest.Config{DataDir: c.String("data-dir"), Key: key, HostKey: hostKey, Peers: peers, StoreLimit: limit, StoreDisk: disk,
				Capacity: uint64(capacity), MaxVMs: c.Int("max-vms"), Iface: c.String("iface"), QEMU: c.String("qemu"), Log: log,
				AllowPaths: c.StringSlice("allow-path"), RunAs: c.String("runas"), NoPrefault: !c.Bool("prefault")})
			if err != nil {
				return withCode(ExitError, err)
			}
			ln, err := net.Listen("tcp", c.String("listen"))
			if err != nil {
				return withCode(ExitError, err)
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			if err := r.Serve(ctx, ln); err != nil {
				return withCode(ExitError, err)
			}
			return nil
		},
	}
}
