// Package source is the sender, `vmscatter send`: the driver on the source host. It inventories each VM over QMP,
// opens a session with every receiver, scans guest RAM, places the VMs (package plan), seeds and primes the
// targets' content stores, then migrates each VM through itself: QEMU migrates into a unix socket it owns, and the
// pump turns every page into a zero flag, an exact reference or a compressed literal (dedup.AppendPage). The
// convergence policies and the downtime guard decide (package converge); this package reads QEMU and carries their
// decisions out. It never imports the receiver (package dest): the two share only the protocol.
//
// The pipeline of one VM, each stage on its own goroutine, bounded by the VM's timeout:
//
//	QEMU --unix socket--> pump (decode, AppendPage, frame) --secure.Conn--> receiver
//	receiver --secure.Conn--> reader (return path to QEMU, replies) --> the migration's select loop
//	steer, guard: read query-migrate every 100 ms, set parameters or stop the VM
package source
