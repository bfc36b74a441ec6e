// Package qemu is vmscatter's edge towards a QEMU process other than its protocols: a source QEMU's command line
// (read from /proc, its machine type made concrete, rewritten for a destination), the disk images it opens and their
// identities (the shared-storage check: disks.go, images.go, imageid.go), what a QEMU binary says of itself (its
// version and machine types, Probe), the launch of a destination QEMU, and the guest RAM reader. QMP is in
// qemu/qmp, the migration stream codec in qemu/stream.
package qemu
