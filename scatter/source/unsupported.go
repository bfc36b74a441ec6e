package source

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/vmscatter/vmscatter/qemu/qmp"
)

// What vmscatter's proxy cannot carry, found in the inventory so that the VM is refused before anything moves.

// unsupportedCapabilities are the migration capabilities that must be off on a source, each with why. A capability a
// QEMU does not know is not in its list at all, which is fine.
var unsupportedCapabilities = map[string]string{
	// The source would wait for something the proxy never sends.
	"switchover-ack": "the source QEMU would wait before the switch-over for the destination's acknowledgement, " +
		"which vmscatter's proxy never sends",
	"pause-before-switchover": "the source QEMU would pause before the switch-over and wait for a command to go on, " +
		"which vmscatter never sends",
	// A stream the codec does not read.
	"multifd":        "QEMU would send RAM over several connections, which vmscatter does not proxy yet",
	"zero-copy-send": "it is for multifd, which vmscatter does not proxy yet",
	"xbzrle":         "QEMU would send pages as XBZRLE deltas, which vmscatter does not decode",
	"compress":       "QEMU would send compressed pages, which vmscatter does not decode: it compresses pages itself",
	"mapped-ram":     "it is for migration to a file only",
	"postcopy-ram": "vmscatter migrates pre-copy only: for a guest that dirties memory faster than the link carries it, " +
		"use send --policy autoconverge or timebound",
	"postcopy-preempt":    "it is for post-copy, and vmscatter migrates pre-copy only",
	"release-ram":         "it is for post-copy, and vmscatter migrates pre-copy only",
	"dirty-bitmaps":       "QEMU would send block dirty bitmaps, which vmscatter does not carry",
	"block":               "vmscatter moves memory and device state only: disks must be on shared storage",
	"x-ignore-shared":     "QEMU would leave shared RAM out of the stream, and the destination would lack it",
	"x-colo":              "COLO replication is not a migration vmscatter can carry",
	"background-snapshot": "it is for snapshots, not migration",
}

// unsupportedFeatures says why a source with these migration capabilities and memory devices cannot go through
// vmscatter, and what to do; nil if it can.
func unsupportedFeatures(caps map[string]bool, devs []qmp.MemoryDevice) error {
	var why []string
	off := map[string]bool{}
	for _, name := range slices.Sorted(maps.Keys(caps)) {
		if reason, bad := unsupportedCapabilities[name]; bad && caps[name] {
			why = append(why, fmt.Sprintf("%s (%s)", name, reason))
			off[name] = false
		}
	}
	var msgs []string
	switch {
	case len(why) == 1:
		msgs = append(msgs, fmt.Sprintf("migration capability %s is on, which vmscatter cannot carry; turn it off on the "+
			"source for the move (QMP: %s)", why[0], qmp.SetCapabilitiesCommand(off)))
	case len(why) > 1:
		msgs = append(msgs, fmt.Sprintf("migration capabilities vmscatter cannot carry are on: %s; turn them off on "+
			"the source for the move (QMP: %s)", strings.Join(why, "; "), qmp.SetCapabilitiesCommand(off)))
	}
	for _, d := range devs {
		if d.Type == qmp.MemoryDeviceVirtioMem {
			id := d.ID
			if id == "" {
				id = d.Memdev
			}
			msgs = append(msgs, fmt.Sprintf("the VM has a virtio-mem device (%s): QEMU sends its state before RAM, "+
				"which vmscatter does not carry yet; move this VM with QEMU's own migration", id))
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return errors.New(strings.Join(msgs, "; and "))
}
