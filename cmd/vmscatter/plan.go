package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"
	"github.com/vmscatter/vmscatter/scatter/plan"
	"github.com/vmscatter/vmscatter/scatter/source"

	"github.com/vmscatter/vmscatter/cmd/internal/cliapp"
)

func planCommand() *cli.Command {
	return &cli.Command{
		Name:  "plan",
		Usage: "dry run: where each VM would go and the bytes it would cost; nothing moves",
		Description: `On live VMs:   vmscatter plan --vms web1=/run/qemu/web1.qmp,... --targets hostA:7400,... --key-file KEY
   On RAM images: vmscatter plan --images web1=web1.ram,web2=web2.ram --target hostA=64G --target hostB=64G
   (an image is a guest's RAM as pmemsave or dump-guest-memory in raw form writes it). The targets' capacities come
   from the receivers (live) or from --target NAME=MEMBYTES (images).`,
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "vms", Usage: "live VMs, `NAME=QMP_SOCKET[,...]`"},
			&cli.StringSliceFlag{Name: "targets", Usage: "receivers of live VMs, `ADDR:PORT[,...]`"},
			&cli.StringFlag{Name: "key-file", Usage: "the shared key, for live VMs"},
			hostKeyFlag(), allowPeersFlag(),
			&cli.StringSliceFlag{Name: "placement", Usage: "pin VMs to targets, `NAME=TARGET[,...]`"},
			&cli.StringSliceFlag{Name: "images", Usage: "RAM images, `NAME=PATH[,...]`"},
			&cli.StringSliceFlag{Name: "target", Usage: "a target for images, `NAME=MEMBYTES` (K/M/G/T suffixes); repeat it"},
			&cli.StringFlag{Name: "algorithm", Value: "ours", Usage: "ours, greedy (VMScatter's) or exact (≤ 12 VMs, ≤ 4 targets)"},
			&cli.BoolFlag{Name: "json", Usage: "print the plan as JSON"},
			logLevelFlag,
		},
		Action: runPlan,
	}
}

func runPlan(c *cli.Context) error {
	var pl *plan.Plan
	var err error
	live, images := len(c.StringSlice("vms")) > 0, len(c.StringSlice("images")) > 0
	switch {
	case live && images:
		return usageError("give either --vms (live) or --images, not both")
	case images:
		pairs, err := parsePairs("images", c.StringSlice("images"))
		if err != nil {
			return err
		}
		tp, err := parsePairs("target", c.StringSlice("target"))
		if err != nil {
			return err
		}
		if len(tp) == 0 {
			return usageError("--images needs at least one --target NAME=MEMBYTES")
		}
		var ims []plan.ImageSpec
		for _, p := range pairs {
			ims = append(ims, plan.ImageSpec{Name: p[0], Path: p[1]})
		}
		var ts []plan.TargetSpec
		for _, p := range tp {
			n, err := cliapp.ParseSize(p[1])
			if err != nil {
				return usageError("--target %s: %v", p[0], err)
			}
			ts = append(ts, plan.TargetSpec{Name: p[0], MemBytes: uint64(n)})
		}
		pl, err = plan.Images(context.Background(), ims, ts, c.String("algorithm"))
		if err != nil {
			return withCode(ExitError, err)
		}
	case live:
		cfg, err := baseSendConfig(c)
		if err != nil {
			return err
		}
		pl, err = source.Plan(context.Background(), cfg)
		if err != nil {
			return withCode(ExitError, err)
		}
	default:
		return usageError("give --vms and --targets (live VMs) or --images and --target (RAM images)")
	}
	if err != nil {
		return err
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(pl)
	}
	printPlan(c.App.Writer, pl)
	return nil
}

func printPlan(w io.Writer, p *plan.Plan) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tTARGET")
	for _, vm := range p.VMs {
		fmt.Fprintf(tw, "%s\t%s\n", vm, p.Placement[vm])
	}
	tw.Flush()
	byTarget := map[string]int{}
	for _, t := range p.Placement {
		byTarget[t]++
	}
	var ts []string
	for _, t := range p.Targets {
		ts = append(ts, t+" ("+strconv.Itoa(byTarget[t])+" VMs)")
	}
	sort.Strings(ts)
	fmt.Fprintf(w, "\ntargets:          %s\n", strings.Join(ts, ", "))
	fmt.Fprintf(w, "pages:            %d scanned, %d zero, %d non-zero, %d distinct\n", p.Pages, p.ZeroPages, p.NonZeroPages, p.DistinctPages)
	fmt.Fprintf(w, "source bytes:     %s (each distinct page once, multicast)\n", humanBytes(p.SourceBytes))
	fmt.Fprintf(w, "fabric bytes:     %s with %s; greedy (VMScatter) would need %s\n", humanBytes(p.FabricBytes), p.Algorithm, humanBytes(p.GreedyFabricBytes))
	fmt.Fprintf(w, "schedule:         %d batches, %d membership changes (%d joins, %d leaves)\n", p.Schedule.Batches, p.Schedule.MembershipChanges, p.Schedule.Joins, p.Schedule.Leaves)
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d KiB", n>>10)
}
