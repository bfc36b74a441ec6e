// Package scale projects the bytes and the time of moving hundreds of VMs to tens of targets, from a few real
// guest RAM images, with the project's own dedup and placement code.
//
// The pipeline has three stages, and only the first touches bytes:
//
//  1. LoadImages reads base RAM images (raw files, e.g. QMP pmemsave of fixture guests; Capture makes them)
//     once with dedup.Scan into a Catalog: per image, the content id of every page (or zero), and per distinct
//     content its size compressed with s2. SyntheticCatalog draws a catalog without bytes for tests.
//  2. Generate draws a Fleet of N synthetic VMs from the catalog's images (families): each VM is its base's
//     fingerprint vector with a fraction of its non-zero pages made private, a dirty working set, and an
//     optional memory scale. Everything is deterministic for a seed.
//  3. Project places the fleet on M targets with grouping.Place ("ours" and "greedy"), builds the multicast
//     schedule with grouping.BuildSchedule, and computes, for QEMU native, vmscatter over multicast, vmscatter
//     over unicast and the lower bound, the bytes leaving the source, the bytes entering the targets, and the
//     time on a modelled link. It does no I/O. Sweep runs Project over a grid of N and M; Validate compares a
//     projection with the figures of a real run.
//
// docs/scale.md states the model and every assumption. Nothing here is shared across goroutines; a Fleet is
// read-only once generated.
package scale
