package scatter

import (
	"errors"
	"fmt"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/grouping"
)

// PlacementReport says how the VMs were placed.
type PlacementReport struct {
	Algorithm   string `json:"algorithm"`    // greedy, ours, exact, or round-robin when there is no sharing map
	FabricBytes int64  `json:"fabric_bytes"` // Σ over targets of the distinct contents of its VMs × 4096
	SourceBytes int64  `json:"source_bytes"` // each distinct content once × 4096
	// The multicast schedule: batches of contents with one target set, and the group joins and leaves their
	// order implies.
	Batches           int `json:"batches"`
	MembershipChanges int `json:"membership_changes"`
}

// place assigns every VM a target (phase 3): the user's pins, then the planner over the reachable targets. With no
// sharing map (no scan) the planner has nothing to group by, and the VMs are spread round-robin. A capacity that
// cannot be met is an error, and nothing moves.
func (s *sender) place(sm *dedup.SharingMap, rep *Report) error {
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
	// The problem covers live VMs and reachable targets only.
	var live []*sourceVM
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
			live = append(live, vm)
		}
	}
	if len(live) == 0 {
		return nil
	}
	p := grouping.Problem{NumContents: 0}
	for _, t := range reach {
		p.Targets = append(p.Targets, grouping.Target{Name: t.addr, MemBytes: t.info.capacity(), MaxVMs: t.info.MaxVMs})
	}
	alg := grouping.Algorithm(s.cfg.Algorithm)
	if alg == "" {
		alg = grouping.Ours
	}
	for _, vm := range live {
		gv := grouping.VM{Name: vm.spec.Name, MemBytes: uint64(vm.ramBytes), VCPUs: 1, Pinned: s.cfg.Placement[vm.spec.Name]}
		p.VMs = append(p.VMs, gv)
		var ids []uint32
		if sm != nil {
			if i := s.vmIndex(vm); i < len(sm.PerVM) {
				ids = make([]uint32, len(sm.PerVM[i]))
				for k, id := range sm.PerVM[i] {
					ids[k] = uint32(id)
				}
			}
		}
		p.Contents = append(p.Contents, ids)
	}
	if sm != nil {
		p.NumContents = sm.Distinct()
	}
	var assign []int
	if sm == nil {
		assign = roundRobin(p)
		rep.Placement = PlacementReport{Algorithm: "round-robin"}
	} else {
		pl, err := grouping.Place(p, alg)
		var ce *grouping.CapacityError
		if errors.As(err, &ce) {
			return fmt.Errorf("placement: %w (nothing was moved)", err)
		}
		if err != nil {
			return fmt.Errorf("placement: %w", err)
		}
		assign = pl.Assign
		rep.Placement = PlacementReport{Algorithm: string(pl.Algorithm), FabricBytes: int64(pl.FabricPages) * dedup.PageSize,
			SourceBytes: int64(pl.SourcePages) * dedup.PageSize}
	}
	for i, vm := range live {
		vm.target = reach[assign[i]]
		vm.report.Target = vm.target.addr
	}
	if sm != nil {
		// Phase 4: the schedule. Batch target indices become indices into s.targets.
		sched := grouping.BuildSchedule(p, assign)
		idx := map[*targetConn]int{}
		for i, t := range s.targets {
			idx[t] = i
		}
		for _, b := range sched.Batches {
			tb := primeBatch{contents: b.Contents}
			for _, ti := range b.Targets {
				tb.targets = append(tb.targets, idx[reach[ti]])
			}
			s.batches = append(s.batches, tb)
		}
		rep.Placement.Batches, rep.Placement.MembershipChanges = len(sched.Batches), sched.MembershipChanges
	}
	return nil
}

// primeBatch is contents that go to the same set of targets (indices into sender.targets).
type primeBatch struct {
	targets  []int
	contents []uint32
}

// roundRobin spreads VMs over targets in order, honouring pins (capacity is left to the receivers).
func roundRobin(p grouping.Problem) []int {
	idx := map[string]int{}
	for i, t := range p.Targets {
		idx[t.Name] = i
	}
	assign := make([]int, len(p.VMs))
	next := 0
	for i, vm := range p.VMs {
		if vm.Pinned != "" {
			assign[i] = idx[vm.Pinned]
			continue
		}
		assign[i] = next % len(p.Targets)
		next++
	}
	return assign
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
	vm.report.Status, vm.report.Error = StatusRolledBack, err.Error()
	s.progress.set(vm.spec.Name, "rolled back", err.Error())
}

// capacity is the memory a target offers to migrated VMs: its configured capacity, else its available memory.
func (m infoMsg) capacity() uint64 {
	if m.Capacity > 0 {
		return m.Capacity
	}
	return m.MemAvailable
}
