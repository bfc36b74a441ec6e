package qemu

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/qemu/qemutest"
	"github.com/vmscatter/vmscatter/qemu/qmp"
)

// TestImageLockingAcrossMigration records what QEMU 7.2's image locking does with two QEMUs on one qcow2 image on
// one kernel (OFD locks on bytes 100+ of the file, which every process on the host sees: shared storage as the lab
// has it, and as NFSv4 or a cluster file system with working locks has it across hosts):
//
//   - a second QEMU that opens the image the ordinary way is refused: `Failed to get "write" lock`;
//   - a destination started with -incoming defer opens it inactive and takes no lock, so the receiver can launch it
//     while the source runs;
//   - with late-block-activate on the destination, the loaded, paused destination still holds no lock (the source,
//     inactive after the migration, keeps only a shared read lock): the source can be resumed (rollback) while the
//     destination is alive; once the destination is `cont`ed it takes the write lock, and the source's `cont` is
//     refused: the lock is a second guard against running the VM twice;
//   - without late-block-activate the destination takes the write lock when the load completes, paused, and a
//     rollback's `cont` of the source fails until the destination is gone.
func TestImageLockingAcrossMigration(t *testing.T) {
	bin := qemutest.Require(t)
	requireQemuImg(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	drive := []string{"-drive", "file=" + img + ",format=qcow2,if=none,id=disk0,cache=writeback",
		"-device", "virtio-blk-pci,drive=disk0"}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := 0
	start := func(extra ...string) (*qmp.Client, *exec.Cmd) {
		t.Helper()
		n++
		sock := filepath.Join(dir, "q"+string(rune('0'+n))+".sock")
		args := append([]string{"-accel", "tcg", "-machine", "pc", "-m", "32", "-nodefaults", "-display", "none",
			"-no-user-config", "-qmp", "unix:" + sock + ",server=on,wait=off"}, drive...)
		cmd := exec.Command(bin, append(args, extra...)...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		q := qemutest.DialWhenReady(ctx, t, sock)
		t.Cleanup(func() { q.Close() })
		return q, cmd
	}
	wantLockError := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), `Failed to get "write" lock`) {
			t.Fatalf("%s: %v, want QEMU's write-lock refusal", what, err)
		}
	}
	// migrate moves src into a new destination and waits until both are done, the destination paused (-S).
	migrate := func(src *qmp.Client, late bool) (*qmp.Client, *exec.Cmd) {
		t.Helper()
		dst, cmd := start("-S", "-incoming", "defer")
		if err := dst.SetCapabilities(ctx, map[string]bool{"late-block-activate": late}); err != nil {
			t.Fatal(err)
		}
		sock := filepath.Join(dir, "mig.sock")
		if err := dst.MigrateIncoming(ctx, "unix:"+sock); err != nil {
			t.Fatal(err)
		}
		if err := src.Migrate(ctx, "unix:"+sock); err != nil {
			t.Fatal(err)
		}
		for _, q := range []*qmp.Client{src, dst} {
			for {
				mi, err := q.QueryMigrate(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if mi.Status == qmp.MigrationCompleted {
					break
				}
				if mi.Status.Finished() || ctx.Err() != nil {
					t.Fatalf("migration %s: %s", mi.Status, mi.ErrorDesc)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		return dst, cmd
	}

	src, srcCmd := start()
	// A second QEMU on the same image, started the ordinary way, is refused at once.
	out, err := exec.CommandContext(ctx, bin, append([]string{"-accel", "tcg", "-machine", "pc", "-m", "32", "-nodefaults",
		"-display", "none", "-no-user-config", "-S"}, drive...)...).CombinedOutput()
	if err != nil {
		err = fmt.Errorf("%v: %s", err, out)
	}
	wantLockError("a second ordinary QEMU", err)

	// late-block-activate: the loaded destination holds no lock; the source resumes (a rollback).
	dst, dstCmd := migrate(src, true)
	if err := src.Cont(ctx); err != nil {
		t.Fatalf("rollback with late-block-activate: the source's cont: %v", err)
	}
	wantLockError("the destination's cont after the source resumed", dst.Cont(ctx))
	dstCmd.Process.Kill()
	dstCmd.Wait()

	// late-block-activate, then START: the destination takes the lock, the source can no longer run.
	dst, _ = migrate(src, true)
	if err := dst.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	wantLockError("the source's cont after the destination ran", src.Cont(ctx))
	srcCmd.Process.Kill()
	srcCmd.Wait()

	// Without late-block-activate, the paused destination holds the lock as soon as it has loaded.
	src = dst
	dst2, _ := migrate(src, false)
	wantLockError("rollback without late-block-activate: the source's cont", src.Cont(ctx))
	if st, err := dst2.Status(ctx); err != nil || st != qmp.RunStatePaused {
		t.Fatalf("destination %s, %v", st, err)
	}
}
