package main

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmscatter/vmscatter/cmd/internal/cliapp"
)

// run runs the command line in-process and returns its exit code and output.
func run(args ...string) (int, string, string) { return cliapp.RunCaptured(newApp, args...) }

func TestHelpAndUsageErrors(t *testing.T) {
	code, out, _ := run("--help")
	if code != ExitOK || !strings.Contains(out, "EXIT CODES") || !strings.Contains(out, "send") || !strings.Contains(out, "receive") {
		t.Fatalf("help: %d\n%s", code, out)
	}
	if code, _, errs := run("no-such-command"); code != ExitUsage || !strings.Contains(errs, "no-such-command") {
		t.Fatalf("unknown command: exit %d, %s", code, errs)
	}
	for _, moved := range []string{"demo", "bench"} {
		if strings.Contains(out, "   "+moved+" ") {
			t.Errorf("help lists %s, which is vmscatter-lab's:\n%s", moved, out)
		}
		if code, _, errs := run(moved); code != ExitUsage || !strings.Contains(errs, "vmscatter-lab "+moved) {
			t.Errorf("%s: exit %d, %s", moved, code, errs)
		}
	}
	if code, _, errs := run("send", "--no-such-flag"); code != ExitUsage {
		t.Fatalf("bad flag: exit %d, %s", code, errs)
	}
	if code, _, errs := run("send", "--vms", "a=/x", "--targets", "h:1"); code != ExitUsage || !strings.Contains(errs, "key-file") {
		t.Fatalf("missing --key-file: exit %d, %s", code, errs)
	}
	if code, _, errs := run("send", "--vms", "a=/x", "--targets", "h:1", "--placement", "auto", "--key-file", "/nonexistent"); code != ExitError || !strings.Contains(errs, "keygen") {
		t.Fatalf("missing key file: exit %d, %s", code, errs)
	}
}

func TestKeygen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key")
	if code, _, errs := run("keygen", "--out", path); code != ExitOK {
		t.Fatalf("keygen: %d %s", code, errs)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}
	if code, _, _ := run("keygen", "--out", path); code != ExitError {
		t.Fatal("keygen overwrote an existing key")
	}
}

// TestPlanImagesJSON plans three RAM images onto two targets: two images share most pages and must land together.
func TestPlanImagesJSON(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	page := func() []byte {
		b := make([]byte, 4096)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	shared := make([][]byte, 200)
	for i := range shared {
		shared[i] = page()
	}
	write := func(name string, sharedPages int, private int) string {
		var buf bytes.Buffer
		for i := range sharedPages {
			buf.Write(shared[i])
		}
		for range private {
			buf.Write(page())
		}
		buf.Write(make([]byte, 4096*50)) // zero pages
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a, b, c := write("a", 200, 10), write("b", 200, 10), write("c", 0, 210)
	code, out, errs := run("plan", "--images", "a="+a+",b="+b+",c="+c, "--target", "t1=3M", "--target", "t2=3M", "--json")
	if code != ExitOK {
		t.Fatalf("plan: %d %s", code, errs)
	}
	var plan struct {
		Placement     map[string]string `json:"placement"`
		FabricBytes   int64             `json:"fabric_bytes"`
		SourceBytes   int64             `json:"source_bytes"`
		DistinctPages int               `json:"distinct_pages"`
		Algorithm     string            `json:"algorithm"`
		Schedule      struct {
			Batches           int `json:"batches"`
			MembershipChanges int `json:"membership_changes"`
		} `json:"schedule"`
	}
	if err := json.Unmarshal([]byte(out), &plan); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if plan.Placement["a"] != plan.Placement["b"] || plan.Placement["a"] == plan.Placement["c"] {
		t.Errorf("placement %v: a and b share 200 pages and should land together, c elsewhere", plan.Placement)
	}
	if plan.DistinctPages != 200+10+10+210 || plan.SourceBytes != int64(plan.DistinctPages)*4096 || plan.FabricBytes != plan.SourceBytes {
		t.Errorf("figures: %+v", plan)
	}
	if plan.Algorithm != "ours" || plan.Schedule.Batches == 0 {
		t.Errorf("algorithm %q, schedule %+v", plan.Algorithm, plan.Schedule)
	}
	// Too little capacity: a clear error, exit 1.
	code, _, errs = run("plan", "--images", "a="+a+",b="+b+",c="+c, "--target", "t1=1M")
	if code != ExitError || !strings.Contains(errs, "memory") {
		t.Errorf("over capacity: exit %d, %s", code, errs)
	}
}
