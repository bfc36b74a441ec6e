package source

import (
	"errors"
	"fmt"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/grouping"
	"github.com/vmscatter/vmscatter/scatter/plan"
	"github.com/vmscatter/vmscatter/scatter/report"
)

// place assigns every VM a target (phase 3): the user's pins, then the planner over the reachable targets whose
// QEMU can run it (allowedTargets). With no sharing map (no scan) the planner has nothing to group by, and the VMs
// are spread round-robin. A capacity that cannot be met is an error, and nothing moves.
func (s *sender) place(sm *dedup.SharingMap, rep *report.Report) error {
	byAddr := map[string]int{}
	for i, t := range s.targets {
		byAddr[t.addr] = i
	}
	names := map[string]bool{}
	for _, vm := range s.vms {
		names[vm.spec.Name] = true
	}
	for name, addr := range s.cfg.Placement {
		if _, ok := byAddr[addr]; !ok {
			return fmt.Errorf("placement %s=%s: %s is not among --targets", name, addr, addr)
		}
		if !names[name] {
			return fmt.Errorf("placement %s=%s: no VM named %s in --vms", name, addr, name)
		}
	}
	// The problem covers live VMs and reachable targets only, and each VM may go only to the targets whose QEMU can
	// run it; a VM that can go nowhere rolls back, untouched.
	var live []*sourceVM
	var allowed [][]string
	var reach []*targetConn
	var firstErr error
	for _, t := range s.targets {
		if t.sc != nil {
			reach = append(reach, t)
		} else if firstErr == nil {
			firstErr = t.err
		}
	}
	for _, vm := range s.vms {
		if vm.report.Status != "" {
			continue
		}
		pin, pinned := s.cfg.Placement[vm.spec.Name]
		switch {
		case pinned && s.targets[byAddr[pin]].sc == nil:
			s.rollBackUntouched(vm, pin, s.targets[byAddr[pin]].err)
		case len(reach) == 0:
			s.rollBackUntouched(vm, "", firstErr)
		default:
			a, err := allowedTargets(vm, reach, pin)
			if err != nil {
				s.rollBackUntouched(vm, pin, err)
				continue
			}
			live = append(live, vm)
			allowed = append(allowed, a)
		}
	}
	if len(live) == 0 {
		return nil
	}
	var targets []grouping.Target
	for _, t := range reach {
		targets = append(targets, placeTarget(t))
	}
	var vms []grouping.VM
	var slots []int
	for i, vm := range live {
		vms = append(vms, grouping.VM{Name: vm.spec.Name, MemBytes: uint64(vm.ramBytes), VCPUs: vm.vcpus, Pinned: s.cfg.Placement[vm.spec.Name],
			Allowed: allowed[i]})
		slots = append(slots, s.vmIndex(vm))
	}
	sol, err := plan.Solve(plan.Problem(sm, vms, slots, targets), s.cfg.Algorithm, sm != nil)
	if err != nil {
		return err
	}
	assign := sol.Assign
	rep.Placement = sol.Placement
	for i, vm := range live {
		vm.target = reach[assign[i]]
		vm.report.Target = vm.target.addr
	}
	if sm != nil {
		// Phase 4: the schedule. Batch target indices become indices into s.targets.
		idx := map[*targetConn]int{}
		for i, t := range s.targets {
			idx[t] = i
		}
		for _, b := range sol.Schedule.Batches {
			tb := primeBatch{contents: b.Contents}
			for _, ti := range b.Targets {
				tb.targets = append(tb.targets, idx[reach[ti]])
			}
			s.batches = append(s.batches, tb)
		}
	}
	return nil
}

// primeBatch is contents that go to the same set of targets (indices into sender.targets).
type primeBatch struct {
	targets  []int
	contents []uint32
}

func (s *sender) vmIndex(vm *sourceVM) int {
	for i, v := range s.vms {
		if v == vm {
			return i
		}
	}
	return -1
}

func (s *sender) rollBackUntouched(vm *sourceVM, target string, err error) {
	if err == nil {
		err = errors.New("no receiver reachable")
	}
	vm.report.Target = target
	vm.report.Status, vm.report.Error = report.StatusRolledBack, err.Error()
	s.progress.set(vm.spec.Name, "rolled back", err.Error())
}

// QEMUOverheadBytes is the memory a destination QEMU takes besides its guest's RAM: its own code and heap, device
// state, the accelerator's tables (KVM's page tables, TCG's translation cache). Measured here: QEMU 7.2 under TCG
// with 128 MiB guests peaks at 162 to 212 MiB resident, 34 to 84 MiB beyond their RAM; under KVM the process is
// smaller, and KVM's page tables add about 2 MiB per GiB of guest RAM. 128 MiB covers both for guests up to 16 GiB;
// the headroom covers larger ones.
const QEMUOverheadBytes = 128 << 20

// vCPUsPerCPU is how many vCPUs a target takes per host CPU it has: the usual overcommit of KVM clouds (OpenStack's
// cpu_allocation_ratio is 4.0 by default). vmscatter moves VMs that ran at their source: it refuses to crowd more
// vCPUs than that onto one target.
const vCPUsPerCPU = 4

// headroom is the memory a target keeps free beyond everything placement counts: for the receiver itself, the page
// cache the content store's file goes through, and what the host's other tenants grow into meanwhile.
func headroom(avail uint64) uint64 { return 256<<20 + avail/32 }

// placeTarget is what target t offers placement. A configured capacity (receive --capacity) is the guest RAM the
// operator offers, taken as given. Otherwise the target offers its available memory, less its content store's memory
// budget and a headroom, and charges every VM QEMUOverheadBytes besides its RAM. Its vCPU slots are vCPUsPerCPU per
// host CPU.
func placeTarget(t *targetConn) grouping.Target {
	m := t.info
	tg := grouping.Target{Name: t.addr, MaxVMs: m.MaxVMs, VCPUSlots: m.CPUs * vCPUsPerCPU}
	if m.Capacity > 0 {
		tg.MemBytes = m.Capacity
		return tg
	}
	reserved := uint64(max(m.StoreLimit, 0)) + headroom(m.MemAvailable)
	tg.MemBytes = m.MemAvailable - min(reserved, m.MemAvailable)
	tg.PerVMBytes = QEMUOverheadBytes
	return tg
}
