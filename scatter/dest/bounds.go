package dest

import (
	"time"

	"github.com/vmscatter/vmscatter/scatter/commit"
)

// Bounds are the driver's timers: how long a VM's migration may stay in each phase while no outcome of a QEMU
// action is pending (each action has a bound of its own: destination.go), before the machine hears Timeout. A
// zero field takes its default.
type Bounds struct {
	// Begin: a migration that an ATTACH named but this receiver never opened, waiting for a frame. Default 2 min.
	Begin time.Duration
	// Prepare: a backstop only; the launch is bounded by itself (QEMU's start 30 s, each QMP command 10 s, the
	// incoming socket 10 s). Default 2 min.
	Prepare time.Duration
	// Perform, until STREAM_END: counted from the sender's last frame on the stream's connection, since the
	// sender opens the first VMs' connections early and their streams wait for the prime. Default 30 min.
	Perform time.Duration
	// Load: from STREAM_END to the destination's load; its outcome is DestFailed, not Timeout. Default:
	// Config.LoadTimeout.
	Load time.Duration
	// Loaded: LOADED said, waiting for START or ABORT; Timeout leaves the destination paused, Unresolved. The
	// sender's word comes within seconds, but after a lost sender only `vmscatter recover` brings it. Default 1 h.
	Loaded time.Duration
	// Finish: once StartDest gave no outcome (the QEMU exited, or did not answer, after `cont` may have reached
	// it). Default 1 min.
	Finish time.Duration
	// Confirm: RUNNING said, waiting for COMMIT while the sender quits the source; Timeout commits. Default 2 min.
	Confirm time.Duration
	// RollingBack: the killed destination must exit within this. Default 1 min.
	RollingBack time.Duration
}

func (b Bounds) withDefaults(load time.Duration) Bounds {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&b.Begin, 2*time.Minute)
	def(&b.Prepare, 2*time.Minute)
	def(&b.Perform, 30*time.Minute)
	def(&b.Load, load)
	def(&b.Loaded, time.Hour)
	def(&b.Finish, time.Minute)
	def(&b.Confirm, 2*time.Minute)
	def(&b.RollingBack, time.Minute)
	return b
}

// of is the phase's bound; 0 for a terminal phase, which has none.
func (b Bounds) of(p commit.Phase) time.Duration {
	switch p {
	case commit.Begin:
		return b.Begin
	case commit.Prepare:
		return b.Prepare
	case commit.Perform:
		return b.Perform
	case commit.Loaded:
		return b.Loaded
	case commit.Finish:
		return b.Finish
	case commit.Confirm:
		return b.Confirm
	case commit.RollingBack:
		return b.RollingBack
	}
	return 0
}
