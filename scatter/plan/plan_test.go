package plan

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/grouping"
)

func TestSolveWithoutSharingIsRoundRobinHonouringPins(t *testing.T) {
	p := Problem(nil, []grouping.VM{{Name: "a"}, {Name: "b", Pinned: "t0"}, {Name: "c"}, {Name: "d"}}, []int{0, 1, 2, 3},
		[]grouping.Target{{Name: "t0"}, {Name: "t1"}})
	sol, err := Solve(p, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{0, 0, 1, 0}; !slices.Equal(sol.Assign, want) || sol.Placement.Algorithm != "round-robin" || len(sol.Schedule.Batches) != 0 {
		t.Fatalf("assign %v (want %v), %+v", sol.Assign, want, sol.Placement)
	}
}

func TestRoundRobinHonoursAllowedTargets(t *testing.T) {
	p := Problem(nil, []grouping.VM{{Name: "a"}, {Name: "b", Allowed: []string{"t2"}}, {Name: "c"}, {Name: "d", Allowed: []string{"t0", "t1"}},
		{Name: "e"}}, []int{0, 1, 2, 3, 4}, []grouping.Target{{Name: "t0"}, {Name: "t1"}, {Name: "t2"}})
	sol, err := Solve(p, "", false)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{0, 2, 0, 1, 2}; !slices.Equal(sol.Assign, want) {
		t.Fatalf("assign %v, want %v", sol.Assign, want)
	}
}

// Two pairs of identical images onto two targets that each hold two: each pair lands together, and the plan the
// one builder makes for `send` is the plan `plan` reports.
func TestSharersLandTogether(t *testing.T) {
	dir := t.TempDir()
	imgA := bytes.Repeat([]byte{1, 2, 3, 4}, 64*dedup.PageSize/4)
	imgB := bytes.Repeat([]byte{9, 8, 7, 6}, 64*dedup.PageSize/4)
	for i := range 64 { // distinct pages, so the contents are many
		imgA[i*dedup.PageSize] = byte(i)
		imgB[i*dedup.PageSize] = byte(100 + i)
	}
	var ims []ImageSpec
	for i, im := range [][]byte{imgA, imgB, imgA, imgB} {
		p := filepath.Join(dir, string(rune('a'+i))+".ram")
		if err := os.WriteFile(p, im, 0o644); err != nil {
			t.Fatal(err)
		}
		ims = append(ims, ImageSpec{Name: string(rune('a' + i)), Path: p})
	}
	size := uint64(len(imgA))
	pl, err := Images(context.Background(), ims, []TargetSpec{{Name: "t0", MemBytes: 2 * size}, {Name: "t1", MemBytes: 2 * size}}, "")
	if err != nil {
		t.Fatal(err)
	}
	if pl.Placement["a"] != pl.Placement["c"] || pl.Placement["b"] != pl.Placement["d"] || pl.Placement["a"] == pl.Placement["b"] {
		t.Fatalf("placement %v: sharers apart", pl.Placement)
	}
	if pl.SourceBytes != 128*dedup.PageSize || pl.FabricBytes != 128*dedup.PageSize || pl.Schedule.Batches != 2 {
		t.Fatalf("plan %+v", pl)
	}
	// Too little room: refused, nothing moves.
	_, err = Images(context.Background(), ims, []TargetSpec{{Name: "t0", MemBytes: size}}, "")
	var ce *grouping.CapacityError
	if !errors.As(err, &ce) {
		t.Fatalf("overcommitted plan: %v", err)
	}
}
