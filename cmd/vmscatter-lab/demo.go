package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/vmscatter/vmscatter/bench"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "boot real guests in a namespace lab and scatter them across target hosts (needs root)",
		Description: `Builds the guest fixture if needed, creates a source host and target hosts as network namespaces
   linked to nothing outside, boots guests under TCG with a self-verifying workload, runs 'vmscatter send' to the
   receivers, checks every guest runs at its target and keeps verifying its memory, prints the report and removes
   everything it created.`,
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "guests", Value: 4, Usage: "guests to boot"},
			&cli.IntFlag{Name: "targets", Value: 2, Usage: "target hosts"},
			&cli.IntFlag{Name: "memory", Value: 128, Usage: "MiB of RAM per guest"},
			&cli.StringFlag{Name: "dir", Usage: "work directory (default: a temporary one, removed afterwards)"},
			vmscatterFlag,
		},
		Action: func(c *cli.Context) error {
			bin, err := vmscatterBin(c)
			if err != nil {
				return err
			}
			dir, keep := c.String("dir"), true
			if dir == "" {
				if dir, err = os.MkdirTemp("", "vmscatter-demo-"); err != nil {
					return withCode(ExitError, err)
				}
				keep = false
				defer os.RemoveAll(dir)
			} else if err := os.MkdirAll(dir, 0o755); err != nil {
				return withCode(ExitError, err)
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			err = bench.RunDemo(ctx, bench.DemoConfig{Bin: bin, Dir: dir, Guests: c.Int("guests"), Targets: c.Int("targets"),
				MemoryMiB: c.Int("memory"), Keep: keep, Out: c.App.ErrWriter})
			if err != nil {
				return withCode(ExitError, err)
			}
			return nil
		},
	}
}
