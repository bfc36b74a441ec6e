package bench

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/bench/fixture"
	"github.com/vmscatter/vmscatter/bench/guest/guestlog"
	"github.com/vmscatter/vmscatter/qemu"
)

// TestScatterGuestsWithSharedDisks moves guests whose qcow2 disks live on the lab's shared storage through vmscatter
// to two targets. Each guest writes blocks of its disk with O_DIRECT and fdatasync and reads them back, with the
// generation it last wrote to each block kept in its memory: on its target it must run from the same image, keep
// verifying its memory and its disk (every block holding what the guest last wrote, at the source or since), and its
// destination QEMU must be the one holding the image's write lock, the source QEMU gone.
func TestScatterGuestsWithSharedDisks(t *testing.T) {
	requireLab(t)
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (qemu-utils; make deps installs it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	c := newCluster(t, ctx, ClusterConfig{Targets: 2, TargetCapacity: "200M", Disks: true})
	wl := workload
	wl.DiskBlocks, wl.DiskRate, wl.DiskVPeriod = 128, 50, time.Second
	guests, err := c.StartGuests(ctx, "disk", 2, fixture.GuestOptions{MemoryMiB: 128, Workload: wl})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range guests {
		if s := waitDiskPasses(t, ctx, g.SerialPath, 1); s.Last.DiskWrites == 0 {
			t.Fatalf("%s writes nothing to its disk: %+v", g.Name, s.Last)
		}
		// The running source holds its image: another opener is refused.
		wantWriteLocked(t, ctx, filepath.Join(c.SharedDir(), g.Name+".qcow2"))
	}

	res, err := c.Send(ctx, guests, "--parallel", "2")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("send stderr:\n%s", res.Stderr)
	if res.Exit != 0 {
		t.Fatalf("exit %d", res.Exit)
	}
	used := map[string]bool{}
	for _, v := range res.Report.VMs {
		if v.Status != "migrated" {
			t.Fatalf("%s: %s: %s", v.Name, v.Status, v.Error)
		}
		used[v.Target] = true
	}
	if len(used) != 2 {
		t.Errorf("placement used %d targets, want 2 (capacity 200M each)", len(used))
	}
	for _, g := range guests {
		select {
		case <-g.Done():
		case <-time.After(20 * time.Second):
			t.Errorf("source QEMU of %s still runs after its migration", g.Name)
		}
	}
	for _, g := range guests {
		src := summarize(t, g.SerialPath)
		if len(src.Bad) > 0 {
			t.Errorf("%s found corruption at the source: %+v", g.Name, src.Bad[0])
		}
		var target string
		for _, v := range res.Report.VMs {
			if v.Name == g.Name {
				target = v.Target
			}
		}
		dir := c.DestinationDir(c.TargetIndex(target), g.Name)
		if st, err := qmpStatus(ctx, filepath.Join(dir, "qmp.sock")); st != "running" {
			t.Errorf("%s on %s: %q, %v; want running", g.Name, target, st, err)
			continue
		}
		// Two full passes over the disk at the target, each block checked against the generation the guest wrote
		// last, most of them at the source.
		dst := waitDiskPasses(t, ctx, filepath.Join(dir, "serial.log"), 2)
		waitOK(t, ctx, filepath.Join(dir, "serial.log"), 10)
		if dst.First.DiskWrites < src.Last.DiskWrites {
			t.Errorf("%s: %d disk writes at the target's first line, %d at the source's last: the counters did not migrate",
				g.Name, dst.First.DiskWrites, src.Last.DiskWrites)
		}
		t.Logf("%s: %d disk writes at the source, %d by the last line at the target, %d passes there",
			g.Name, src.Last.DiskWrites, dst.Last.DiskWrites, dst.Last.DiskPass-dst.First.DiskPass)

		// The destination runs from the source's image, at the same path, and holds its write lock.
		img := filepath.Join(c.SharedDir(), g.Name+".qcow2")
		pid := destinationPID(t, dir)
		argv, err := qemu.ReadCommandLine(pid)
		if err != nil {
			t.Fatal(err)
		}
		disks, err := qemu.DiskImages(argv)
		if err != nil || len(disks) != 1 || disks[0].Path != img {
			t.Errorf("%s: the destination's disks are %+v (%v), want %s", g.Name, disks, err, img)
		}
		if !holdsOpen(pid, img) {
			t.Errorf("%s: the destination QEMU (pid %d) does not hold %s open", g.Name, pid, img)
		}
		wantWriteLocked(t, ctx, img)
	}
}

// waitDiskPasses waits until a console log shows n full passes over the guest's disk since its first progress line,
// and no BAD line, or fails the test with what it saw.
func waitDiskPasses(t *testing.T, ctx context.Context, serial string, n uint64) guestlog.Summary {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		s := summarize(t, serial)
		if len(s.Bad) > 0 {
			t.Fatalf("%s: the guest found corruption: %+v (%d BAD lines)", serial, s.Bad[0], len(s.Bad))
		}
		if s.OKs > 0 && !s.Last.Disk {
			t.Fatalf("%s: the guest reports no disk: %+v", serial, s.Last)
		}
		if s.OKs > 0 && s.Last.DiskPass >= s.First.DiskPass+n {
			return s
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			b, _ := os.ReadFile(serial)
			t.Fatalf("%s: %d disk passes since the first line, want %d; log tail:\n%s", serial,
				s.Last.DiskPass-s.First.DiskPass, n, tail(b, 800))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func summarize(t *testing.T, serial string) guestlog.Summary {
	t.Helper()
	b, _ := os.ReadFile(serial)
	s, err := guestlog.Summarize(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// wantWriteLocked checks that some QEMU holds img's write lock: qemu-img, which asks for a shared one, is refused.
func wantWriteLocked(t *testing.T, ctx context.Context, img string) {
	t.Helper()
	out, err := exec.CommandContext(ctx, "qemu-img", "info", img).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `Failed to get shared "write" lock`) {
		t.Errorf("qemu-img info %s: %v: %s; want it refused for the running QEMU's write lock", img, err, out)
	}
}

func destinationPID(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "qemu.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// holdsOpen reports whether process pid has path open.
func holdsOpen(pid int, path string) bool {
	fds, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "fd", "*"))
	return slices.ContainsFunc(fds, func(fd string) bool {
		l, err := os.Readlink(fd)
		return err == nil && l == path
	})
}
