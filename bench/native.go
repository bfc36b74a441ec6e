package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/vmscatter/vmscatter/bench/fixture"
	"github.com/vmscatter/vmscatter/qemu"
	"github.com/vmscatter/vmscatter/qemu/qmp"
)

// NativePortBase is the first TCP port destination QEMUs listen on for QEMU-native migration (one per VM).
const NativePortBase = 7500

// NativeMethod is a configuration of QEMU's own live migration: one method of the side-by-side.
type NativeMethod struct {
	Name string `json:"name"` // as the tables and plots name it
	// MultifdChannels turns the multifd capability on at both ends with this many channels; 0 migrates over one
	// stream, as QEMU does by default.
	MultifdChannels int `json:"multifd_channels,omitempty"`
	// MultifdCompression is multifd-compression at both ends ("zstd", "zlib", "none"); it needs MultifdChannels.
	MultifdCompression string `json:"multifd_compression,omitempty"`
}

// QEMUDefault is QEMU's own migration as it comes: one stream, no compression.
var QEMUDefault = NativeMethod{Name: "QEMU default"}

// QEMUBest is QEMU's best own configuration on this source: multifd over as many channels as the source has cores,
// with zstd compression on both sides.
func QEMUBest() NativeMethod {
	return NativeMethod{Name: "QEMU multifd+zstd", MultifdChannels: runtime.NumCPU(), MultifdCompression: "zstd"}
}

// capMultifd is QEMU's multifd migration capability (QAPI MigrationCapability).
const capMultifd = "multifd"

// setUp applies the method to one end of a migration, before migrate or migrate-incoming; downtime (source only,
// else 0) is the downtime limit.
func (m NativeMethod) setUp(ctx context.Context, q *qmp.Client, downtime time.Duration) error {
	if m.MultifdCompression != "" && m.MultifdChannels == 0 {
		return fmt.Errorf("bench: %s: multifd compression without multifd channels", m.Name)
	}
	var p qmp.MigrationParameters
	if downtime > 0 {
		p.DowntimeLimit, p.MaxBandwidth = new(downtime), new(int64(1)<<40)
	}
	if m.MultifdChannels > 0 {
		if err := q.SetCapabilities(ctx, map[string]bool{capMultifd: true}); err != nil {
			return fmt.Errorf("%s: multifd capability: %w", m.Name, err)
		}
		p.MultifdChannels = new(m.MultifdChannels)
		if m.MultifdCompression != "" {
			p.MultifdCompression = new(m.MultifdCompression)
		}
	}
	if p == (qmp.MigrationParameters{}) {
		return nil
	}
	return q.SetParameters(ctx, p)
}

// NativeVM is one VM's QEMU-native migration.
type NativeVM struct {
	Name        string `json:"name"`
	Target      string `json:"target"`
	Status      string `json:"status"` // completed, or what went wrong
	TotalMS     int64  `json:"total_ms"`
	DowntimeMS  int64  `json:"downtime_ms"`
	Transferred int64  `json:"transferred_bytes"` // QEMU's own count of bytes it sent
}

// NativeResult is a run of QEMU's own live migration of every guest straight to its target, all at once, as an
// operator would do it today.
type NativeResult struct {
	Method   NativeMethod `json:"method"`
	VMs      []NativeVM   `json:"vms"`
	SourceTx uint64       `json:"source_tx_bytes"`
	TargetRx []uint64     `json:"target_rx_bytes"`
	Elapsed  time.Duration
	// SourceCPU is the source QEMUs' CPU time from the first migrate until the last VM ran at its target (the
	// guests quit on the way); TargetCPU the destination QEMUs', from their start to then (bench/cpu.go).
	SourceCPU, TargetCPU time.Duration
}

// MigrateNative migrates each guest to target assign[i] with QEMU's own TCP migration configured as m, all at once.
// The guests must run in the source host's namespace (fixture.GuestOptions.Netns), so that they reach the targets.
// The destination QEMUs start from each source's own command line with -incoming defer, in the targets' namespaces,
// under the targets' data directories (Close kills them); each gets m's settings, then listens on its own port.
func (c *Cluster) MigrateNative(ctx context.Context, m NativeMethod, guests []*fixture.Guest, assign []int, downtime time.Duration) (*NativeResult, error) {
	if len(assign) != len(guests) {
		return nil, errors.New("bench: one target per guest")
	}
	type prepared struct {
		g    *fixture.Guest
		dest *qemu.Destination
		src  *qmp.Client
		uri  string
		ti   int
	}
	preps := make([]*prepared, len(guests))
	defer func() {
		for _, p := range preps {
			if p == nil {
				continue
			}
			if p.src != nil {
				p.src.Close()
			}
			if p.dest != nil && p.dest.QMP != nil {
				p.dest.QMP.Close()
			}
		}
	}()
	for i, g := range guests {
		ti := assign[i]
		t := c.Targets[ti]
		argv, err := qemu.ReadCommandLine(g.PID)
		if err != nil {
			return nil, err
		}
		if len(argv) > 4 && argv[0] == "ip" { // a guest started through ip netns exec still shows QEMU's argv
			argv = argv[4:]
		}
		dir := filepath.Join(c.DataDir(ti), g.Name)
		dargv, err := qemu.RewriteCommandLine(argv, dir) // ends in -incoming defer
		if err != nil {
			return nil, err
		}
		dargv = append([]string{"ip", "netns", "exec", t.NS}, dargv...)
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		dest, err := qemu.LaunchDestination(lctx, dargv, qemu.PathsIn(dir))
		cancel()
		if err != nil {
			return nil, fmt.Errorf("%s: destination: %w", g.Name, err)
		}
		uri := "tcp:" + net.JoinHostPort(t.Addr.String(), strconv.Itoa(NativePortBase+i))
		preps[i] = &prepared{g: g, dest: dest, uri: uri, ti: ti}
		if err := m.setUp(ctx, dest.QMP, 0); err != nil {
			return nil, fmt.Errorf("%s: destination: %w", g.Name, err)
		}
		if err := dest.QMP.MigrateIncoming(ctx, uri); err != nil {
			return nil, fmt.Errorf("%s: destination: %w", g.Name, err)
		}
		if preps[i].src, err = qmp.Dial(ctx, g.QMPPath); err != nil {
			return nil, err
		}
		if err := m.setUp(ctx, preps[i].src, downtime); err != nil {
			return nil, fmt.Errorf("%s: source: %w", g.Name, err)
		}
	}
	// Give the destinations a moment to listen, then start every migration at once.
	time.Sleep(300 * time.Millisecond)
	_, tx0, _ := c.Source.Counters()
	rx0 := c.targetRx()
	srcCPU0 := guestsCPU(guests)
	res := &NativeResult{Method: m, VMs: make([]NativeVM, len(guests))}
	start := time.Now()
	var wg sync.WaitGroup
	for i, p := range preps {
		res.VMs[i] = NativeVM{Name: p.g.Name, Target: c.Targets[p.ti].Addr.String()}
		if err := p.src.Migrate(ctx, p.uri); err != nil {
			res.VMs[i].Status = err.Error()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := &res.VMs[i]
			v.Status = waitNative(ctx, p.src, p.dest)
			v.TotalMS = time.Since(start).Milliseconds()
			if mi, err := p.src.QueryMigrate(ctx); err == nil {
				v.DowntimeMS, v.Transferred = mi.Downtime.Milliseconds(), mi.RAM.Transferred
			}
			_ = p.src.Quit(ctx)
		}()
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	_, tx1, _ := c.Source.Counters()
	res.SourceTx = tx1 - tx0
	for i, rx := range c.targetRx() {
		res.TargetRx = append(res.TargetRx, rx-rx0[i])
	}
	res.SourceCPU = guestsCPU(guests) - srcCPU0
	for _, p := range preps {
		res.TargetCPU += childCPU(p.dest.Cmd, p.dest.Exited())
	}
	return res, nil
}

// waitNative waits until the source completed and the destination runs.
func waitNative(ctx context.Context, src *qmp.Client, dest *qemu.Destination) string {
	for {
		mi, err := src.QueryMigrate(ctx)
		if err != nil {
			return err.Error()
		}
		switch mi.Status {
		case qmp.MigrationFailed, qmp.MigrationCancelled:
			return "source migration " + string(mi.Status) + ": " + mi.ErrorDesc
		case qmp.MigrationCompleted:
			if st, err := dest.QMP.Status(ctx); err == nil && st == qmp.RunStateRunning {
				return "completed"
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err().Error()
		case <-dest.Exited():
			return dest.ExitError().Error()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
