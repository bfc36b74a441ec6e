package qemu

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/qemu/qemutest"
	"github.com/vmscatter/vmscatter/qemu/qmp"
)

var testPolicy = Policy{VMDir: "/var/lib/vmscatter/web1", Roots: []string{"/var/lib/vmscatter", "/srv/images"}}

const bin = "/usr/bin/qemu-system-x86_64"

// Every hostile example of issue #16 is refused, with an error that names the option.
func TestPolicyRefusesHostileOptions(t *testing.T) {
	cases := []struct {
		name   string
		args   []string
		option string // the option the error must name
		reason string // a word of the reason
	}{
		{"tap script", []string{"-netdev", "tap,id=n0,script=/tmp/evil.sh"}, "-netdev", "script="},
		{"tap downscript", []string{"-netdev", "tap,id=n0,script=no,downscript=/bin/sh"}, "-netdev", "downscript="},
		{"nic script", []string{"-nic", "tap,script=/etc/qemu-ifup"}, "-nic", "script="},
		{"json tap script", []string{"-netdev", `{"type":"tap","id":"n0","script":"/x"}`}, "-netdev", "script="},
		{"bridge helper", []string{"-netdev", "bridge,id=n0,br=br0"}, "-netdev", "bridge"},
		{"user guestfwd", []string{"-netdev", "user,id=n0,guestfwd=tcp:10.0.2.100:1-cmd:/bin/sh"}, "-netdev", "guestfwd"},
		{"user smb", []string{"-netdev", "user,id=n0,smb=/"}, "-netdev", "smb"},
		{"socket netdev", []string{"-netdev", "socket,id=n0,listen=:1234"}, "-netdev", "socket"},
		{"mem-path outside", []string{"-object", "memory-backend-file,id=m0,size=1G,mem-path=/etc/shadow,share=on"}, "-object", "mem-path="},
		{"legacy mem-path", []string{"-mem-path", "/root"}, "-mem-path", "outside"},
		{"plugin", []string{"-plugin", "/tmp/evil.so"}, "-plugin", "shared objects"},
		{"readconfig", []string{"-readconfig", "/etc/qemu.conf"}, "-readconfig", "configuration"},
		{"fw_cfg file", []string{"-fw_cfg", "name=opt/x,file=/etc/shadow"}, "-fw_cfg", "outside"},
		{"loader file", []string{"-device", "loader,addr=0x1000,file=/root/.ssh/id_rsa"}, "-device", "outside"},
		{"loader file json", []string{"-device", `{"driver":"loader","file":"/etc/shadow","addr":4096}`}, "-device", "outside"},
		{"kernel outside", []string{"-kernel", "/etc/shadow"}, "-kernel", "outside"},
		{"initrd relative", []string{"-initrd", "initrd.img"}, "-initrd", "absolute"},
		{"romfile", []string{"-device", "virtio-net-pci,romfile=/etc/shadow"}, "-device", "romfile="},
		{"global romfile", []string{"-global", "e1000.romfile=/etc/shadow"}, "-global", "romfile="},
		{"tcp chardev", []string{"-chardev", "socket,id=c0,host=0.0.0.0,port=4444,server=on,wait=off"}, "-chardev", "TCP"},
		{"udp chardev", []string{"-chardev", "udp,id=c0,host=1.2.3.4,port=5"}, "-chardev", "UDP"},
		{"websocket chardev", []string{"-chardev", "socket,id=c0,path=/var/lib/vmscatter/web1/x.sock,websocket=on"}, "-chardev", "websocket"},
		{"telnet chardev", []string{"-chardev", "socket,id=c0,path=/var/lib/vmscatter/web1/x.sock,telnet=on"}, "-chardev", "telnet"},
		{"tcp monitor", []string{"-monitor", "tcp:0.0.0.0:4444,server,nowait"}, "-monitor", "TCP"},
		{"telnet monitor", []string{"-monitor", "telnet:127.0.0.1:4444,server,nowait"}, "-monitor", "telnet"},
		{"tcp qmp", []string{"-qmp", "tcp:0:4444,server=on"}, "-qmp", "TCP"},
		{"udp serial", []string{"-serial", "udp::4555@:4556"}, "-serial", "UDP"},
		{"unix socket elsewhere", []string{"-chardev", "socket,id=c0,path=/run/other.sock,server=on"}, "-chardev", "VM's directory"},
		{"chardev logfile", []string{"-chardev", "pty,id=c0,logfile=/etc/cron.d/x"}, "-chardev", "logfile="},
		{"serial file elsewhere", []string{"-serial", "file:/etc/cron.d/evil"}, "-serial", "VM's directory"},
		{"pidfile elsewhere", []string{"-pidfile", "/etc/passwd"}, "-pidfile", "VM's directory"},
		{"host serial device", []string{"-serial", "/dev/ttyS0"}, "-serial", "host serial"},
		{"chardev fd", []string{"-chardev", "socket,id=c0,fd=3,server=on"}, "-chardev", "fd="},
		{"tap fd", []string{"-netdev", "tap,id=n0,fd=25,vhost=on,vhostfd=27"}, "-netdev", "fd="},
		{"json tap fd", []string{"-netdev", `{"type":"tap","fd":"33","vhost":true,"vhostfd":"35","id":"hostnet0"}`}, "-netdev", "fd="},
		{"fdset drive", []string{"-drive", "file=/dev/fdset/2,if=virtio"}, "-drive", "descriptor"},
		{"add-fd", []string{"-add-fd", "fd=3,set=2"}, "-add-fd", "descriptors"},
		{"raw device drive", []string{"-drive", "file=/dev/sda,if=virtio,format=raw"}, "-drive", "raw host devices"},
		{"host_device driver", []string{"-drive", "driver=host_device,filename=/srv/images/x,if=virtio"}, "-drive", "raw host devices"},
		{"host_device blockdev", []string{"-blockdev", `{"driver":"host_device","filename":"/dev/sdb","node-name":"d0"}`}, "-blockdev", "raw host devices"},
		{"blockdev outside", []string{"-blockdev", `{"driver":"file","filename":"/etc/shadow","node-name":"d0"}`}, "-blockdev", "outside"},
		{"hda device", []string{"-hda", "/dev/nvme0n1"}, "-hda", "raw host devices"},
		{"vvfat", []string{"-drive", "file=fat:rw:/etc,if=virtio"}, "-drive", "protocol"},
		{"json protocol", []string{"-drive", `file=json:{"driver":"host_device"}`}, "-drive", "protocol"},
		{"drive outside", []string{"-drive", "file=/etc/shadow,if=virtio,format=raw"}, "-drive", "outside"},
		{"drive dotdot", []string{"-drive", "file=/srv/images/../../etc/shadow,if=virtio"}, "-drive", "outside"},
		{"vfio-pci", []string{"-device", "vfio-pci,host=0000:01:00.0"}, "-device", "passthrough"},
		{"usb-host", []string{"-device", "usb-host,hostbus=1,hostaddr=2"}, "-device", "passthrough"},
		{"scsi-generic", []string{"-device", "scsi-generic,drive=d0"}, "-device", "passthrough"},
		{"vhost-user", []string{"-device", "vhost-user-fs-pci,chardev=c0,tag=x"}, "-device", "vhost-user"},
		{"input-linux", []string{"-object", "input-linux,id=kbd,evdev=/dev/input/event0"}, "-object", "input"},
		{"rng file", []string{"-object", "rng-random,id=r0,filename=/dev/sda"}, "-object", "filename="},
		{"unknown object", []string{"-object", "colo-compare,id=c"}, "-object", "not allowed"},
		{"gdb", []string{"-gdb", "tcp::1234"}, "-gdb", "debugger"},
		{"gdb flag", []string{"-s"}, "-s", "debugger"},
		{"vnc everywhere", []string{"-vnc", ":0"}, "-vnc", "loopback"},
		{"vnc websocket", []string{"-vnc", "127.0.0.1:0,websocket=5700"}, "-vnc", "websocket"},
		{"spice everywhere", []string{"-spice", "port=5900,disable-ticketing=on"}, "-spice", "loopback"},
		{"audio host", []string{"-audiodev", "alsa,id=a0"}, "-audiodev", "sound"},
		{"dumpdtb", []string{"-machine", "virt,dumpdtb=/etc/x"}, "-machine", "dumpdtb"},
		{"set", []string{"-set", "drive.d0.file=/etc/shadow"}, "-set", "after"},
		{"unknown option", []string{"-frobnicate", "x"}, "-frobnicate", "allowed"},
		{"bare argument", []string{"/dev/sda"}, "/dev/sda", "bare"},
		{"incoming tcp", []string{"-incoming", "tcp:0:4444"}, "-incoming", "defer"},
		{"tpm passthrough", []string{"-tpmdev", "passthrough,id=t0,path=/dev/tpm0"}, "-tpmdev", "TPM"},
		{"virtfs root", []string{"-virtfs", "local,path=/,mount_tag=root,security_model=passthrough"}, "-virtfs", "outside"},
		{"virtfs proxy", []string{"-fsdev", "proxy,id=f0,sock_fd=3"}, "-fsdev", "fd"},
		{"semihosting", []string{"-semihosting"}, "-semihosting", "host files"},
		{"trace file", []string{"-trace", "enable=*,file=/etc/x"}, "-trace", "file="},
		{"acpitable", []string{"-acpitable", "sig=SSDT,file=/etc/shadow"}, "-acpitable", "file="},
		{"boot splash", []string{"-boot", "menu=on,splash=/etc/shadow"}, "-boot", "splash="},
		{"bios elsewhere", []string{"-bios", "/etc/shadow"}, "-bios", "firmware"},
		{"icount record", []string{"-icount", "shift=auto,rr=record,rrfile=/etc/x"}, "-icount", "rr="},
		{"secret file", []string{"-object", "secret,id=s0,file=/etc/shadow"}, "-object", "outside"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			argv := append([]string{bin, "-m", "128"}, tc.args...)
			_, err := ApplyPolicy(argv, testPolicy)
			var pe *PolicyError
			if !errors.As(err, &pe) || !errors.Is(err, ErrPolicy) {
				t.Fatalf("accepted or untyped: %v", err)
			}
			if pe.Option != tc.option || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("error %q: want option %s and %q in the reason", err, tc.option, tc.reason)
			}
		})
	}
}

// Command lines as libvirt and people write them, under the allowed roots, pass, with the receiver's sandbox added
// and tap devices told to run no script.
func TestPolicyAllowsLegitimateCommandLines(t *testing.T) {
	libvirt := []string{bin, "-name", "guest=vm1,debug-threads=on", "-S",
		"-object", `{"qom-type":"secret","id":"masterKey0","format":"raw","file":"/var/lib/vmscatter/web1/master-key.aes"}`,
		"-machine", "pc-q35-7.2,usb=off,vmport=off,dump-guest-core=off,memory-backend=pc.ram", "-accel", "kvm",
		"-cpu", "host,migratable=on", "-m", "2048",
		"-object", `{"qom-type":"memory-backend-ram","id":"pc.ram","size":2147483648}`,
		"-overcommit", "mem-lock=off", "-smp", "2,sockets=2,cores=1,threads=1", "-uuid", "c7a5fdbd-edaf-9455-926a-d65c16db1809",
		"-no-user-config", "-nodefaults",
		"-chardev", "socket,id=charmonitor,path=/var/lib/vmscatter/web1/qmp.sock,server=on,wait=off",
		"-mon", "chardev=charmonitor,id=monitor,mode=control", "-rtc", "base=utc,driftfix=slew",
		"-global", "kvm-pit.lost_tick_policy=delay", "-no-hpet", "-no-shutdown", "-global", "ICH9-LPC.disable_s3=1",
		"-boot", "strict=on",
		"-device", `{"driver":"pcie-root-port","port":16,"chassis":1,"id":"pci.1","bus":"pcie.0","multifunction":true,"addr":"0x2"}`,
		"-blockdev", `{"driver":"file","filename":"/srv/images/vm1.qcow2","node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"}`,
		"-blockdev", `{"node-name":"libvirt-1-format","read-only":false,"driver":"qcow2","file":"libvirt-1-storage","backing":null}`,
		"-device", `{"driver":"virtio-blk-pci","bus":"pci.3","addr":"0x0","drive":"libvirt-1-format","id":"virtio-disk0","bootindex":1}`,
		"-netdev", `{"type":"tap","ifname":"vnet0","vhost":true,"id":"hostnet0"}`,
		"-device", `{"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0","mac":"52:54:00:6b:3c:58","bus":"pci.1","addr":"0x0"}`,
		"-chardev", "pty,id=charserial0", "-device", `{"driver":"isa-serial","chardev":"charserial0","id":"serial0","index":0}`,
		"-audiodev", `{"id":"audio1","driver":"none"}`, "-vnc", "127.0.0.1:0,audiodev=audio1",
		"-device", `{"driver":"qxl-vga","id":"video0","max_outputs":1,"bus":"pcie.0","addr":"0x1"}`,
		"-sandbox", "on,obsolete=deny", "-msg", "timestamp=on", "-incoming", "defer"}
	plain := []string{bin, "-machine", "pc-i440fx-7.2,accel=tcg", "-m", "131064K", "-nodefaults", "-display", "none",
		"-kernel", "/srv/images/vmlinuz", "-initrd", "/srv/images/initrd.img", "-append", "console=ttyS0 root=/dev/vda",
		"-drive", "file=/srv/images/disk.qcow2,if=virtio,format=qcow2,cache=none",
		"-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd",
		"-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22", "-device", "virtio-net-pci,netdev=n0",
		"-netdev", "tap,id=n1,ifname=tap0,vhost=on", "-device", "e1000,netdev=n1,romfile=",
		"-nic", "user,model=virtio-net-pci",
		"-qmp", "unix:/var/lib/vmscatter/web1/qmp.sock,server=on,wait=off",
		"-serial", "file:/var/lib/vmscatter/web1/serial.log", "-pidfile", "/var/lib/vmscatter/web1/qemu.pid",
		"-chardev", "socket,id=c1,path=/var/lib/vmscatter/web1/qmp-2.sock,server=on,wait=off",
		"-device", "loader,addr=0x200000,file=/srv/images/blob.bin,force-raw=on",
		"-fw_cfg", "name=opt/vmscatter,string=hello", "-object", "rng-random,id=rng0,filename=/dev/urandom",
		"-device", "virtio-rng-pci,rng=rng0", "-object", "memory-backend-file,id=m1,size=64M,mem-path=/srv/images/hp,share=on",
		"-daemonize", "-S", "-incoming", "defer"}
	for name, argv := range map[string][]string{"libvirt": libvirt, "plain": plain} {
		t.Run(name, func(t *testing.T) {
			got, err := ApplyPolicy(argv, testPolicy)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got[:3], []string{bin, "-sandbox", Sandbox}) {
				t.Errorf("the receiver's sandbox does not lead: %q", got[:3])
			}
			if n := strings.Count(strings.Join(got, " "), "-sandbox"); n != 1 {
				t.Errorf("%d -sandbox options: the source's must be dropped", n)
			}
			if slices.Contains(got, "-daemonize") {
				t.Error("-daemonize kept")
			}
			for i, a := range got {
				if (a == "-netdev" || a == "-nic") && strings.Contains(got[i+1], "tap") &&
					(!strings.Contains(got[i+1], "script") || !strings.Contains(got[i+1], "no")) {
					t.Errorf("tap without script=no,downscript=no: %s", got[i+1])
				}
			}
		})
	}
	got, _ := ApplyPolicy(plain, testPolicy)
	if !slices.Contains(got, "tap,id=n1,ifname=tap0,vhost=on,script=no,downscript=no") {
		t.Errorf("tap rewritten as %q", got)
	}
	got, _ = ApplyPolicy(libvirt, testPolicy)
	if i := slices.Index(got, "-netdev"); i < 0 || got[i+1] != `{"downscript":"no","id":"hostnet0","ifname":"vnet0","script":"no","type":"tap","vhost":true}` {
		t.Errorf("JSON tap rewritten as %q", got[i+1])
	}
}

// A path under a root that is a symbolic link out of it does not pass; a root that is itself a link does.
func TestPolicyResolvesSymlinks(t *testing.T) {
	dir := t.TempDir()
	images := filepath.Join(dir, "images")
	if err := os.Mkdir(images, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(images, "passwd.img")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(images, "disk.img"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(images, link); err != nil {
		t.Fatal(err)
	}
	p := Policy{VMDir: filepath.Join(dir, "vm"), Roots: []string{link}}
	if _, err := ApplyPolicy([]string{bin, "-drive", "file=" + filepath.Join(link, "passwd.img")}, p); !errors.Is(err, ErrPolicy) {
		t.Errorf("a link out of the root passed: %v", err)
	}
	if _, err := ApplyPolicy([]string{bin, "-drive", "file=" + filepath.Join(link, "disk.img")}, p); err != nil {
		t.Errorf("a file under a linked root: %v", err)
	}
	if _, err := ApplyPolicy([]string{bin, "-drive", "file=" + filepath.Join(images, "disk.img")}, p); err != nil {
		t.Errorf("the same file by its resolved path: %v", err)
	}
}

func TestPolicyRunAs(t *testing.T) {
	p := testPolicy
	p.RunAs = "qemu"
	got, err := ApplyPolicy([]string{bin, "-m", "64", "-runas", "root", "-chroot", "/"}, p)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{bin, "-sandbox", SandboxRunAs, "-runas", "qemu", "-m", "64"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	p.RunWith = true
	got, _ = ApplyPolicy([]string{bin, "-run-with", "user=root"}, p)
	if want := []string{bin, "-sandbox", SandboxRunAs, "-run-with", "user=qemu"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	p.RunAs = "qemu,chroot=/"
	if _, err := ApplyPolicy([]string{bin}, p); err == nil {
		t.Error("a user name with a comma was accepted")
	}
}

func TestParseOpts(t *testing.T) {
	o, err := parseOpts("tap,id=n0,,x,script=a,,b,vhost", "type")
	if err != nil || o.implied != "tap" {
		t.Fatalf("%+v %v", o, err)
	}
	if v, _ := o.get("id"); v != "n0,x" {
		t.Errorf("id = %q", v)
	}
	if v, _ := o.get("vhost"); v != "on" {
		t.Errorf("bare key = %q", v)
	}
	if got := o.set("script", "no"); got != "tap,id=n0,,x,vhost=on,script=no" {
		t.Errorf("set: %q", got)
	}
	o, err = parseOpts(`{"driver":"x","file":{"filename":"/a","driver":"file"},"l":[1,"b"]}`, "driver")
	if err != nil || o.implied != "x" {
		t.Fatalf("%+v %v", o, err)
	}
	if v, _ := o.get("file.filename"); v != "/a" {
		t.Errorf("nested = %q", v)
	}
	if v, _ := o.get("l.1"); v != "b" {
		t.Errorf("array = %q", v)
	}
	if _, err := parseOpts(`{"driver":`, ""); err == nil {
		t.Error("broken JSON parsed")
	}
}

// With RunAs, QEMU 7.2 starts under the sandbox, drops to the user, and can still open its incoming socket in the
// VM's directory, which PrepareVMDir gave to that user.
func TestPolicyRunAsRealQEMU(t *testing.T) {
	qbin := qemutest.Require(t)
	if os.Getuid() != 0 {
		t.Skip("dropping to another user needs root")
	}
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} { // the user must reach the VM's directory
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := Policy{VMDir: filepath.Join(dir, "vm"), RunAs: "nobody"}
	argv, err := RewriteCommandLine([]string{qbin, "-accel", "tcg", "-machine", "pc", "-m", "32", "-nodefaults", "-display", "none"}, p.VMDir)
	if err != nil {
		t.Fatal(err)
	}
	if argv, err = ApplyPolicy(argv, p); err != nil {
		t.Fatal(err)
	}
	if err := PrepareVMDir(p); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dst, err := LaunchDestination(ctx, argv, PathsIn(p.VMDir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dst.Kill)
	if err := dst.QMP.MigrateIncoming(ctx, "unix:"+filepath.Join(p.VMDir, "incoming.sock")); err != nil {
		t.Fatalf("incoming socket as nobody: %v", err)
	}
	status, err := os.ReadFile("/proc/" + strconv.Itoa(dst.Cmd.Process.Pid) + "/status")
	if err != nil || !strings.Contains(string(status), "Seccomp:\t2") || !strings.Contains(string(status), "Uid:\t65534") {
		t.Fatalf("destination not sandboxed as nobody: %v\n%s", err, status)
	}
}

// A destination under the policy's sandbox boots and loads a real migration: QEMU 7.2 accepts the seccomp policy,
// and it does not get in the way of an incoming migration.
func TestPolicySandboxedDestinationMigrates(t *testing.T) {
	qbin := qemutest.Require(t)
	dir := t.TempDir()
	srcSock := filepath.Join(dir, "src.qmp")
	common := []string{"-accel", "tcg", "-machine", "pc", "-m", "32", "-nodefaults", "-display", "none", "-no-user-config"}
	src := exec.Command(qbin, append(common, "-qmp", "unix:"+srcSock+",server=on,wait=off")...)
	if err := src.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Process.Kill(); src.Wait() })

	vmDir := filepath.Join(dir, "data", "vm")
	argv, err := RewriteCommandLine(append([]string{qbin}, append(common, "-qmp", "unix:"+srcSock+",server=on,wait=off")...), vmDir)
	if err != nil {
		t.Fatal(err)
	}
	argv, err = ApplyPolicy(argv, Policy{VMDir: vmDir, Roots: []string{filepath.Join(dir, "data")}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dst, err := LaunchDestination(ctx, argv, PathsIn(vmDir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dst.Kill)
	status, err := os.ReadFile("/proc/" + strconv.Itoa(dst.Cmd.Process.Pid) + "/status")
	if err != nil || !strings.Contains(string(status), "Seccomp:\t2") {
		t.Fatalf("the destination runs without a seccomp filter: %v", err)
	}

	q := qemutest.DialWhenReady(ctx, t, srcSock)
	defer q.Close()
	time.Sleep(300 * time.Millisecond) // SeaBIOS writes something worth moving
	incoming := filepath.Join(vmDir, "incoming.sock")
	if err := dst.QMP.SetCapabilities(ctx, map[string]bool{qmp.CapEvents: true}); err != nil {
		t.Fatal(err)
	}
	if err := dst.QMP.MigrateIncoming(ctx, "unix:"+incoming); err != nil {
		t.Fatal(err)
	}
	if err := q.Migrate(ctx, "unix:"+incoming); err != nil {
		t.Fatal(err)
	}
	st, err := dst.QMP.WaitMigration(ctx, qmp.MigrationStatus.Finished)
	if err != nil || st != qmp.MigrationCompleted {
		t.Fatalf("incoming migration under the sandbox: %s %v", st, err)
	}
	if err := dst.QMP.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if rs, err := dst.QMP.Status(ctx); err != nil || rs != qmp.RunStateRunning {
		t.Fatalf("destination after cont: %s %v", rs, err)
	}
}
