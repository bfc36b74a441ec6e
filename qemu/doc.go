// Package qemu is vmscatter's edge towards a QEMU process other than its protocols: a source QEMU's command line
// (read from /proc, its machine type made concrete, rewritten for a destination), what a QEMU binary says of itself
// (its version and machine types, Probe), the launch of a destination QEMU, and the guest RAM reader. QMP is in
// qemu/qmp, the migration stream codec in qemu/stream.
package qemu
