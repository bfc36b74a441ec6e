// Package dest is the receiver daemon, `vmscatter receive`: the driver on every target host. It accepts sessions
// from senders (package secure), keeps each session's content store (seed, unicast and multicast prime), starts a
// destination QEMU paused for each VM connection, rebuilds a byte-valid QEMU migration stream from the frames
// (references resolved from the store) and feeds it to that QEMU, relays the destination's return path, and starts
// the destination only on the sender's word. It never imports the sender (package source).
package dest
