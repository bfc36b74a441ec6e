package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmscatter/vmscatter/bench/fixture"
	"github.com/vmscatter/vmscatter/bench/lab"
)

// PolicyRun is one cell of the convergence-policy matrix: one guest, one dirty rate and pattern, one policy.
type PolicyRun struct {
	Policy          string  `json:"policy"`
	DirtyRate       float64 `json:"dirty_rate_pages_s"` // what the workload was asked to dirty
	Pattern         string  `json:"pattern"`
	Status          string  `json:"status"`
	Error           string  `json:"error,omitempty"`
	TotalMS         int64   `json:"total_ms"` // the whole `send`, from its start to its exit (0 in older rows)
	PrimeMS         int64   `json:"prime_ms"` // its prime phase (0 without --dedup)
	MigrationMS     int64   `json:"migration_ms"`
	DowntimeMS      int64   `json:"downtime_ms"`
	GuestDowntimeMS int64   `json:"guest_downtime_ms"`
	WireBytes       int64   `json:"wire_bytes"` // the VM's migration connection
	LinkBytes       int64   `json:"link_bytes"` // all that left the source's interface during the send, prime included
	Iterations      int64   `json:"iterations"`
	QEMUDirtyRate   int64   `json:"qemu_dirty_rate_pages_s"` // what QEMU measured
	GuestOK         bool    `json:"guest_ok"`                // it kept verifying its memory after the move
}

// PolicyConfig describes a matrix.
type PolicyConfig struct {
	Bin       string
	Dir       string
	MemoryMiB int // default 256
	WSS       int64
	UplinkBps uint64 // default 200 Mbit/s
	Rates     []float64
	Patterns  []string
	Policies  []string
	Deadline  time.Duration // timebound's --deadline; default 20 s
	Timeout   time.Duration // every run's --timeout; default 2 × Deadline
	// Dedup runs send as it comes, with the scan, the seed and the prime, which the deadline covers too; without
	// it, --no-dedup (the policies alone).
	Dedup    bool
	Runs     int      // runs of every cell; default 1
	SendArgs []string // extra arguments for every send
	Out      io.Writer
}

// defaults fills in what the configuration leaves unset.
func (c *PolicyConfig) defaults() {
	if c.MemoryMiB == 0 {
		c.MemoryMiB = 256
	}
	if c.WSS == 0 {
		c.WSS = 96 << 20
	}
	if c.UplinkBps == 0 {
		c.UplinkBps = 200e6
	}
	if len(c.Rates) == 0 {
		c.Rates = []float64{500, 3000, 12000}
	}
	if len(c.Patterns) == 0 {
		c.Patterns = []string{"seq", "random"}
	}
	if len(c.Policies) == 0 {
		c.Policies = []string{"precopy", "autoconverge", "timebound", "membound"}
	}
	if c.Deadline == 0 {
		c.Deadline = 20 * time.Second
	}
	if c.Runs < 1 {
		c.Runs = 1
	}
	if c.Timeout == 0 {
		c.Timeout = 2 * c.Deadline
	}
}

// ReplotPolicies reads dir/policies.json of an earlier matrix (possibly merged from several runs) and writes its
// policies.md and plots again.
func ReplotPolicies(dir string, cfg PolicyConfig) ([]PolicyRun, error) {
	cfg.defaults()
	b, err := os.ReadFile(filepath.Join(dir, "policies.json"))
	if err != nil {
		return nil, err
	}
	var rows []PolicyRun
	if err := json.Unmarshal(b, &rows); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "policies.json"), err)
	}
	return rows, WritePolicyReport(dir, rows, cfg)
}

// RunPolicyMatrix moves one fresh guest per cell through a shaped uplink with each policy and records what it
// cost. A run that does not finish within --timeout rolls back, and the row says so.
func RunPolicyMatrix(ctx context.Context, cfg PolicyConfig) ([]PolicyRun, error) {
	cfg.defaults()
	out := cfg.Out
	if out == nil {
		out = io.Discard
	}
	c, err := NewCluster(ctx, ClusterConfig{Targets: 1, Bin: cfg.Bin, Dir: filepath.Join(cfg.Dir, "lab")})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.Source.Shape(lab.Shaping{Rate: cfg.UplinkBps}); err != nil {
		return nil, err
	}
	var rows []PolicyRun
	n := 0
	for _, rate := range cfg.Rates {
		for _, pattern := range cfg.Patterns {
			for _, pol := range cfg.Policies {
				for range cfg.Runs {
					n++
					row := PolicyRun{Policy: pol, DirtyRate: rate, Pattern: pattern}
					g, err := c.StartGuests(ctx, fmt.Sprintf("p%d-", n), 1, fixture.GuestOptions{MemoryMiB: cfg.MemoryMiB,
						Workload: fixture.Workload{WSS: cfg.WSS, Rate: rate, Pattern: pattern, Seed: uint64(n), Private: 1}})
					if err != nil {
						return rows, err
					}
					time.Sleep(3 * time.Second)
					args := []string{"--policy", pol, "--timeout", cfg.Timeout.String(), "--guest-downtime"}
					if !cfg.Dedup {
						args = append(args, "--no-dedup")
					}
					args = append(args, cfg.SendArgs...)
					if pol == "timebound" {
						args = append(args, "--deadline", cfg.Deadline.String())
					}
					res, err := c.Send(ctx, g, args...)
					if err != nil {
						return rows, err
					}
					v := res.Report.VMs[0]
					row.Status, row.Error, row.MigrationMS, row.DowntimeMS = v.Status, v.Error, v.MigrationMS, v.DowntimeMS
					row.TotalMS, row.PrimeMS, row.LinkBytes = res.Elapsed.Milliseconds(), res.Report.Totals.Phases.Prime, int64(res.SourceTx)
					row.GuestDowntimeMS, row.WireBytes, row.Iterations, row.QEMUDirtyRate = v.GuestDowntimeMS, v.WireBytes, v.Iterations, v.DirtyRate
					if v.Status == "migrated" {
						serial := filepath.Join(c.DestinationDir(0, v.Name), "serial.log")
						row.GuestOK = waitGuestOK(ctx, serial, 5, 30*time.Second) == nil
					} else {
						row.GuestOK = waitGuestOK(ctx, g[0].SerialPath, 5, 30*time.Second) == nil
					}
					fmt.Fprintf(out, "policy %-12s rate %6.0f %-6s: %-11s send %6d ms (prime %5d ms, migration %6d ms), downtime %5d ms (guest %5d ms), %s, %d iterations\n",
						pol, rate, pattern, row.Status, row.TotalMS, row.PrimeMS, row.MigrationMS, row.DowntimeMS, row.GuestDowntimeMS, mib(uint64(row.WireBytes)), row.Iterations)
					rows = append(rows, row)
					KillByPidfiles(c.DataDir(0))
					for _, gg := range g {
						gg.Kill()
					}
				}
			}
		}
	}
	return rows, WritePolicyReport(cfg.Dir, rows, cfg)
}

// WritePolicyReport writes a matrix's policies.json, policies.md and plots to dir.
func WritePolicyReport(dir string, rows []PolicyRun, cfg PolicyConfig) error {
	b, _ := json.MarshalIndent(rows, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "policies.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "policies.md"), []byte(PolicyMarkdown(rows, cfg)), 0o644); err != nil {
		return err
	}
	return writePolicyPlots(dir, rows)
}

// PolicyMarkdown renders the matrix as a table.
func PolicyMarkdown(rows []PolicyRun, cfg PolicyConfig) string {
	cfg.defaults()
	var b strings.Builder
	prime := "no scan and no prime (--no-dedup)"
	if cfg.Dedup {
		prime = "scan, seed and prime included"
	}
	fmt.Fprintf(&b, "One guest of %d MiB, working set %d MiB, uplink %s, timebound deadline %v, every run bounded by --timeout %v, %s.\n\n",
		cfg.MemoryMiB, cfg.WSS>>20, bps(cfg.UplinkBps), cfg.Deadline, cfg.Timeout, prime)
	fmt.Fprintf(&b, "| dirty rate (pages/s) | pattern | policy | status | send time | prime | migration time | downtime (QEMU) | downtime (guest) | bytes (migration) | bytes (link) | iterations | guest verifies after |\n")
	fmt.Fprintf(&b, "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range rows {
		gd := "–"
		if r.GuestDowntimeMS >= 0 {
			gd = fmt.Sprintf("%d ms", r.GuestDowntimeMS)
		}
		total := "–"
		if r.TotalMS > 0 {
			total = fmt.Sprintf("%.1f s", float64(r.TotalMS)/1000)
		}
		link := "–"
		if r.LinkBytes > 0 {
			link = mib(uint64(r.LinkBytes))
		}
		fmt.Fprintf(&b, "| %.0f | %s | %s | %s | %s | %.1f s | %.1f s | %d ms | %s | %s | %s | %d | %v |\n", r.DirtyRate, r.Pattern, r.Policy, r.Status,
			total, float64(r.PrimeMS)/1000, float64(r.MigrationMS)/1000, r.DowntimeMS, gd, mib(uint64(r.WireBytes)), link, r.Iterations, r.GuestOK)
	}
	return b.String()
}
