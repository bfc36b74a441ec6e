// Package multicast is vmscatter's data plane: a reliable, authenticated transport that carries each
// distinct content once on the wire to the set of targets that need it (the "prime" phase).
//
// The byte layout, the crypto and the reliability rules are specified in docs/protocol-data.md. The
// package is split by job:
//
//   - multicast/wire: the packet codec (leaf, []byte Append/Parse pairs, typed errors).
//   - multicast/seal and multicast/replay: AES-256-GCM sealing with per-node nonces, the sliding replay
//     window, and counters of every packet refused (forged, replayed, truncated, oversized, …).
//   - multicast/fec: the Reed-Solomon erasure code of FEC blocks (parity on repair).
//   - multicast/reliable: the pure reliability engine (NAK repair with parity and suppression, polls,
//     COMPLETE, rate control, dropping slow or silent receivers), driven by inputs and the time.
//   - this package: the drivers (Sender, Receiver) that own goroutines, sockets and the clock, and the
//     bindings behind one Transport interface.
//
// Use (the scatter package's prime phase):
//
//	cfg := multicast.Config{Key: key, SessionID: sid, RateBps: 1e9}  // from the control channel
//
//	// on each receiver (id assigned by the control channel, 0..1023):
//	tr, err := multicast.ListenMulticast(ctx, multicast.MulticastConfig{Group: group, Iface: "eth1"})
//	r, err := multicast.NewReceiver(cfg, id, tr)
//	err = r.Run(ctx, store.Put)            // until ctx ends; deliver gets every object once
//
//	// on the sender:
//	tr, err := multicast.ListenMulticast(ctx, multicast.MulticastConfig{Group: group, Iface: "eth1"})
//	s, err := multicast.NewSender(cfg, tr)
//	defer s.Close()
//	res, err := s.Send(ctx, targets, objects) // blocks until every target confirmed or was dropped
//	// res.Dropped: serve those targets another way (unicast); res.Mode: the binding used.
//
// Bindings, all behind Transport and run through one conformance suite:
//
//   - ListenMulticast: UDP multicast on an explicit interface, joined at once and left on Close,
//     SO_RCVBUFFORCE 8 MiB, IP_MULTICAST_IF, TTL 1, loopback delivery on when the interface is a
//     loopback. Datagrams fit the interface MTU (jumbo up to 9000), so nothing fragments.
//   - DialUnicast / ListenUnicast: TCP from the sender to each receiver, the same sealed packets,
//     one bounded queue per receiver (a slow receiver loses packets, never stalls the others).
//   - DialAuto / ListenAuto: probe the group; if every receiver answers within the probe time use
//     multicast, else fall back to the unicast fan-out. Sender.Mode and Result.Mode report which.
//   - NewMemNet: an in-memory network with seeded loss and duplication, for tests.
//
// Several Sends may run at once (different target sets); they share the rate. A receiver dropped as too
// slow or silent stays dropped for the Sender's life and is listed in every later Result.Dropped.
package multicast
