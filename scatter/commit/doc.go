// Package commit is the per-VM commit protocol of a vmscatter migration, both halves, as pure state machines:
// Source (the sender's side) and Dest (the receiver's side) take events and return actions, as etcd raft's
// Step/Ready and multicast/reliable do. They own no sockets, processes, files, timers or goroutines: the drivers
// carry out the actions and report what happened as events. Decide is the rule of `vmscatter recover`.
// docs/commit.md has each side's table (phase × event → actions, next phase), generated from the machines;
// testdata/*.txt states every pair and the test checks that none is missing.
//
// # Phases
//
// The names are libvirt's migration phases.
//
//   - Begin: the source is inventoried; nothing is sent or changed.
//   - Prepare: OPEN sent; the destination starts paused (-S, -incoming defer, late-block-activate, so that it
//     takes no image lock before it may run).
//   - Perform: the stream flows.
//   - Loaded: the destination holds the whole VM, paused, and the source migration completed (postmigrate).
//   - Finish: START decided and sent (source), received (destination): the destination may run.
//   - Confirm: RUNNING sent and heard: the source QEMU quits.
//   - RollingBack: the source takes the VM back; the destination is being torn down.
//   - Committed, RolledBack, Unresolved: terminal. Unresolved means this side could not settle the VM by itself
//     and left it as it was, for `vmscatter recover`.
//
// # Who owns the VM
//
// Before Finish the source owns the VM; from Finish on, the destination does. A side that loses its peer acts
// only within what it owns and never guesses past the point of no return:
//
//   - The source rolls back on any failure before Finish. It resumes the source VM only once the receiver has
//     said ABORTED (its destination is gone and never ran) and the source VM has left finish-migrate, and it
//     puts back the migration settings and vCPU affinity it changed. From Finish on it never resumes the source
//     unless the destination hands the VM back with ABORTED (QEMU refused to start it, so its guest never ran);
//     a source that hears nothing stays paused and ends Unresolved.
//   - The destination tears itself down on any failure until it has journaled Loaded and said LOADED. From then
//     until START or ABORT it does nothing irreversible; if the sender is lost it waits for the sender, or for
//     recover, to bring the answer (AwaitResolution). From START on it is never torn down for a lost
//     connection.
//   - The sender retries (it dials, it re-sends START or ABORT); the receiver answers, and gives every answer
//     again for a repeated frame of the same epoch, also once terminal.
//
// # The journal
//
// Each side journals a VM's phase before every irreversible step: an action Journal(phase, epoch). The source
// journals Prepare before OPEN, Perform before it touches the source QEMU, Finish before START, Confirm before
// it quits the source, RolledBack before it resumes it, and Committed. The destination journals Prepare before it
// launches a destination, Loaded before LOADED, Finish before `cont`, RolledBack before it kills a destination
// (so that no START of that epoch is ever obeyed again), and Committed. RestoreDest rebuilds a receiver's side
// from its last entry; Decide reads both sides' last entries.
//
// # The epoch
//
// Every migration of a VM has an epoch, greater than any earlier one's (the sender keeps the last in its
// journal), and every frame carries it. A machine ignores a frame of another epoch. A receiver that resolved an
// epoch to the source (journaled RolledBack) answers its START with ABORTED, so a START delayed by a partition,
// or sent again after the sender was told the VM was rolled back, never starts a destination.
//
// # Driving a machine
//
// One goroutine steps each machine and carries out its actions:
//
//	src := commit.NewSource(epoch, wasRunning)
//	acts := src.Step(commit.Event{Kind: commit.Connected}) // the VM connection is up
//	for {
//		for _, a := range acts { // in order
//			switch a.Kind {
//			case commit.Journal:
//				journal.Put(vm, a.Entry) // written and fsynced before the next action starts
//			case commit.Send:
//				conn.Send(a.Frame, a.Epoch, a.Reason) // dropped if the connection is down
//			case commit.StartSourceMigration:
//				go migrate(ctx, vm, events) // its outcome comes back as SrcActive or SrcFailed
//			case commit.Report:
//				report.Set(vm, a.Status, a.Reason)
//			// ... every other ActionKind
//			}
//		}
//		if src.Phase().Terminal() {
//			break
//		}
//		acts = src.Step(<-events) // frames, QEMU outcomes, timers, signals, in the order observed
//	}
//
// The contract between a driver and a machine:
//
//   - Actions are carried out in the order returned. A Journal action is durable before any later action of the
//     same step starts. Other actions may run asynchronously, but start in order.
//   - Every QEMU action has outcome events (listed with its ActionKind), delivered when known. Bound each QEMU
//     command by a timeout of its own; deliver the phase's Timeout only while no outcome is pending.
//   - After each end status of the source migration (SrcCompleted, SrcFailed, SrcCancelled), wait until the
//     source VM has left finish-migrate and deliver SrcRunning or SrcPaused.
//   - The receiver keeps one Dest per VM, the latest epoch's. A frame for an epoch it has no record of creates a
//     Dest in Begin (so that ABORT is answered and START refused); OPEN of a greater epoch replaces a terminal
//     one. On restart it calls RestoreDest with each VM's last entry, then delivers DestExited if that VM's
//     destination process is gone.
//   - The sender journals with its Prepare entry the target and whether the VM ran, and with Perform the source's
//     migration capabilities, parameters and vCPU affinity as they were, for RestoreSource and recover.
package commit
