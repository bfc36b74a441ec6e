package dest

import "github.com/vmscatter/vmscatter/scatter/commit"

// restore rebuilds the machine of every VM the data directory's journal records, before the receiver accepts
// connections: each VM's loop adopts the destination an earlier receiver left and carries out what RestoreDest
// asks (a Loaded one waits for the sender's word, a Finish one is started, a Prepare one torn down, a RolledBack
// one made sure to be gone). It replaces the reaper of earlier receivers, which killed every unfinished
// destination, loaded or not.
func (r *Receiver) restore() {
	recs, bad := records(r.cfg.DataDir)
	for name, err := range bad {
		r.log.Error("commit record unreadable: VM left alone", "vm", name, "err", err)
	}
	for name, rec := range recs {
		m := r.vm(name)
		m.post(func() { m.restored(rec) })
	}
}

func (r *Receiver) isStopping() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stopping
}

// stopVMs delivers Stop to every VM whose machine is not terminal and waits until each is at rest: terminal, or
// Loaded with nothing under way. Every phase on the way has its bound (Bounds), so the wait ends.
func (r *Receiver) stopVMs() {
	r.mu.Lock()
	r.stopping = true
	var all []*vmDriver
	for _, m := range r.vms {
		if m.running || !m.atRest {
			all = append(all, m)
		}
	}
	r.mu.Unlock()
	for _, m := range all {
		m.post(m.stop)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for logged := false; ; logged = true {
		busy := 0
		for _, m := range r.vms {
			if m.queued > 0 || !m.atRest {
				busy++
			}
		}
		if busy == 0 {
			return
		}
		if !logged {
			r.log.Info("stopping: waiting for VMs to come to rest", "vms", busy)
		}
		r.cond.Wait()
	}
}

// waitVMs waits until every VM's loop has ended (their connections are closed), then lets nothing more start one.
func (r *Receiver) waitVMs() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for r.loops > 0 {
		r.cond.Wait()
	}
	r.closed = true
}

// restored rebuilds the VM's machine from its journal record when the receiver starts (RestoreDest), adopts the
// destination QEMU an earlier receiver left, carries out what the machine asks, and then delivers DestExited if
// that destination is gone.
func (m *vmDriver) restored(rec record) {
	e, ok := rec.entry()
	if !ok {
		m.log.Error("commit record with an unknown phase: left alone", "phase", rec.Phase, "dir", m.dir)
		return
	}
	m.gen++
	m.rec, m.run = rec, rec.Run
	m.log = m.r.log.With("vm", m.name, "epoch", e.Epoch)
	owned := e.Phase != commit.Committed // a committed VM's QEMU is the VM's, not the migration's
	if owned {
		if h := adoptDestination(m.dir); h != nil {
			m.pid = h.pid
			m.watch(h)
		}
	}
	d, acts := commit.RestoreDest(e)
	m.d = d
	m.log.Info("restored from the journal", "journal", e.Phase.String(), "phase", d.Phase().String(), "pid", m.pid)
	m.carryOut(acts) // RestoreDest journals nothing: no JournalFailed
	if owned && m.dest == nil && !m.exitSeen {
		m.exitSeen = true
		m.step(commit.Event{Kind: commit.DestExited, Reason: "the destination QEMU was gone when the receiver started"})
	}
	if m.d.Phase().Terminal() {
		m.releaseDest()
	}
}
