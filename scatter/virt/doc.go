// Package virt is vmscatter's libvirt client: it drives `virsh -c URI` (go-libvirt is not available, and virsh is
// what an operator has), every call bounded by a context and a deadline, and parses what virsh prints: a domain's
// XML (dumpxml), its state (domstate), its job statistics (domjobinfo). The QEMU pid comes from the domain's pidfile
// under the host's libvirt run directory (RUN_DIR/qemu/DOM.pid), which does not taint the domain.
//
// Migrate runs libvirt's own migration of a domain through a UNIX socket that vmscatter owns on both hosts
// (`--migrateuri unix:///run/vmscatter/RUN/DOM.sock`, libvirt ≥ 6.8): see MigrateArgs for the flags and why.
//
// The parsers are pure and fuzzed; the rest is the edge.
package virt
