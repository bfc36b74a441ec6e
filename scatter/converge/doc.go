// Package converge holds the convergence policies (precopy, autoconverge, timebound, membound) and the downtime
// guard as pure deciders: they take readings of a migration (QEMU's progress, the pump's counters, the clock as an
// argument) and return what to set or do; the source driver reads QEMU and carries their answers out. Nothing here
// does I/O or sleeps, so every decision is tested with samples alone.
package converge
