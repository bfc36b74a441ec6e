package source

import (
	"bytes"
	"context"
	"log/slog"
	"reflect"
	"testing"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/secure"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// TestFitStoresOnTheSharingMap: the sender weighs each content by the pages of the target's VMs that hold it (read
// from the sharing map), cuts a target to its advertised capacity less its seeded contents, and reports it.
func TestFitStoresOnTheSharingMap(t *testing.T) {
	page := func(b byte) []byte { return bytes.Repeat([]byte{b}, dedup.PageSize) }
	// VM 0 holds A twice, B and S once; VM 1 holds A and C.
	vm0 := bytes.Join([][]byte{page('A'), page('A'), page('B'), page('S')}, nil)
	vm1 := bytes.Join([][]byte{page('A'), page('C')}, nil)
	sm, err := dedup.Scan(context.Background(), []dedup.Region{
		{VM: 0, Block: "pc.ram", Size: int64(len(vm0)), R: bytes.NewReader(vm0)},
		{VM: 1, Block: "pc.ram", Size: int64(len(vm1)), R: bytes.NewReader(vm1)},
	}, dedup.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const a, b, sd, c = 0, 1, 2, 3 // content ids in order of first occurrence
	t0 := &targetConn{addr: "t0", sc: &secure.Conn{}, info: wire.InfoMsg{StoreContents: 2}, seeded: []uint64{1 << sd},
		seedHeld: []heldEntry{{id: sd}}}
	t1 := &targetConn{addr: "t1", sc: &secure.Conn{}, info: wire.InfoMsg{StoreLimit: 1 << 20}} // an old receiver: 256 pages
	s := &sender{log: slog.New(slog.DiscardHandler), targets: []*targetConn{t0, t1},
		vms: []*sourceVM{{target: t0}, {target: t1}},
		batches: []primeBatch{{targets: []int{0, 1}, contents: []uint32{a}}, {targets: []int{0}, contents: []uint32{b, sd}},
			{targets: []int{1}, contents: []uint32{c}}}}
	rep := &report.Report{}
	s.fitStores(sm, rep)
	// t0 holds 2, one of them seeded: of A (gain 2 − ½) and B (gain 0) it keeps A; S stays, costing nothing.
	want := []primeBatch{{targets: []int{0, 1}, contents: []uint32{a}}, {targets: []int{0}, contents: []uint32{sd}},
		{targets: []int{1}, contents: []uint32{c}}}
	if !reflect.DeepEqual(s.batches, want) {
		t.Fatalf("batches %+v, want %+v", s.batches, want)
	}
	wantStores := []report.StoreReport{{Target: "t0", Capacity: 2, Seeded: 1, Wanted: 2, LeftOut: 1},
		{Target: "t1", Capacity: 256, Wanted: 2}}
	if !reflect.DeepEqual(rep.Stores, wantStores) || len(rep.Warnings) != 1 {
		t.Fatalf("stores %+v, warnings %q", rep.Stores, rep.Warnings)
	}
}
