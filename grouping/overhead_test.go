package grouping

import (
	"errors"
	"strings"
	"testing"
)

// TestPerVMBytesCounts: what a target charges each VM besides its RAM counts against its memory, in the placement and
// in the error that says by how much it is short.
func TestPerVMBytesCounts(t *testing.T) {
	const mib = 1 << 20
	vms := []VM{{Name: "a", MemBytes: 448 * mib, VCPUs: 2}, {Name: "b", MemBytes: 448 * mib, VCPUs: 2}}
	p := Problem{VMs: vms, Contents: [][]uint32{{0}, {0}}, NumContents: 1,
		Targets: []Target{{Name: "t1", MemBytes: 1024 * mib}}}
	for _, alg := range []Algorithm{Ours, Greedy, Exact} {
		if _, err := Place(p, alg); err != nil {
			t.Fatalf("%s: without overhead both fit: %v", alg, err)
		}
	}
	p.Targets[0].PerVMBytes = 128 * mib
	for _, alg := range []Algorithm{Ours, Greedy, Exact} {
		_, err := Place(p, alg)
		var ce *CapacityError
		if !errors.As(err, &ce) || ce.Capacity != CapMemory || ce.Shortfall() != 128*mib {
			t.Fatalf("%s: err = %v, want memory short by 128 MiB", alg, err)
		}
		if !strings.Contains(err.Error(), "by 128 MiB") {
			t.Errorf("%s: %v does not say by how much", alg, err)
		}
	}
	// A second target with room takes the other VM; the overhead of each is charged where it lands.
	p.Targets = append(p.Targets, Target{Name: "t2", MemBytes: 576 * mib, PerVMBytes: 128 * mib})
	pl, err := Place(p, Ours)
	if err != nil {
		t.Fatal(err)
	}
	if pl.Assign[0] == pl.Assign[1] {
		t.Fatalf("both VMs on one target: %v", pl.Assign)
	}
	// vCPU slots count the VMs' vCPUs.
	p.Targets = []Target{{Name: "t1", MemBytes: 4096 * mib, VCPUSlots: 3}}
	if _, err := Place(p, Ours); !errors.As(err, new(*CapacityError)) || !strings.Contains(err.Error(), "vCPU") {
		t.Fatalf("4 vCPUs on 3 slots: err = %v", err)
	}
}
