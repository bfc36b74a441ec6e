package main

import (
	"context"
	"errors"
	"fmt"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/vmscatter/vmscatter/scatter/recovery"
	"github.com/vmscatter/vmscatter/scatter/secure"
	"github.com/vmscatter/vmscatter/scatter/source"
)

func recoverCommand() *cli.Command {
	return &cli.Command{
		Name:  "recover",
		Usage: "settle every VM an interrupted `send` left: exactly one running copy of each",
		Description: `Reads the sender's journal (--state-dir), finds every VM whose migration did not settle (the sender
   died, a receiver was lost, or the VM was reported unresolved), asks its receiver and its source QEMU where it
   stands, and drives it to exactly one running copy: the destination's if its guest may have run or START was
   decided, otherwise the source's, resumed only once the receiver has confirmed its destination gone. Safe to
   run at any time and again: a VM that is settled is left alone. Exit 0 when every VM is settled, 4 when some
   need an operator (the report says what is known of each).`,
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "state-dir", Value: source.DefaultStateDir, Usage: "the sender's journal"},
			&cli.StringFlag{Name: "key-file", Required: true, Usage: "the shared key (vmscatter keygen)"},
			hostKeyFlag(), allowPeersFlag(),
			&cli.StringFlag{Name: "report", Value: "vmscatter-recover.json", Usage: "where to write the JSON report"},
			&cli.StringFlag{Name: "log-level", Value: "warn", Usage: "log detail: debug, info, warn, error"},
		},
		Action: runRecover,
	}
}

func runRecover(c *cli.Context) error {
	key, err := secure.LoadKey(c.String("key-file"))
	if err != nil {
		return withCode(ExitError, err)
	}
	log, err := logger(c.String("log-level"), c.App.ErrWriter)
	if err != nil {
		return err
	}
	hostKey, peers, err := loadHostKeys(c)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer stop()
	rep, err := recovery.Run(ctx, recovery.Config{StateDir: c.String("state-dir"), Key: key, HostKey: hostKey, Peers: peers, Progress: c.App.ErrWriter, Log: log})
	if err != nil {
		return withCode(ExitError, err)
	}
	if err := rep.WriteFile(c.String("report")); err != nil {
		return withCode(ExitFailed, fmt.Errorf("writing the report: %w", err))
	}
	t := rep.Totals
	fmt.Fprintf(c.App.ErrWriter, "vmscatter recover: %d VM(s) unsettled: %d on their targets, %d back on the source, %d need an operator; report: %s\n",
		t.VMs, t.Migrated, t.RolledBack, t.Unresolved+t.Failed, c.String("report"))
	if t.Unresolved+t.Failed > 0 {
		return withCode(ExitFailed, errors.New("some VMs need an operator: see the report"))
	}
	return nil
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "list the journaled runs and where each VM stands",
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "state-dir", Value: source.DefaultStateDir, Usage: "the sender's journal"},
		},
		Action: func(c *cli.Context) error {
			if err := recovery.Status(c.String("state-dir"), c.App.Writer); err != nil {
				return withCode(ExitError, err)
			}
			return nil
		},
	}
}
