// Package dest is the receiver daemon, `vmscatter receive`: the driver on every target host. It accepts sessions
// from senders (package secure), keeps each session's content store (seed, unicast and multicast prime), and drives,
// for every VM, the destination side of the commit protocol (scatter/commit's Dest, docs/commit.md): it starts a
// destination QEMU paused for each OPEN, rebuilds a byte-valid QEMU migration stream from the frames (references
// resolved from the store) and feeds it to that QEMU, relays the destination's return path, and starts the
// destination only on the sender's word. A VM's machine outlives its connections (ATTACH brings the sender or
// `vmscatter recover` back to it) and the receiver's restarts (its journal record, DATA-DIR/<vm>/commit.json). It
// never imports the sender (package source).
//
// The files: receiver.go (sessions, the accept loop), conn.go (a VM connection: OPEN, ATTACH, its reader),
// vm.go (a VM's driver loop and the machine's actions), actions.go (the destination QEMU's actions and their
// outcomes), destination.go (the QEMU itself: launched or adopted), rebuild.go (the stream), journal.go (the
// record), bounds.go (the phase timers), restore.go (start and stop of the receiver).
package dest
