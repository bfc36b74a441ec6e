package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/cmd/internal/cliapp"
	"github.com/vmscatter/vmscatter/qemu/qemutest"
	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/dest"
	"github.com/vmscatter/vmscatter/scatter/secure"
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

// TestSendRefusedBeforeAnythingMovesExitsOne runs `vmscatter send` on a real guest whose migration capabilities the
// proxy cannot carry, to a running receiver: the run cannot start, so the exit code is 1, stderr and the report say
// why, and the guest runs on.
func TestSendRefusedBeforeAnythingMovesExitsOne(t *testing.T) {
	if testing.Short() {
		t.Skip("real QEMU test skipped in -short mode")
	}
	bin := qemutest.Require(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "g.qmp")
	cmd := exec.Command(bin, "-accel", "tcg", "-machine", "pc", "-m", "32", "-nodefaults", "-display", "none",
		"-no-user-config", "-qmp", "unix:"+sock+",server=on,wait=off")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q := qemutest.DialWhenReady(ctx, t, sock)
	if err := q.SetCapabilities(ctx, map[string]bool{"xbzrle": true}); err != nil {
		t.Fatal(err)
	}
	q.Close() // QEMU serves one QMP client at a time

	keyFile := filepath.Join(dir, "key")
	if code, _, errs := run("keygen", "--out", keyFile); code != ExitOK {
		t.Fatalf("keygen: %d %s", code, errs)
	}
	key, err := secure.LoadKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	r, err := dest.NewReceiver(dest.Config{DataDir: filepath.Join(dir, "data"), Key: key})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { r.Serve(rctx, ln); close(served) }()
	defer func() { stop(); <-served }()

	reportFile := filepath.Join(dir, "report.json")
	code, _, errs := run("send", "--vms", "g="+sock, "--targets", ln.Addr().String(), "--key-file", keyFile,
		"--report", reportFile, "--quiet")
	if code != ExitError || !strings.Contains(errs, "no VM could be migrated") || !strings.Contains(errs, "xbzrle") {
		t.Fatalf("send: exit %d, want %d:\n%s", code, ExitError, errs)
	}
	var rep struct {
		VMs []struct {
			Status string `json:"status"`
			Error  string `json:"error"`
		} `json:"vms"`
	}
	if err := json.Unmarshal(qemutest.ReadFile(t, reportFile), &rep); err != nil || len(rep.VMs) != 1 ||
		rep.VMs[0].Status != "rolled_back" || !strings.Contains(rep.VMs[0].Error, "xbzrle") {
		t.Fatalf("report: %+v, %v", rep, err)
	}
	q = qemutest.DialWhenReady(ctx, t, sock)
	defer q.Close()
	if s, err := q.Status(ctx); err != nil || s != qmp.RunStateRunning {
		t.Fatalf("the guest is %q after the refusal: %v", s, err)
	}
}
