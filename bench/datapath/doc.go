// Package datapath holds what the data-path benchmarks run on: the sender's pump (scatter/source) and the
// receiver's rebuilder (scatter/dest), each measured in GB/s of guest RAM per core.
//
//   - Generate writes a deterministic synthetic QEMU 7.2 migration stream with qemu/stream's Encoder, as a source
//     QEMU would send it, together with the contents its target holds: Mix says how many of its pages the target
//     holds (they travel as references) and how many it does not (text-like pages that travel literal, compressed).
//   - SenderFrames is what the pump sends for such a stream, frame by frame: the rebuilder's input.
//     scatter/source's TestPumpSendsSenderFrames holds it to the pump.
//   - Pair makes a secure.Conn pair through the real handshake and then points it at memory, so that a benchmark
//     measures the sealing and opening of every frame but no socket.
//   - CPU measures the process's CPU time over the timed part of a benchmark, for the per-core figure.
//
// Nothing here touches the network or the disk.
package datapath
