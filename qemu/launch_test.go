package qemu

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/qemu/qemutest"
)

func TestRewriteCommandLine(t *testing.T) {
	src := []string{"/usr/bin/qemu-system-x86_64", "-name", "web1", "-machine", "pc,accel=kvm", "-m", "128",
		"-qmp", "unix:/run/qemu/web1.qmp,server=on,wait=off", "-monitor", "unix:/run/qemu/web1.mon,server,nowait",
		"-serial", "file:/var/log/web1.serial", "-pidfile", "/run/qemu/web1.pid", "-daemonize",
		"-chardev", "socket,id=c1,path=/run/qemu/agent.sock,server=on,wait=off",
		"-chardev", "stdio,id=con0,signal=off", "-incoming", "tcp:0:4444",
		"--drive", "file=/shared/web1.qcow2,if=virtio", "-D", "/tmp/web1.log", "-nographic", "-S"}
	got, err := RewriteCommandLine(src, "/data/web1")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/usr/bin/qemu-system-x86_64", "-name", "web1", "-machine", "pc,accel=kvm", "-m", "128",
		"-qmp", "unix:/data/web1/qmp.sock,server=on,wait=off", "-monitor", "unix:/data/web1/qmp-1.sock,server,nowait",
		"-serial", "file:/data/web1/serial.log", "-pidfile", "/data/web1/qemu.pid",
		"-chardev", "socket,id=c1,path=/data/web1/qmp-2.sock,server=on,wait=off",
		"-chardev", "file,id=con0,path=/data/web1/serial-2.log",
		"-drive", "file=/shared/web1.qcow2,if=virtio", "-D", "/data/web1/qemu.log", "-display", "none", "-S",
		"-incoming", "defer"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("rewrite:\n got %q\nwant %q", got, want)
	}
}

func TestRewriteAddsQMPAndRefusesNonQEMU(t *testing.T) {
	got, err := RewriteCommandLine([]string{"qemu-system-x86_64", "-m", "64"}, "/d")
	if err != nil {
		t.Fatal(err)
	}
	if s := strings.Join(got, " "); !strings.Contains(s, "-qmp unix:/d/qmp.sock,server=on,wait=off") || !strings.HasSuffix(s, "-incoming defer") {
		t.Fatalf("got %q", got)
	}
	if _, err := RewriteCommandLine([]string{"/bin/sh", "-c", "echo"}, "/d"); err == nil {
		t.Fatal("a non-QEMU binary was accepted")
	}
	if _, err := RewriteCommandLine([]string{"qemu-system-x86_64", "-m"}, "/d"); err == nil {
		t.Fatal("a dangling option was accepted")
	}
}

func TestParseRAMBlocks(t *testing.T) {
	out := `              Block Name    PSize              Offset               Used              Total
                  pc.ram    4 KiB  0x0000000000000000 0x0000000004000000 0x0000000004000000
                 pc.bios    4 KiB  0x0000000004000000 0x0000000000040000 0x0000000000040000
`
	b, err := parseRAMBlocks(out)
	if err != nil || len(b) != 2 || b[0].Name != "pc.ram" || b[0].Used != 64<<20 || b[0].PageSize != 4096 || b[1].Offset != 64<<20 {
		t.Fatalf("got %+v, %v", b, err)
	}
	if _, err := parseRAMBlocks("nonsense"); err == nil {
		t.Fatal("nonsense parsed")
	}
}

// TestGuestRAMAndCommandLineOfRealQEMU reads a live guest's RAM both ways (process_vm_readv, and /proc/PID/mem, its
// fallback) and checks each against QEMU's own pmemsave of the same paused guest, and reads the process's command
// line back.
func TestGuestRAMAndCommandLineOfRealQEMU(t *testing.T) {
	bin := qemutest.Require(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "qmp.sock")
	args := []string{"-accel", "tcg", "-machine", "pc", "-m", "32", "-nodefaults", "-display", "none", "-no-user-config",
		"-qmp", "unix:" + sock + ",server=on,wait=off"}
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q := qemutest.DialWhenReady(ctx, t, sock)
	defer q.Close()
	pid, err := q.PeerPID()
	if err != nil {
		t.Fatal(err)
	}
	argv, err := ReadCommandLine(pid)
	if err != nil || !reflect.DeepEqual(argv[1:], args) {
		t.Fatalf("cmdline = %q, %v", argv, err)
	}
	time.Sleep(500 * time.Millisecond) // let SeaBIOS write something into RAM
	if err := q.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	ram, err := OpenGuestRAM(ctx, q, pid)
	if err != nil {
		t.Fatal(err)
	}
	defer ram.Close()
	if ram.Block != "pc.ram" || ram.Size != 32<<20 {
		t.Fatalf("ram = %s %d", ram.Block, ram.Size)
	}
	dump := filepath.Join(dir, "mem.bin")
	if err := q.Execute(ctx, "pmemsave", map[string]any{"val": 0, "size": 1 << 20, "filename": dump}, nil); err != nil {
		t.Fatal(err)
	}
	want := qemutest.ReadFile(t, dump)
	got := make([]byte, 1<<20)
	if _, err := ram.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("process_vm_readv read differs from pmemsave")
	}
	if !ram.vmReadv.Load() {
		t.Fatal("the read did not go through process_vm_readv")
	}
	if bytes.Count(got, []byte{0}) == len(got) {
		t.Fatal("guest RAM is all zero; the comparison proves nothing")
	}
	// Across the block's end: the bytes within it, then EOF.
	tail := make([]byte, 8192)
	if n, err := ram.ReadAt(tail, ram.Size-4096); n != 4096 || !errors.Is(err, io.EOF) {
		t.Fatalf("read across the end: %d, %v", n, err)
	}
	ram.vmReadv.Store(false) // the fallback
	clear(got)
	if n, err := ram.ReadAt(tail, ram.Size-4096); n != 4096 || !errors.Is(err, io.EOF) {
		t.Fatalf("read across the end through /proc/PID/mem: %d, %v", n, err)
	}
	if _, err := ram.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("/proc/PID/mem read differs from pmemsave")
	}
}

func TestBootFiles(t *testing.T) {
	argv := []string{"qemu-system-x86_64", "-append", "-kernel", "-m", "128", "--kernel", "/boot/vmlinuz",
		"-initrd", "/boot/initrd.img", "-nographic", "-name", "-initrd", "-device", "loader,addr=0x200000,file=/fw/blob,force-raw=on",
		"-device", "virtio-rng-pci,file=/not/a/loader"}
	got := BootFiles(argv)
	if len(got) != 3 || got[0] != "/boot/vmlinuz" || got[1] != "/boot/initrd.img" || got[2] != "/fw/blob" {
		t.Errorf("BootFiles = %q", got)
	}
	if got := BootFiles([]string{"qemu-system-x86_64", "-kernel"}); len(got) != 0 {
		t.Errorf("a -kernel without a value: %q", got)
	}
}
