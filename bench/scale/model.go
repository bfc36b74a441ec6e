package scale

import (
	"errors"
	"fmt"
	"math"
)

// Model holds the constants of the projection: link rates, per-core throughputs, fixed costs and record sizes.
// DefaultModel gives the documented values (docs/scale.md says where each comes from).
type Model struct {
	UplinkBps   float64 `json:"uplink_bps"`   // the source host's uplink, bit/s
	DownlinkBps float64 `json:"downlink_bps"` // each target's downlink, bit/s; 0 means UplinkBps
	// WireOverhead is the share added to every byte on a link for framing (Ethernet, IP, TCP or UDP headers):
	// about 0.045 at MTU 1500 without segmentation offload, near 0 with it or at MTU 9000.
	WireOverhead float64 `json:"wire_overhead"`

	SourceCores         int     `json:"source_cores"`           // cores the source gives the scan, compression and streams
	ScanBytesPerSec     float64 `json:"scan_bytes_per_sec"`     // per core: read, zero-check and xxhash guest RAM
	CompressBytesPerSec float64 `json:"compress_bytes_per_sec"` // per core: zstd over bundles of 15 pages, input bytes
	StreamBytesPerSec   float64 `json:"stream_bytes_per_sec"`   // per core: decode QEMU's stream, digest, turn pages into records

	StartSeconds float64 `json:"start_seconds"` // per wave of migrations: start the destination QEMUs
	JoinSeconds  float64 `json:"join_seconds"`  // for a multicast join to take effect (snooping bridge)
	// NativeConcurrency and ScatterConcurrency bound the migrations at once; 0 means all at once.
	NativeConcurrency  int `json:"native_concurrency"`
	ScatterConcurrency int `json:"scatter_concurrency"`

	// DeviceStateBytes is what a VM's stream carries besides its main RAM: device sections and the small RAM
	// blocks (ROMs, firmware), sent by both methods byte for byte.
	DeviceStateBytes uint64 `json:"device_state_bytes"`
	// DirtyPagesPerSec is how fast a VM dirties its working set between the scan and its migration; a page
	// dirtied then no longer matches the primed content and goes literal. At most Variation.Dirty of its pages.
	DirtyPagesPerSec float64 `json:"dirty_pages_per_sec"`
	// CapacitySlack sizes each target: ceil(N/M) × mean VM memory × CapacitySlack, at least the largest VM.
	CapacitySlack float64 `json:"capacity_slack"`
	// Schedule builds the multicast schedule (grouping.BuildSchedule) to count membership changes; false takes
	// the ideal, one join and one leave per target.
	Schedule bool `json:"schedule"`
}

// Record sizes on the wire.
const (
	// QEMU 7.2 RAM records (docs/stream.md): be64 offset|flags, then 4096 bytes for a page or 1 fill byte for a
	// zero page. The block name after a record without CONTINUE is negligible.
	nativePageRecord = 8 + PageSize
	nativeZeroRecord = 8 + 1
	// vmscatter page records (docs/dedup.md): an 11-byte header (kind, block, offset), then 4 bytes of content
	// id, 1 fill byte, or codec, length and the compressed page. Frames of references and zero pages travel
	// compressed (PAGES_Z): about 5 bytes a record (dedup.CompressRecords).
	refRecord        = 5
	zeroRecord       = 5
	literalRecordHdr = 14
)

// DefaultModel is a 10 Gbit/s source uplink into 10 Gbit/s targets, with the throughputs measured on this
// project's machine (DESIGN.md) and the fixed costs of the 4-guest bench.
func DefaultModel() Model {
	return Model{
		UplinkBps:           10e9,
		SourceCores:         8,
		ScanBytesPerSec:     2e9,
		CompressBytesPerSec: 0.24e9, // zstd, fastest level, bundles of 15 pages (docs/dedup.md)
		StreamBytesPerSec:   1e9,
		StartSeconds:        0.3,
		JoinSeconds:         0.010,
		ScatterConcurrency:  0,
		NativeConcurrency:   0,
		DeviceStateBytes:    512 << 10,
		DirtyPagesPerSec:    200,
		CapacitySlack:       1.2,
		Schedule:            true,
	}
}

// ErrBadModel reports a model Project refuses.
var ErrBadModel = errors.New("scale: bad model")

func (m Model) validate() error {
	pos := func(x float64) bool { return x > 0 && !math.IsInf(x, 0) }
	nonNeg := func(x float64) bool { return x >= 0 && !math.IsInf(x, 0) }
	switch {
	case !pos(m.UplinkBps) || !nonNeg(m.DownlinkBps):
		return fmt.Errorf("%w: link rates %g and %g bit/s", ErrBadModel, m.UplinkBps, m.DownlinkBps)
	case m.SourceCores <= 0 || !pos(m.ScanBytesPerSec) || !pos(m.CompressBytesPerSec) || !pos(m.StreamBytesPerSec):
		return fmt.Errorf("%w: throughputs need positive cores and rates", ErrBadModel)
	case !nonNeg(m.StartSeconds) || !nonNeg(m.JoinSeconds) || !nonNeg(m.DirtyPagesPerSec) || !nonNeg(m.WireOverhead):
		return fmt.Errorf("%w: negative cost", ErrBadModel)
	case m.NativeConcurrency < 0 || m.ScatterConcurrency < 0:
		return fmt.Errorf("%w: negative concurrency", ErrBadModel)
	case !(m.CapacitySlack >= 1):
		return fmt.Errorf("%w: capacity slack %g below 1", ErrBadModel, m.CapacitySlack)
	}
	return nil
}

func (m Model) downlink() float64 {
	if m.DownlinkBps > 0 {
		return m.DownlinkBps
	}
	return m.UplinkBps
}

// wire is the bytes a link carries for n bytes of payload.
func (m Model) wire(n uint64) uint64 { return uint64(math.Round(float64(n) * (1 + m.WireOverhead))) }

// linkSeconds is the time to push source bytes through the uplink while the busiest target takes its bytes
// through its downlink.
func (m Model) linkSeconds(source uint64, perTarget []uint64) float64 {
	t := float64(source) * 8 / m.UplinkBps
	for _, b := range perTarget {
		t = math.Max(t, float64(b)*8/m.downlink())
	}
	return t
}

// waves is how many rounds of at most p (0: all) migrations move n VMs.
func waves(n, p int) int {
	if p <= 0 || p >= n {
		return min(n, 1)
	}
	return (n + p - 1) / p
}

// The bench's workload (bench.RunCompare: 16 MiB working set dirtied at 200 pages/s, fresh random bytes) dirties
// about 2% of a 128 MiB guest's non-zero pages during its migration, with contents s2 cannot compress.
const (
	ValidationDirty      = 0.02
	ValidationDirtyRatio = 1.0
)

// LabModel is the namespace lab of bench.RunCompare: a 1 Gbit/s shaped source uplink, unshaped veths into the
// targets, segmentation offload on (framing near 0), and two cores shared by everything: the guests' TCG vCPUs,
// the source and destination QEMUs, the sender and the receivers. That sharing makes the per-VM streams
// CPU-bound: the 4-guest bench moved 512 MiB of streams in 1.6 s (one run) and 3.3 s (another), so
// StreamBytesPerSec is set to 150 MB/s per core, calibrated on the faster run.
func LabModel() Model {
	m := DefaultModel()
	m.UplinkBps = 1e9
	m.DownlinkBps = 10e9
	m.SourceCores = 2
	m.StreamBytesPerSec = 150e6
	return m
}
