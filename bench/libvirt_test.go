package bench

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/bench/guest/guestlog"
	"github.com/vmscatter/vmscatter/bench/lab"
	"github.com/vmscatter/vmscatter/bench/virtlab"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/virt"
)

// The libvirt lab (docs/libvirt.md): one real libvirtd per lab host (bench/virtlab), fixture guests defined as
// libvirt domains with a qcow2 disk on the lab's shared storage, and vmscatter as the data path under libvirt's own
// migration (send --domains).

func newLibvirtRig(t *testing.T, ctx context.Context, targets ...string) *LibvirtRig {
	t.Helper()
	requireLab(t)
	if err := virtlab.TestsWanted(); err != nil {
		t.Skipf("libvirt lab: %v", err)
	}
	r, err := NewLibvirtRig(ctx, t.TempDir(), vmscatterBin, targets...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, h := range r.Targets {
				b, _ := os.ReadFile(r.ReceiverLog(h.Name))
				t.Logf("receiver %s log:\n%s", h.Name, tail(b, 3000))
			}
		}
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	return r
}

func libvirtSend(t *testing.T, ctx context.Context, r *LibvirtRig, domains []string, extra ...string) *LibvirtSend {
	t.Helper()
	res, err := r.Send(ctx, domains, extra...)
	t.Logf("send:\n%s", res.Output)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// keepsVerifying waits until the guest's console (appended to by each QEMU in turn) shows n more progress lines
// than it had at from, and no BAD line.
func keepsVerifying(t *testing.T, ctx context.Context, g *virtlab.Guest, from, n int) {
	t.Helper()
	if _, err := waitConsole(ctx, g.Serial, from+n, 60*time.Second); err != nil {
		b, _ := os.ReadFile(g.Serial)
		t.Fatalf("guest %s: %v; console tail:\n%s", g.Name, err, tail(b, 800))
	}
}

func okLines(t *testing.T, g *virtlab.Guest) int {
	t.Helper()
	b, _ := os.ReadFile(g.Serial)
	s, _ := guestlog.Summarize(bytes.NewReader(b))
	if len(s.Bad) > 0 {
		t.Fatalf("guest %s found corrupted memory or disk: %+v", g.Name, s.Bad[0])
	}
	return s.OKs
}

// TestLibvirtScatter is issue #18's acceptance test: three domains defined in the source host's libvirtd, each with
// a qcow2 disk on the lab's shared storage, scattered to two target hosts through vmscatter under libvirt's own
// migration. Each ends defined and running in its target's libvirtd and undefined on the source, its guest keeps
// verifying its memory and disk, and references carried part of the stream.
func TestLibvirtScatter(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	r := newLibvirtRig(t, ctx, "a", "b")
	names := []string{"lv1", "lv2", "lv3"}
	guests, err := r.BootDomains(ctx, names, virtlab.GuestOptions{Workload: LibvirtWorkload})
	if err != nil {
		t.Fatal(err)
	}
	before := map[string]int{}
	for _, g := range guests {
		before[g.Name] = okLines(t, g)
	}
	a, b := r.Targets[0], r.Targets[1]
	res := libvirtSend(t, ctx, r, names, "--transport", "unicast", "--placement", "lv1="+r.Addr(a)+",lv2="+r.Addr(b))
	if res.Code != 0 {
		t.Fatalf("send exited %d", res.Code)
	}
	rep := res.Report
	var refs int64
	for _, v := range rep.VMs {
		if v.Status != report.StatusMigrated || v.LibvirtJob != "completed" {
			t.Errorf("%s: status %q, libvirt job %q, error %q", v.Name, v.Status, v.LibvirtJob, v.Error)
		}
		refs += v.Pages.Referenced
		t.Logf("%s → %s: %d pages (%d zero, %d referenced, %d literal), %d bytes on the wire, libvirt's downtime %d ms",
			v.Name, v.Target, v.Pages.Total, v.Pages.Zero, v.Pages.Referenced, v.Pages.Literal, v.WireBytes, v.DowntimeMS)
	}
	t.Logf("totals: %d bytes on the source link, %d on the wire, prime %d", rep.Totals.SourceLinkBytes, rep.Totals.WireBytes, rep.Totals.PrimeBytes)
	if refs == 0 {
		t.Error("no page travelled as a reference")
	}
	for _, v := range rep.VMs {
		th := r.TargetOf(v.Target)
		if th == nil {
			t.Fatalf("%s: target %q is not a lab host", v.Name, v.Target)
		}
		if st, err := th.Virt.State(ctx, v.Name); err != nil || st != virt.StateRunning {
			t.Errorf("%s on %s: %q, %v", v.Name, th.Name, st, err)
		}
		if p, err := th.Virt.Persistent(ctx, v.Name); err != nil || !p {
			t.Errorf("%s on %s: persistent %v, %v", v.Name, th.Name, p, err)
		}
		if ok, err := r.Src.Virt.Exists(ctx, v.Name); ok || err != nil {
			t.Errorf("%s still known to the source's libvirtd (%v)", v.Name, err)
		}
	}
	for _, g := range guests {
		keepsVerifying(t, ctx, g, before[g.Name], 30)
	}
}

// TestLibvirtReceiverKilledMidStream kills the target's receiver while a domain's stream flows: the source QEMU's
// migration fails with the stream, libvirt rolls the domain back to the source, where it keeps running (defined
// there, not on the target), and send reports it rolled back with libvirt's failed job (exit 3).
func TestLibvirtReceiverKilledMidStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	r := newLibvirtRig(t, ctx, "a")
	guests, err := r.BootDomains(ctx, []string{"lvf"}, virtlab.GuestOptions{Workload: LibvirtWorkload})
	if err != nil {
		t.Fatal(err)
	}
	g := guests[0]
	// A slow source link keeps the stream flowing long enough to cut it: every page literal, 100 Mbit/s.
	if err := r.Src.Shape(lab.Shaping{Rate: 100e6}); err != nil {
		t.Fatal(err)
	}
	a := r.Targets[0]
	killed := make(chan error, 1)
	go func() {
		for {
			ji, err := r.Src.Virt.JobInfo(ctx, g.Name, false)
			if err == nil && ji.DataProcessed > 16<<20 {
				killed <- r.KillReceiver(a.Name)
				return
			}
			select {
			case <-ctx.Done():
				killed <- ctx.Err()
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	res := libvirtSend(t, ctx, r, []string{g.Name}, "--no-dedup")
	if err := <-killed; err != nil {
		t.Fatalf("killing the receiver: %v", err)
	}
	if res.Code != 3 {
		t.Errorf("send exited %d, want 3 (rolled back)", res.Code)
	}
	rep := res.Report
	if len(rep.VMs) != 1 || rep.VMs[0].Status != report.StatusRolledBack || rep.VMs[0].LibvirtJob != "failed" {
		t.Fatalf("report: %+v", rep.VMs)
	}
	t.Logf("%s: %s", g.Name, rep.VMs[0].Error)
	if st, err := r.Src.Virt.State(ctx, g.Name); err != nil || st != virt.StateRunning {
		t.Fatalf("on the source after the rollback: %q, %v", st, err)
	}
	if p, err := r.Src.Virt.Persistent(ctx, g.Name); err != nil || !p {
		t.Errorf("the source's definition: persistent %v, %v", p, err)
	}
	if ok, err := a.Virt.Exists(ctx, g.Name); ok || err != nil {
		t.Errorf("the target's libvirtd still knows %s (%v)", g.Name, err)
	}
	keepsVerifying(t, ctx, g, okLines(t, g), 30)
}

// TestLibvirtBench runs the libvirt mode of the bench once, small: two domains to one target, vmscatter under
// libvirt against libvirt's own migration of the same domains; vmscatter's source link must carry fewer bytes.
func TestLibvirtBench(t *testing.T) {
	requireLab(t)
	if err := virtlab.TestsWanted(); err != nil {
		t.Skipf("libvirt lab: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	res, err := RunLibvirtCompare(ctx, LibvirtCompareConfig{Bin: vmscatterBin, Dir: t.TempDir(), Domains: 2, Targets: 1,
		Settle: 2 * time.Second, Out: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + res.Markdown())
	if res.VmscatterLinkBytes == 0 || res.VmscatterLinkBytes >= res.NativeLinkBytes {
		t.Errorf("vmscatter %d bytes on the source link, libvirt's own %d", res.VmscatterLinkBytes, res.NativeLinkBytes)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}
