package main

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/vmscatter/vmscatter/bench"
	"github.com/vmscatter/vmscatter/bench/fixture"
	"github.com/vmscatter/vmscatter/bench/scale"
	"github.com/vmscatter/vmscatter/cmd/internal/cliapp"
)

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:  "bench",
		Usage: "measure vmscatter against QEMU's own migration of the same guests, side by side (needs root)",
		Description: `Builds a namespace lab (a source host and target hosts), shapes the source uplink with tc, boots
   fresh guests from the fixture and moves them with vmscatter, then twice more boots the same guests again and
   moves them with QEMU's own live migration, straight to the same targets with the same placement, all at once:
   once as QEMU comes (default) and once in QEMU's best own configuration (multifd, one channel per source core,
   zstd on both sides). Writes results.json, summary.md (bytes, time, CPU-seconds per GiB of guest RAM on the
   source and the targets, ratios to both QEMU methods, the lower bound) and SVG plots to --out.`,
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "guests", Value: 4, Usage: "guests per run (4 or 8)"},
			&cli.IntFlag{Name: "memory", Value: 128, Usage: "MiB of RAM per guest (128 or 256)"},
			&cli.IntFlag{Name: "targets", Value: 2, Usage: "target hosts"},
			&cli.StringFlag{Name: "uplink", Value: "1G", Usage: "source uplink rate in bit/s (k/M/G, powers of 1000)"},
			&cli.DurationFlag{Name: "settle", Value: 5 * time.Second, Usage: "how long guests run before they move"},
			&cli.Float64Flag{Name: "dirty-rate", Value: 200, Usage: "workload: pages dirtied per second per guest"},
			&cli.BoolFlag{Name: "big", Usage: "guests of a real size instead (--memory MiB, default 1536; 2 vCPUs, a disk, a NIC, RAM filled with shared page cache, private data and zeros)"},
			&cli.Float64Flag{Name: "big-cache", Value: 0.35, Usage: "big guests: fraction of RAM in the page cache of an image all guests share"},
			&cli.Float64Flag{Name: "big-private", Value: 0.35, Usage: "big guests: fraction of RAM of private anonymous data (random, per guest); the rest is zero"},
			&cli.StringFlag{Name: "store-limit", Usage: "the receivers' --store-limit (default theirs, 1G)"},
			&cli.BoolFlag{Name: "skip-default", Usage: "leave out QEMU's default configuration: vmscatter against QEMU's best alone (a quicker run)"},
			&cli.BoolFlag{Name: "quick", Usage: "a small run that checks the bench works (2 guests, 1 target)"},
			&cli.BoolFlag{Name: "policies", Usage: "run the convergence-policy matrix instead (dirty rates × patterns × policies)"},
			&cli.BoolFlag{Name: "libvirt", Usage: "compare vmscatter under libvirt (send --domains) with libvirt's own virsh migrate of the same domains instead (--guests domains, --targets hosts, --uplink; needs scripts/install-libvirt.sh)"},
			&cli.BoolFlag{Name: "scale", Usage: "project 100–1000 VMs onto 10–100 targets with the scale model instead (docs/scale.md)"},
			&cli.StringSliceFlag{Name: "images", Usage: "scale: raw RAM images to build fleets from (default: capture 4 fixture guests)"},
			&cli.StringSliceFlag{Name: "boot-files", Usage: "scale: the imaged guests' -kernel and -initrd files, whose copies in RAM the targets read themselves (default with captured images: the fixture's)"},
			&cli.DurationFlag{Name: "deadline", Value: 20 * time.Second, Usage: "policy matrix: timebound's deadline"},
			&cli.Float64SliceFlag{Name: "rates", Usage: "policy matrix: dirty rates in pages/s (default 500, 3000, 12000)"},
			&cli.StringSliceFlag{Name: "only", Usage: "policy matrix: these policies only"},
			&cli.StringSliceFlag{Name: "patterns", Usage: "policy matrix: dirtying patterns, seq and random (default both)"},
			&cli.IntFlag{Name: "wss", Usage: "policy matrix: the workload's working set in MiB (default 96)"},
			&cli.IntFlag{Name: "runs", Value: 1, Usage: "policy matrix: runs of every cell"},
			&cli.BoolFlag{Name: "dedup", Usage: "policy matrix: send with the scan, the seed and the prime (as send comes), not --no-dedup"},
			&cli.StringFlag{Name: "out", Value: "out/bench", Usage: "results directory"},
			&cli.StringSliceFlag{Name: "send-arg", Usage: "extra argument for vmscatter send (repeat), e.g. --send-arg=--compress=zstd"},
			vmscatterFlag,
			&cli.StringFlag{Name: "replot", Usage: "redraw summary.md and the plots of an earlier side-by-side run from `DIR`/results.json (with --policies: policies.md from policies.json), running nothing"},
		},
		Action: func(c *cli.Context) error {
			if dir := c.String("replot"); dir != "" && c.Bool("policies") {
				pc := bench.PolicyConfig{Deadline: c.Duration("deadline"), Dedup: c.Bool("dedup"), WSS: int64(c.Int("wss")) << 20}
				if c.IsSet("memory") {
					pc.MemoryMiB = c.Int("memory")
				}
				if c.IsSet("uplink") {
					if u, err := cliapp.ParseRate(c.String("uplink")); err == nil {
						pc.UplinkBps = uint64(u)
					}
				}
				rows, err := bench.ReplotPolicies(dir, pc)
				if err != nil {
					return withCode(ExitError, err)
				}
				_, err = c.App.Writer.Write([]byte(bench.PolicyMarkdown(rows, pc)))
				return err
			} else if dir != "" {
				res, err := bench.Replot(dir)
				if err != nil {
					return withCode(ExitError, err)
				}
				_, err = c.App.Writer.Write([]byte(res.Markdown()))
				return err
			}
			uplink, err := cliapp.ParseRate(c.String("uplink"))
			if err != nil {
				return usageError("--uplink: %v", err)
			}
			cfg := bench.CompareConfig{Dir: c.String("out"), Guests: c.Int("guests"), MemoryMiB: c.Int("memory"),
				Targets: c.Int("targets"), UplinkBps: uint64(uplink), Settle: c.Duration("settle"), Out: c.App.ErrWriter,
				Workload: fixture.Workload{WSS: 16 << 20, Rate: c.Float64("dirty-rate"), Seed: 7, Private: 0.25},
				SendArgs: c.StringSlice("send-arg"), StoreLimit: c.String("store-limit"), SkipDefault: c.Bool("skip-default")}
			if c.Bool("big") {
				cfg.Big = &bench.BigShape{Cache: c.Float64("big-cache"), Private: c.Float64("big-private"), Rate: c.Float64("dirty-rate")}
				if c.IsSet("memory") {
					cfg.Big.MemoryMiB = c.Int("memory")
				}
			}
			if c.Bool("quick") {
				cfg.Guests, cfg.Targets, cfg.Settle = 2, 1, 2*time.Second
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			if c.Bool("scale") {
				rows, err := bench.RunScale(ctx, bench.ScaleConfig{Dir: cfg.Dir, Images: c.StringSlice("images"), BootFiles: c.StringSlice("boot-files"), Out: c.App.ErrWriter})
				if err != nil {
					return withCode(ExitError, err)
				}
				_, err = c.App.Writer.Write([]byte(scale.Markdown(rows)))
				return err
			}
			if cfg.Bin, err = vmscatterBin(c); err != nil { // the scale model runs no vmscatter; the rest does
				return err
			}
			if c.Bool("libvirt") {
				lc := bench.LibvirtCompareConfig{Bin: cfg.Bin, Dir: cfg.Dir, Domains: cfg.Guests, Targets: cfg.Targets,
					UplinkBps: cfg.UplinkBps, Settle: cfg.Settle, Out: c.App.ErrWriter}
				if err := os.MkdirAll(lc.Dir, 0o755); err != nil {
					return withCode(ExitError, err)
				}
				res, err := bench.RunLibvirtCompare(ctx, lc)
				if err != nil {
					return withCode(ExitError, err)
				}
				md := res.Markdown()
				if err := os.WriteFile(filepath.Join(lc.Dir, "libvirt.md"), []byte(md), 0o644); err != nil {
					return withCode(ExitError, err)
				}
				_, err = c.App.Writer.Write([]byte(md))
				return err
			}
			if c.Bool("policies") {
				pc := bench.PolicyConfig{Bin: cfg.Bin, Dir: cfg.Dir, Deadline: c.Duration("deadline"), Out: c.App.ErrWriter,
					Rates: c.Float64Slice("rates"), Policies: c.StringSlice("only"), Patterns: c.StringSlice("patterns"),
					WSS: int64(c.Int("wss")) << 20, Runs: c.Int("runs"), Dedup: c.Bool("dedup"), SendArgs: c.StringSlice("send-arg")}
				if c.IsSet("uplink") {
					pc.UplinkBps = uint64(uplink)
				}
				if c.IsSet("memory") {
					pc.MemoryMiB = c.Int("memory")
				}
				if c.Bool("quick") {
					pc.Rates, pc.Patterns, pc.MemoryMiB, pc.WSS, pc.Deadline = []float64{200}, []string{"seq"}, 128, 16<<20, 5*time.Second
				}
				rows, err := bench.RunPolicyMatrix(ctx, pc)
				if err != nil {
					return withCode(ExitError, err)
				}
				_, err = c.App.Writer.Write([]byte(bench.PolicyMarkdown(rows, pc)))
				return err
			}
			res, err := bench.RunCompare(ctx, cfg)
			if err != nil {
				return withCode(ExitError, err)
			}
			_, err = c.App.Writer.Write([]byte(res.Markdown()))
			return err
		},
	}
}
