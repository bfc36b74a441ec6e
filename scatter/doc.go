// Package scatter is the home of a scatter run's packages; it holds no code of its own, only the end-to-end tests
// that run a sender and receivers together over loopback with real QEMU guests.
//
//   - wire: every byte of the control and VM-stream protocol (frames, messages, sections, bundles, seed records);
//   - secure: the authenticated, encrypted connection every frame travels on, and the shared key;
//   - commit: the per-VM commit protocol, both halves, as pure state machines;
//   - converge: the convergence policies and the downtime guard, as pure deciders;
//   - plan: the placement problem and its solution, for `send` and `plan` alike;
//   - report: the JSON report and its lower bound;
//   - host: /proc and /sys probes, socket queues, vCPU affinity, console logs;
//   - source: the sender, `vmscatter send`: inventory, scan, placement, seed, prime and the migrations;
//   - dest: the receiver daemon, `vmscatter receive`: content store, destination QEMUs, stream rebuild.
//
// source and dest never import each other: what they share is the protocol (wire, secure, commit).
package scatter
