package report

import (
	"encoding/json"
	"os"
	"time"
)

// Report is what one run of `vmscatter send` writes as JSON (--report). docs/report.md documents every field.
type Report struct {
	Version   int             `json:"version"`
	Session   string          `json:"session"`
	Started   time.Time       `json:"started"`
	Transport string          `json:"transport"`
	Policy    string          `json:"policy"`
	Placement PlacementReport `json:"placement"`
	VMs       []VMReport      `json:"vms"`
	Totals    Totals          `json:"totals"`
	Stores    []StoreReport   `json:"stores,omitempty"` // per reachable target, when there was a prime
	Warnings  []string        `json:"warnings,omitempty"`
}

// StoreReport is what the prime planned for one target's content store.
type StoreReport struct {
	Target   string `json:"target"`
	Capacity int    `json:"capacity"` // contents its store holds for the run, as its receiver advertised
	Seeded   int    `json:"seeded"`   // of them, contents the target read from its own files
	Wanted   int    `json:"wanted"`   // contents the schedule would have primed to it
	LeftOut  int    `json:"left_out"` // of those, left out for the store's capacity: their pages travelled literal
}

// ReportVersion is the report format's version.
const ReportVersion = 1

// VM statuses in the report.
const (
	StatusMigrated   = "migrated"    // runs on its target; the source QEMU has quit
	StatusRolledBack = "rolled_back" // the migration failed and the source VM runs on at the source
	StatusFailed     = "failed"      // the migration failed and the VM was lost through no decision of ours (see error)
	StatusUnresolved = "unresolved"  // the VM was left as it was for `vmscatter recover`: the source paused, or both ends
)

// VMReport is one VM's line in the report.
type VMReport struct {
	Name        string     `json:"name"`
	Target      string     `json:"target"`
	Status      string     `json:"status"`
	Error       string     `json:"error,omitempty"`
	RAMBytes    int64      `json:"ram_bytes"`
	WireBytes   int64      `json:"wire_bytes"`
	Pages       PageCounts `json:"pages"`
	MigrationMS int64      `json:"migration_ms"`
	DowntimeMS  int64      `json:"downtime_ms"`
	// GuestDowntimeMS is the gap the guest showed across the switch-over (last console line at the source to the
	// first at the destination, host time); -1 when not measured (see --guest-downtime).
	GuestDowntimeMS int64  `json:"guest_downtime_ms"`
	DirtyRate       int64  `json:"dirty_rate_pages_s"` // QEMU's last measured dirty rate, pages/s
	Iterations      int64  `json:"iterations"`         // QEMU's dirty-sync count: passes over memory
	Policy          string `json:"policy"`
	ScanNonZero     int64  `json:"scan_nonzero_pages"` // non-zero pages the scan found in this VM's RAM
	// DestinationStartMS is how long the receiver took to start the destination QEMU (OPEN to READY). Destinations
	// of the first VMs start while the prime runs, off the critical path.
	DestinationStartMS int64 `json:"destination_start_ms"`
	SourcePID          int   `json:"source_pid,omitempty"`
	TargetPID          int   `json:"target_pid,omitempty"`
	// LibvirtJob is libvirt's outcome of a libvirt-managed VM's migration (send --domains): "completed", "failed"
	// with libvirt's message in Error, or "" for a VM vmscatter migrated itself.
	LibvirtJob string `json:"libvirt_job,omitempty"`
}

// PageCounts counts the RAM pages of one VM's stream by how they travelled.
type PageCounts struct {
	Total      int64 `json:"total"`
	Zero       int64 `json:"zero"`
	Literal    int64 `json:"literal"`
	Referenced int64 `json:"referenced"`
	// Unchanged counts pages QEMU sent again with the exact bytes the stream had last sent literal at the same
	// address (a page dirtied before QEMU's pass read it, then sent again by the next pass): they are not sent.
	Unchanged int64 `json:"unchanged,omitempty"`
}

// Totals sums the run.
type Totals struct {
	VMs        int   `json:"vms"`
	Migrated   int   `json:"migrated"`
	RolledBack int   `json:"rolled_back"`
	Failed     int   `json:"failed"`
	Unresolved int   `json:"unresolved"` // left for `vmscatter recover`
	RAMBytes   int64 `json:"ram_bytes"`
	WireBytes  int64 `json:"wire_bytes"`
	PrimeBytes int64 `json:"prime_bytes"`
	// PrimeOverlapContents counts the contents the prime left to its overlap: sent and confirmed while the streams
	// began, within prime_bytes.
	PrimeOverlapContents int `json:"prime_overlap_contents"`
	// SourceLinkBytes is what left the source's data-plane interface during the run, from its counters (all
	// traffic on it, not only vmscatter's); -1 when the interface could not be read.
	SourceLinkBytes int64  `json:"source_link_bytes"`
	Transport       string `json:"transport"`
	ElapsedMS       int64  `json:"elapsed_ms"`
	ScanMS          int64  `json:"scan_ms"`
	Phases          Phases `json:"phases_ms"`
	NonZeroPages    int64  `json:"nonzero_pages"`
	DistinctPages   int64  `json:"distinct_pages"`
	LowerBoundBytes int64  `json:"lower_bound_bytes"`
	// LowerBoundCompressedBytes is the same bound with each content compressed as the prime sent it.
	LowerBoundCompressedBytes int64 `json:"lower_bound_compressed_bytes"`
	// The bound for each transport, uncompressed: each distinct non-zero content once per target that needs it
	// (unicast), or once in all (multicast). LowerBoundBytes is the one of the transport used.
	LowerBoundUnicastBytes   int64 `json:"lower_bound_unicast_bytes"`
	LowerBoundMulticastBytes int64 `json:"lower_bound_multicast_bytes"`
	// The bound over what the destinations loaded (see bound.go): each distinct non-zero content of the migrated
	// VMs' final memory that a target needed and did not hold locally, compressed as it travelled, once in all
	// (multicast) or once per target that needed it (unicast). FinalBoundBytes is the one of the transport used.
	FinalDistinctPages int64 `json:"final_distinct_pages"`
	// SeededContents counts the contents targets read from their own copies of the VMs' boot files, summed over
	// targets: pages that crossed no link.
	SeededContents           int64 `json:"seeded_contents"`
	FinalBoundBytes          int64 `json:"final_bound_bytes"`
	FinalBoundUnicastBytes   int64 `json:"final_bound_unicast_bytes"`
	FinalBoundMulticastBytes int64 `json:"final_bound_multicast_bytes"`
	// PrimeUnusedBytes is what the prime spent on contents that no migrated VM's final memory references (the
	// guests overwrote them after the prime), compressed, once per content: the prime's part of the excess over the
	// final bound.
	PrimeUnusedBytes int64 `json:"prime_unused_bytes"`
}

// Phases is the wall time of each phase of the run, in milliseconds. Migrate runs from the first migration's start
// to the last one's end; destinations opened early start within Prime.
type Phases struct {
	Prepare int64 `json:"prepare"` // inventory of the VMs and sessions with the receivers, concurrently
	Scan    int64 `json:"scan"`
	Place   int64 `json:"place"` // placement and schedule
	Seed    int64 `json:"seed"`  // targets reading contents from their own files
	Prime   int64 `json:"prime"`
	Migrate int64 `json:"migrate"`
}

// Sum fills the totals that count the VMs; the run's own figures (phases, bounds, link bytes) are kept.
func (r *Report) Sum() {
	t := r.Totals
	t.Transport = r.Transport
	t.Migrated, t.RolledBack, t.Failed, t.Unresolved, t.RAMBytes = 0, 0, 0, 0, 0
	t.VMs = len(r.VMs)
	t.WireBytes = t.PrimeBytes
	for _, v := range r.VMs {
		switch v.Status {
		case StatusMigrated:
			t.Migrated++
		case StatusRolledBack:
			t.RolledBack++
		case StatusUnresolved:
			t.Unresolved++
		default:
			t.Failed++
		}
		t.RAMBytes += v.RAMBytes
		t.WireBytes += v.WireBytes
	}
	r.Totals = t
}

// WriteFile writes the report as indented JSON, atomically (temp file and rename).
func (r *Report) WriteFile(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// PlacementReport says how the VMs were placed.
type PlacementReport struct {
	Algorithm   string `json:"algorithm"`    // greedy, ours, exact, or round-robin when there is no sharing map
	FabricBytes int64  `json:"fabric_bytes"` // Σ over targets of the distinct contents of its VMs × 4096
	SourceBytes int64  `json:"source_bytes"` // each distinct content once × 4096
	// The multicast schedule: batches of contents with one target set, and the group joins and leaves their
	// order implies.
	Batches           int `json:"batches"`
	MembershipChanges int `json:"membership_changes"`
}
