package scale

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
)

// Measured are the figures of a real run (bench.RunCompare, `vmscatter bench`) that the model projects.
type Measured struct {
	VMs, Targets       int
	NativeSourceBytes  uint64  // bytes that left the source host in the QEMU-native run
	ScatterSourceBytes uint64  // the same for vmscatter
	NativeSeconds      float64 // start until the last VM runs at its target
	ScatterSeconds     float64
	Multicast          bool    // vmscatter ran over multicast (else unicast)
	UplinkBps          float64 // the run's shaped source uplink; when set, it replaces the model's
}

// Validation compares a projection with a real run. Errors are relative: (projected - measured) / measured.
type Validation struct {
	Measured   Measured   `json:"measured"`
	Projection Projection `json:"projection"`
	Errors     struct {
		NativeSourceBytes  float64 `json:"native_source_bytes"`
		ScatterSourceBytes float64 `json:"scatter_source_bytes"`
		NativeSeconds      float64 `json:"native_seconds"`
		ScatterSeconds     float64 `json:"scatter_seconds"`
	} `json:"relative_errors"`
}

// ErrBadMeasurement reports measured figures that cannot be compared.
var ErrBadMeasurement = errors.New("scale: bad measurement")

// Validate projects fleet f (typically Generate with RoundRobin over images captured from the same guests as the
// run, no private share) onto meas.Targets targets and returns the relative errors against the run.
func Validate(m Model, f *Fleet, meas Measured) (Validation, error) {
	if meas.VMs != len(f.VMs) {
		return Validation{}, fmt.Errorf("%w: %d VMs measured, %d in the fleet", ErrBadMeasurement, meas.VMs, len(f.VMs))
	}
	if meas.NativeSourceBytes == 0 || meas.ScatterSourceBytes == 0 || !(meas.NativeSeconds > 0) || !(meas.ScatterSeconds > 0) {
		return Validation{}, fmt.Errorf("%w: every figure must be positive", ErrBadMeasurement)
	}
	if meas.UplinkBps > 0 {
		m.UplinkBps = meas.UplinkBps
	}
	p, err := Project(m, f, meas.Targets)
	if err != nil {
		return Validation{}, err
	}
	sc := p.Ours.Unicast
	if meas.Multicast {
		sc = p.Ours.Multicast
	}
	v := Validation{Measured: meas, Projection: p}
	rel := func(proj, real float64) float64 { return (proj - real) / real }
	v.Errors.NativeSourceBytes = rel(float64(p.Native.SourceBytes), float64(meas.NativeSourceBytes))
	v.Errors.ScatterSourceBytes = rel(float64(sc.SourceBytes), float64(meas.ScatterSourceBytes))
	v.Errors.NativeSeconds = rel(p.Native.Seconds, meas.NativeSeconds)
	v.Errors.ScatterSeconds = rel(sc.Seconds, meas.ScatterSeconds)
	return v, nil
}

// maxResults bounds the results.json that ReadMeasured accepts.
const maxResults = 16 << 20

// ReadMeasured reads the figures Validate needs from the results.json that `vmscatter bench` writes.
func ReadMeasured(r io.Reader) (Measured, error) {
	var res struct {
		Config struct {
			Guests    int     `json:"guests"`
			Targets   int     `json:"targets"`
			UplinkBps float64 `json:"uplink_bps"`
		} `json:"config"`
		Native struct {
			SourceTxBytes uint64 `json:"source_tx_bytes"`
			TotalMS       int64  `json:"total_ms"`
		} `json:"qemu_native"`
		Scatter struct {
			SourceTxBytes uint64 `json:"source_tx_bytes"`
			TotalMS       int64  `json:"total_ms"`
		} `json:"vmscatter"`
		Report struct {
			Transport string `json:"transport"`
		} `json:"vmscatter_report"`
	}
	b, err := io.ReadAll(io.LimitReader(r, maxResults+1))
	if err != nil {
		return Measured{}, fmt.Errorf("scale: reading results: %w", err)
	}
	if len(b) > maxResults {
		return Measured{}, fmt.Errorf("%w: results larger than %d bytes", ErrBadMeasurement, maxResults)
	}
	if err := json.Unmarshal(b, &res); err != nil {
		return Measured{}, fmt.Errorf("%w: %v", ErrBadMeasurement, err)
	}
	meas := Measured{
		VMs: res.Config.Guests, Targets: res.Config.Targets,
		NativeSourceBytes: res.Native.SourceTxBytes, ScatterSourceBytes: res.Scatter.SourceTxBytes,
		NativeSeconds: float64(res.Native.TotalMS) / 1000, ScatterSeconds: float64(res.Scatter.TotalMS) / 1000,
		Multicast: res.Report.Transport == "multicast", UplinkBps: res.Config.UplinkBps,
	}
	if meas.VMs <= 0 || meas.Targets <= 0 {
		return Measured{}, fmt.Errorf("%w: %d guests, %d targets", ErrBadMeasurement, meas.VMs, meas.Targets)
	}
	return meas, nil
}

// MaxAbsError is the largest of the absolute relative errors.
func (v Validation) MaxAbsError() float64 {
	e := v.Errors
	return math.Max(math.Max(math.Abs(e.NativeSourceBytes), math.Abs(e.ScatterSourceBytes)),
		math.Max(math.Abs(e.NativeSeconds), math.Abs(e.ScatterSeconds)))
}
