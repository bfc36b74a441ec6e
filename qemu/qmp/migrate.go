package qmp

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"time"
)

// MigrationStatus is the status of a QEMU's migration (QAPI MigrationStatus), outgoing or incoming.
type MigrationStatus string

// Migration statuses (qapi/migration.json).
const (
	MigrationNone            MigrationStatus = "none" // no migration yet (query-migrate answers {}; QueryMigrate says none)
	MigrationSetup           MigrationStatus = "setup"
	MigrationCancelling      MigrationStatus = "cancelling"
	MigrationCancelled       MigrationStatus = "cancelled"
	MigrationActive          MigrationStatus = "active"
	MigrationPostcopyActive  MigrationStatus = "postcopy-active"
	MigrationPostcopyPaused  MigrationStatus = "postcopy-paused"
	MigrationPostcopyRecover MigrationStatus = "postcopy-recover"
	MigrationCompleted       MigrationStatus = "completed"
	MigrationFailed          MigrationStatus = "failed"
	MigrationColo            MigrationStatus = "colo"
	MigrationPreSwitchover   MigrationStatus = "pre-switchover"
	MigrationDevice          MigrationStatus = "device" // the source sends device state, its vCPUs stopped
	MigrationWaitUnplug      MigrationStatus = "wait-unplug"
)

// Active reports whether a migration is under way: any status but none, completed, failed and cancelled. A
// cancelling migration is still active.
func (s MigrationStatus) Active() bool {
	switch s {
	case "", MigrationNone, MigrationCompleted, MigrationFailed, MigrationCancelled:
		return false
	}
	return true
}

// Finished reports whether the migration ended: completed, failed or cancelled. It is the usual condition for
// WaitMigration (WaitMigration(ctx, MigrationStatus.Finished)).
func (s MigrationStatus) Finished() bool {
	return s == MigrationCompleted || s == MigrationFailed || s == MigrationCancelled
}

// MigrationInfo is QEMU's view of its migration (query-migrate). Fields QEMU does not report in the current status
// are zero.
type MigrationInfo struct {
	Status           MigrationStatus
	TotalTime        time.Duration // since the migration started (until it ended, once it has)
	Downtime         time.Duration // measured downtime, once completed
	ExpectedDowntime time.Duration // QEMU's estimate, while active
	SetupTime        time.Duration
	RAM              MigrationRAM
	// CPUThrottlePercentage is the auto-converge throttle currently applied to the vCPUs.
	CPUThrottlePercentage int
	ErrorDesc             string // why the migration failed, when it did
}

// MigrationRAM is the RAM part of MigrationInfo. Pages are counted in target pages of PageSize bytes.
type MigrationRAM struct {
	Transferred    int64   `json:"transferred"`      // bytes sent
	Remaining      int64   `json:"remaining"`        // bytes still dirty, counted at full page size
	Total          int64   `json:"total"`            // bytes of RAM
	Duplicate      int64   `json:"duplicate"`        // pages sent as a zero-page flag
	Normal         int64   `json:"normal"`           // pages sent whole
	NormalBytes    int64   `json:"normal-bytes"`     // bytes of the pages sent whole
	DirtyPagesRate int64   `json:"dirty-pages-rate"` // pages dirtied per second, as last measured
	MBps           float64 `json:"mbps"`             // throughput, megabits per second
	DirtySyncCount int64   `json:"dirty-sync-count"` // dirty-bitmap syncs so far: 1 during the first pass
	PageSize       int64   `json:"page-size"`
	PagesPerSecond int64   `json:"pages-per-second"`
}

// UnmarshalJSON reads query-migrate's answer (times in milliseconds; {} for no migration, which is MigrationNone).
func (mi *MigrationInfo) UnmarshalJSON(b []byte) error {
	var w struct {
		Status           MigrationStatus `json:"status"`
		TotalTime        int64           `json:"total-time"`
		Downtime         int64           `json:"downtime"`
		ExpectedDowntime int64           `json:"expected-downtime"`
		SetupTime        int64           `json:"setup-time"`
		RAM              MigrationRAM    `json:"ram"`
		CPUThrottle      int             `json:"cpu-throttle-percentage"`
		ErrorDesc        string          `json:"error-desc"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	if w.Status == "" {
		w.Status = MigrationNone
	}
	*mi = MigrationInfo{Status: w.Status, TotalTime: ms(w.TotalTime), Downtime: ms(w.Downtime),
		ExpectedDowntime: ms(w.ExpectedDowntime), SetupTime: ms(w.SetupTime), RAM: w.RAM,
		CPUThrottlePercentage: w.CPUThrottle, ErrorDesc: w.ErrorDesc}
	return nil
}

func ms(n int64) time.Duration { return time.Duration(n) * time.Millisecond }

// QueryMigrate returns the state of the QEMU's migration, outgoing or incoming (query-migrate).
func (q *Client) QueryMigrate(ctx context.Context) (MigrationInfo, error) {
	mi := MigrationInfo{Status: MigrationNone}
	err := q.Execute(ctx, "query-migrate", nil, &mi)
	return mi, err
}

// Migrate starts an outgoing migration to uri, e.g. "unix:/path" or "tcp:host:port" (migrate). It returns once
// QEMU started it; WaitMigration or QueryMigrate follow it.
func (q *Client) Migrate(ctx context.Context, uri string) error {
	return q.Execute(ctx, "migrate", map[string]any{"uri": uri}, nil)
}

// MigrateIncoming makes a QEMU started with -incoming defer listen for its incoming migration on uri
// (migrate-incoming). Set the capabilities first.
func (q *Client) MigrateIncoming(ctx context.Context, uri string) error {
	return q.Execute(ctx, "migrate-incoming", map[string]any{"uri": uri}, nil)
}

// MigrateCancel cancels the outgoing migration (migrate_cancel). The cancel takes effect a moment later: wait for it
// with WaitMigration(ctx, func(s MigrationStatus) bool { return !s.Active() }). With no migration it does nothing.
func (q *Client) MigrateCancel(ctx context.Context) error {
	return q.Execute(ctx, "migrate_cancel", nil, nil)
}

// Migration capability names used by vmscatter (QAPI MigrationCapability has the others).
const (
	CapEvents       = "events"        // MIGRATION events; WaitMigration needs it
	CapAutoConverge = "auto-converge" // throttle the vCPUs when the migration does not converge
)

// Capabilities returns every migration capability QEMU knows, on or off (query-migrate-capabilities).
func (q *Client) Capabilities(ctx context.Context) (map[string]bool, error) {
	var caps []struct {
		Name  string `json:"capability"`
		State bool   `json:"state"`
	}
	if err := q.Execute(ctx, "query-migrate-capabilities", nil, &caps); err != nil {
		return nil, err
	}
	m := make(map[string]bool, len(caps))
	for _, c := range caps {
		m[c.Name] = c.State
	}
	return m, nil
}

// SetCapabilities turns the named migration capabilities on (true) or off (false) and leaves the others as they are
// (migrate-set-capabilities). QEMU refuses while a migration is active, and refuses the whole set if one name is
// unknown. An empty set sends nothing.
func (q *Client) SetCapabilities(ctx context.Context, caps map[string]bool) error {
	if len(caps) == 0 {
		return nil
	}
	return q.Execute(ctx, "migrate-set-capabilities", capabilitiesArgs(caps), nil)
}

// SetCapabilitiesCommand is the QMP command that SetCapabilities(caps) sends, written out for an operator to run
// on a VM's monitor (e.g. with virsh qemu-monitor-command), as in a message that asks them to turn capabilities off.
func SetCapabilitiesCommand(caps map[string]bool) string {
	b, _ := json.Marshal(struct {
		Execute   string         `json:"execute"`
		Arguments map[string]any `json:"arguments"`
	}{"migrate-set-capabilities", capabilitiesArgs(caps)})
	return string(b)
}

// capabilitiesArgs are migrate-set-capabilities' arguments for caps, in name order.
func capabilitiesArgs(caps map[string]bool) map[string]any {
	type capability struct {
		Name  string `json:"capability"`
		State bool   `json:"state"`
	}
	list := make([]capability, 0, len(caps))
	for name, on := range caps {
		list = append(list, capability{name, on})
	}
	slices.SortFunc(list, func(a, b capability) int { return strings.Compare(a.Name, b.Name) })
	return map[string]any{"capabilities": list}
}

// MigrationParameters are the migration parameters vmscatter sets, or may have to restore (QAPI
// MigrationParameters). A nil field is left as it is by SetParameters and was not reported by Parameters (a QEMU
// that lacks it). Parameters returns every field this QEMU has, so that SetParameters of what it returned puts
// them all back. With Go 1.26, new(v) makes a pointer to a value: DowntimeLimit: new(300 * time.Millisecond).
type MigrationParameters struct {
	DowntimeLimit *time.Duration // downtime-limit: the longest stop QEMU plans for; whole milliseconds, up to 2000 s
	MaxBandwidth  *int64         // max-bandwidth: bytes per second; QEMU's default is 128 MiB/s

	CPUThrottleInitial       *int  // cpu-throttle-initial: auto-converge's first throttle, percent
	CPUThrottleIncrement     *int  // cpu-throttle-increment: auto-converge's step, percent
	CPUThrottleTailslow      *bool // cpu-throttle-tailslow
	MaxCPUThrottle           *int  // max-cpu-throttle: percent
	ThrottleTriggerThreshold *int  // throttle-trigger-threshold: percent of the pass's bytes dirtied

	MultifdChannels      *int    // multifd-channels
	MultifdCompression   *string // multifd-compression: "none", "zlib", "zstd"
	XBZRLECacheSize      *int64  // xbzrle-cache-size: bytes
	MaxPostcopyBandwidth *int64  // max-postcopy-bandwidth: bytes per second, 0 for none
}

// migrationParametersWire is MigrationParameters as QMP spells it.
type migrationParametersWire struct {
	DowntimeLimit            *int64  `json:"downtime-limit,omitempty"`
	MaxBandwidth             *int64  `json:"max-bandwidth,omitempty"`
	CPUThrottleInitial       *int    `json:"cpu-throttle-initial,omitempty"`
	CPUThrottleIncrement     *int    `json:"cpu-throttle-increment,omitempty"`
	CPUThrottleTailslow      *bool   `json:"cpu-throttle-tailslow,omitempty"`
	MaxCPUThrottle           *int    `json:"max-cpu-throttle,omitempty"`
	ThrottleTriggerThreshold *int    `json:"throttle-trigger-threshold,omitempty"`
	MultifdChannels          *int    `json:"multifd-channels,omitempty"`
	MultifdCompression       *string `json:"multifd-compression,omitempty"`
	XBZRLECacheSize          *int64  `json:"xbzrle-cache-size,omitempty"`
	MaxPostcopyBandwidth     *int64  `json:"max-postcopy-bandwidth,omitempty"`
}

// MarshalJSON writes the parameters as migrate-set-parameters takes them (downtime-limit in milliseconds, the
// Duration truncated); nil fields are left out.
func (p MigrationParameters) MarshalJSON() ([]byte, error) {
	w := migrationParametersWire{MaxBandwidth: p.MaxBandwidth, CPUThrottleInitial: p.CPUThrottleInitial,
		CPUThrottleIncrement: p.CPUThrottleIncrement, CPUThrottleTailslow: p.CPUThrottleTailslow,
		MaxCPUThrottle: p.MaxCPUThrottle, ThrottleTriggerThreshold: p.ThrottleTriggerThreshold,
		MultifdChannels: p.MultifdChannels, MultifdCompression: p.MultifdCompression,
		XBZRLECacheSize: p.XBZRLECacheSize, MaxPostcopyBandwidth: p.MaxPostcopyBandwidth}
	if p.DowntimeLimit != nil {
		w.DowntimeLimit = new(p.DowntimeLimit.Milliseconds())
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads query-migrate-parameters' answer.
func (p *MigrationParameters) UnmarshalJSON(b []byte) error {
	var w migrationParametersWire
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*p = MigrationParameters{MaxBandwidth: w.MaxBandwidth, CPUThrottleInitial: w.CPUThrottleInitial,
		CPUThrottleIncrement: w.CPUThrottleIncrement, CPUThrottleTailslow: w.CPUThrottleTailslow,
		MaxCPUThrottle: w.MaxCPUThrottle, ThrottleTriggerThreshold: w.ThrottleTriggerThreshold,
		MultifdChannels: w.MultifdChannels, MultifdCompression: w.MultifdCompression,
		XBZRLECacheSize: w.XBZRLECacheSize, MaxPostcopyBandwidth: w.MaxPostcopyBandwidth}
	if w.DowntimeLimit != nil {
		p.DowntimeLimit = new(ms(*w.DowntimeLimit))
	}
	return nil
}

// Parameters returns the migration parameters (query-migrate-parameters). To change some for a migration and put
// them back afterwards, keep what Parameters returned and SetParameters it.
func (q *Client) Parameters(ctx context.Context) (MigrationParameters, error) {
	var p MigrationParameters
	err := q.Execute(ctx, "query-migrate-parameters", nil, &p)
	return p, err
}

// SetParameters sets the non-nil parameters and leaves the others (migrate-set-parameters). downtime-limit and
// max-bandwidth may change during a migration and take effect at once. A set with no field sends nothing.
func (q *Client) SetParameters(ctx context.Context, p MigrationParameters) error {
	if p == (MigrationParameters{}) {
		return nil
	}
	return q.Execute(ctx, "migrate-set-parameters", p, nil)
}
