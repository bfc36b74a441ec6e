package journal

import (
	"os"
	"path/filepath"
	"testing"
)

func TestPutGetNames(t *testing.T) {
	d, err := Open(filepath.Join(t.TempDir(), "run"))
	if err != nil {
		t.Fatal(err)
	}
	type rec struct {
		Phase string
		Epoch uint64
	}
	var got rec
	if ok, err := d.Get("vm1", &got); ok || err != nil {
		t.Fatalf("missing record: %v %v", ok, err)
	}
	for _, r := range []rec{{"Prepare", 7}, {"Finish", 7}} {
		if err := d.Put("vm1", r); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Put("vm2", rec{"Begin", 1}); err != nil {
		t.Fatal(err)
	}
	if ok, err := d.Get("vm1", &got); !ok || err != nil || got != (rec{"Finish", 7}) {
		t.Fatalf("got %+v %v %v", got, ok, err)
	}
	names, err := d.Names()
	if err != nil || len(names) != 2 || names[0] != "vm1" || names[1] != "vm2" {
		t.Fatalf("names %v %v", names, err)
	}
	// No temporary file is left behind, and a torn temporary (a crash before the rename) is not a record.
	if err := os.WriteFile(filepath.Join(d.Path(), ".vm1.tmp-123"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if names, _ := d.Names(); len(names) != 2 {
		t.Fatalf("a temporary counted as a record: %v", names)
	}
	for _, bad := range []string{"", "../x", ".hidden", "a/b"} {
		if err := d.Put(bad, got); err == nil {
			t.Errorf("name %q accepted", bad)
		}
	}
}
