package source

import (
	"bytes"
	"context"
	"encoding/binary"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
)

// overlapMap scans two VMs of 100 pages each: VM 0 holds contents 0-99 in order, VM 1 holds contents 50-99 in its
// first half and 100-149 in its second.
func overlapMap(t *testing.T) *dedup.SharingMap {
	t.Helper()
	page := func(i int) []byte {
		pg := make([]byte, dedup.PageSize)
		binary.LittleEndian.PutUint64(pg, uint64(i)+1)
		return pg
	}
	var a, b []byte
	for i := range 100 {
		a = append(a, page(i)...)
	}
	for i := 50; i < 150; i++ {
		b = append(b, page(i)...)
	}
	sm, err := dedup.Scan(context.Background(), []dedup.Region{
		{VM: 0, Block: "pc.ram", Size: int64(len(a)), R: bytes.NewReader(a)},
		{VM: 1, Block: "pc.ram", Size: int64(len(b)), R: bytes.NewReader(b)},
	}, dedup.ScanOptions{})
	if err != nil || sm.Distinct() != 150 {
		t.Fatalf("scan: %v, %d distinct", err, sm.Distinct())
	}
	return sm
}

// TestOverlapTakesTheLatestContents: only contents whose every page lies in the last part of its VM's RAM are left
// to the overlap, the latest first, within the budget; a content also held early in another VM stays in the prime.
func TestOverlapTakesTheLatestContents(t *testing.T) {
	sm := overlapMap(t)
	all := make([]uint32, 150)
	for i := range all {
		all[i] = uint32(i)
	}
	batches := []primeBatch{{targets: []int{0}, contents: all[:100]}, {targets: []int{1}, contents: all[100:]}}
	picked := func(latest []uint32) []uint32 {
		out := slices.Clone(latest)
		slices.Sort(out)
		return out
	}
	// From 0.5 on: contents 50-99 are at 0.5-0.99 in VM 0 but 0-0.49 in VM 1; 100-149 at 0.5-0.99 in VM 1.
	if got := picked(overlapContents(sm, batches, 1<<30, 0.5)); !slices.Equal(got, all[100:]) {
		t.Fatalf("picked %v, want 100-149", got)
	}
	// A budget of 10 pages: the 10 latest.
	if got := picked(overlapContents(sm, batches, 10*dedup.PageSize, 0.5)); !slices.Equal(got, all[140:]) {
		t.Fatalf("picked %v, want 140-149", got)
	}
	if latest := overlapContents(sm, batches, 1<<30, 0.5); latest[0] != 149 || latest[49] != 100 {
		t.Fatalf("order %v, want the latest first", latest)
	}
	if pick := overlapContents(sm, batches, 1<<30, 1.0); pick != nil {
		t.Fatalf("picked %v from the end of RAM on", picked(pick))
	}
	if pick := overlapContents(sm, batches, dedup.PageSize-1, 0.5); pick != nil {
		t.Fatal("picked contents within a budget of less than a page")
	}
	// On a link of 10 pages per overlapSpan, the 10 latest; at an unknown rate, all.
	latest := overlapContents(sm, batches, 1<<30, 0.5)
	if k := overlapKeep(latest, 10*dedup.PageSize/overlapSpan.Seconds()); k != 10 {
		t.Fatalf("keep %d, want 10", k)
	}
	if k := overlapKeep(latest, 0); k != len(latest) {
		t.Fatalf("keep %d at an unknown rate, want all %d", k, len(latest))
	}
}

// TestSplitBatchesKeepsEveryBatch: the head keeps every batch and the order of their contents, the tail only the
// batches with picked contents.
func TestSplitBatchesKeepsEveryBatch(t *testing.T) {
	pick := make([]bool, 10)
	pick[2], pick[3], pick[7] = true, true, true
	if !slices.Equal(pick, pickOf(&dedup.SharingMap{Contents: make([]dedup.Content, 10)}, []uint32{7, 2, 3})) {
		t.Fatal("pickOf")
	}
	batches := []primeBatch{{targets: []int{0}, contents: []uint32{1, 2, 4}}, {targets: []int{0, 1}, contents: []uint32{3, 7}},
		{targets: []int{1}, contents: []uint32{5, 6}}}
	head, tail := splitBatches(batches, pick)
	if len(head) != 3 || !slices.Equal(head[0].contents, []uint32{1, 4}) || len(head[1].contents) != 0 ||
		!slices.Equal(head[1].targets, []int{0, 1}) || !slices.Equal(head[2].contents, []uint32{5, 6}) {
		t.Fatalf("head %+v", head)
	}
	if len(tail) != 2 || !slices.Equal(tail[0].contents, []uint32{2}) || !slices.Equal(tail[0].targets, []int{0}) ||
		!slices.Equal(tail[1].contents, []uint32{3, 7}) || !slices.Equal(tail[1].targets, []int{0, 1}) {
		t.Fatalf("tail %+v", tail)
	}
}

// TestStreamWaitsForTheOverlap: a page whose content the overlap is sending the VM's target waits for the overlap
// to be confirmed and then becomes a reference; a page of a content the VM may not reference does not wait.
func TestStreamWaitsForTheOverlap(t *testing.T) {
	var salt [32]byte
	d := dedup.NewDigester(salt)
	held := dedup.NewHeldIndex(dedup.XXHash, d)
	mine, other := bytes.Repeat([]byte{7}, dedup.PageSize), bytes.Repeat([]byte{8}, dedup.PageSize)
	ow := &overlapWait{ids: map[dedup.Fingerprint]dedup.ContentID{dedup.XXHash(mine): 3, dedup.XXHash(other): 4}, done: make(chan struct{})}
	v := vmHeld{held: held, mine: []dedup.ContentID{1, 3}, overlap: ow, mayWait: func() bool { return true }}
	stopped := v
	stopped.mayWait = func() bool { return false } // the source QEMU switching over
	if _, ok := stopped.LookupFP(mine, dedup.XXHash(mine)); ok {
		t.Fatal("a stream whose VM is switching over waited for the overlap")
	}

	if _, ok := v.LookupFP(other, dedup.XXHash(other)); ok {
		t.Fatal("content 4 is not the VM's, yet it was referenced")
	}
	type result struct {
		id dedup.ContentID
		ok bool
	}
	got := make(chan result, 1)
	go func() {
		id, ok := v.LookupFP(mine, dedup.XXHash(mine))
		got <- result{id, ok}
	}()
	select {
	case r := <-got:
		t.Fatalf("the lookup did not wait for the overlap: %+v", r)
	case <-time.After(100 * time.Millisecond):
	}
	held.AddPage(3, mine) // confirmed
	ow.settle()
	select {
	case r := <-got:
		if !r.ok || r.id != 3 {
			t.Fatalf("after the overlap: %+v, want content 3", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the lookup still waits after the overlap ended")
	}
	// Over, an unconfirmed content goes literal at once.
	if _, ok := v.LookupFP(other, dedup.XXHash(other)); ok {
		t.Fatal("content 4 referenced")
	}
}

// TestOverlapWaitEndsWhenTheVMStops: a wait under way ends, the overlap not over, once the VM may no longer wait.
func TestOverlapWaitEndsWhenTheVMStops(t *testing.T) {
	ow := &overlapWait{done: make(chan struct{})}
	var asked atomic.Int32
	mayWait := func() bool { return asked.Add(1) < 3 } // running, running, then switching over
	if ow.wait(mayWait) {
		t.Fatal("the wait reported the overlap over")
	}
	if n := asked.Load(); n != 3 { // it ended at the first no, not at its bound
		t.Fatalf("asked %d times, want 3", n)
	}
}
