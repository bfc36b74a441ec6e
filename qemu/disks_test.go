package qemu

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestDiskImages(t *testing.T) {
	file := func(path, format string, ro bool, option string) Disk {
		return Disk{Path: path, Format: format, ReadOnly: ro, Protocol: "file", HeaderBacking: true, Option: option}
	}
	for _, c := range []struct {
		name string
		argv []string
		want []Disk
	}{
		{"no disks", []string{"qemu-system-x86_64", "-m", "128", "-kernel", "/boot/vmlinuz", "-append", "-drive x"}, nil},
		{"the fixture's drive", []string{"qemu-system-x86_64", "-m", "131064K",
			"-drive", "file=/tmp/lab/shared/vm1.qcow2,format=qcow2,if=none,id=disk0,cache=none",
			"-device", "virtio-blk-pci,drive=disk0"},
			[]Disk{file("/tmp/lab/shared/vm1.qcow2", "qcow2", false, "-drive")}},
		{"legacy options", []string{"qemu-system-x86_64", "-hda", "/img/a.img", "--hdb", "/img/b.qcow2",
			"-cdrom", "/iso/debian.iso", "-fda", "/img/floppy.img", "-snapshot-ish", "-pflash", "/nvram/vars.fd"},
			[]Disk{file("/img/a.img", "", false, "-hda"), file("/img/b.qcow2", "", false, "-hdb"),
				file("/iso/debian.iso", "", true, "-cdrom"), file("/img/floppy.img", "", false, "-fda"),
				file("/nvram/vars.fd", "", false, "-pflash")}},
		{"drive spellings", []string{"qemu-system-x86_64",
			"-drive", "if=pflash,format=raw,unit=0,file=/usr/share/OVMF/OVMF_CODE.fd,readonly=on",
			"-drive", "file=/srv/a,,b.qcow2,if=virtio,aio=native,cache.direct=on",
			"-drive", "driver=qcow2,file.driver=file,file.filename=/srv/c.qcow2,file.locking=on,if=none,id=d2",
			"-drive", "file=file:/srv/d.raw,format=raw,read-only=on",
			"-drive", "if=ide,media=cdrom,index=2",
			"-drive", "file=/srv/e.iso,media=cdrom,if=none,id=cd0",
			"-drive", "file=/srv/f.qcow2,file.locking=off,format=qcow2"},
			[]Disk{file("/usr/share/OVMF/OVMF_CODE.fd", "raw", true, "-drive"), file("/srv/a,b.qcow2", "", false, "-drive"),
				file("/srv/c.qcow2", "qcow2", false, "-drive"), file("/srv/d.raw", "raw", true, "-drive"),
				file("/srv/e.iso", "", true, "-drive"), file("/srv/f.qcow2", "qcow2", false, "-drive")}},
		{"drive json filename", []string{"qemu-system-x86_64", "-drive",
			`file=json:{"driver":"qcow2",,"file":{"driver":"file",,"filename":"/srv/j.qcow2"}},if=none,id=j`},
			[]Disk{file("/srv/j.qcow2", "qcow2", false, "-drive")}},
		{"libvirt blockdev with a backing chain", []string{"/usr/bin/qemu-system-x86_64", "-name", "guest=web1,debug-threads=on",
			"-S", "-object", `{"qom-type":"secret","id":"masterKey0","format":"raw","file":"/var/lib/libvirt/qemu/domain-1-web1/master-key.aes"}`,
			"-blockdev", `{"driver":"file","filename":"/var/lib/libvirt/images/base.qcow2","node-name":"libvirt-2-storage","auto-read-only":true,"discard":"unmap"}`,
			"-blockdev", `{"node-name":"libvirt-2-format","read-only":true,"driver":"qcow2","file":"libvirt-2-storage","backing":null}`,
			"-blockdev", `{"driver":"file","filename":"/var/lib/libvirt/images/web1.qcow2","node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"}`,
			"-blockdev", `{"node-name":"libvirt-1-format","read-only":false,"discard":"unmap","driver":"qcow2","file":"libvirt-1-storage","backing":"libvirt-2-format"}`,
			"-device", `{"driver":"virtio-blk-pci","bus":"pci.4","addr":"0x0","drive":"libvirt-1-format","id":"virtio-disk0","bootindex":1}`,
			"-blockdev", `{"driver":"file","filename":"/var/lib/libvirt/images/seed.iso","node-name":"libvirt-3-storage","auto-read-only":true,"discard":"unmap"}`,
			"-blockdev", `{"node-name":"libvirt-3-format","read-only":true,"driver":"raw","file":"libvirt-3-storage"}`},
			[]Disk{
				{Path: "/var/lib/libvirt/images/web1.qcow2", Format: "qcow2", Protocol: "file", Option: "-blockdev"},
				{Path: "/var/lib/libvirt/images/base.qcow2", Format: "qcow2", ReadOnly: true, Protocol: "file", Option: "-blockdev"},
				file("/var/lib/libvirt/images/seed.iso", "raw", true, "-blockdev")}},
		{"blockdev keyval, implied driver, filters, quorum", []string{"qemu-system-x86_64",
			"-blockdev", "driver=file,node-name=f0,filename=/srv/k.qcow2",
			"-blockdev", "qcow2,node-name=q0,file=f0",
			"-blockdev", "driver=throttle,node-name=t0,throttle-group=tg0,file=q0",
			"-blockdev", "driver=raw,node-name=r0,file.driver=host_device,file.filename=/dev/mapper/san-lun7",
			"-blockdev", "driver=quorum,node-name=qu,vote-threshold=1,children.0=c0,children.1=c1",
			"-blockdev", "driver=file,node-name=c0,filename=/srv/q0.raw", "-blockdev", "driver=file,node-name=c1,filename=/srv/q1.raw"},
			[]Disk{file("/srv/k.qcow2", "qcow2", false, "-blockdev"), file("/dev/mapper/san-lun7", "raw", false, "-blockdev"),
				file("/srv/q0.raw", "", false, "-blockdev"), file("/srv/q1.raw", "", false, "-blockdev")}},
		{"network protocols are unchecked", []string{"qemu-system-x86_64",
			"-drive", "file=rbd:pool/image:id=admin,format=raw,if=virtio",
			"-drive", "file=iscsi://192.0.2.10/iqn.2001-04.com.example:storage/1,if=virtio",
			"-drive", "file=nbd://192.0.2.20:10809/exp,format=raw",
			"-blockdev", `{"driver":"nbd","node-name":"n0","server":{"type":"inet","host":"nbd.example","port":"10809"},"export":"x"}`,
			"-blockdev", `{"driver":"raw","node-name":"n1","file":"n0"}`},
			[]Disk{{Path: "rbd:pool/image:id=admin", Format: "raw", Protocol: "rbd", Option: "-drive"},
				{Path: "iscsi://192.0.2.10/iqn.2001-04.com.example:storage/1", Protocol: "iscsi", Option: "-drive"},
				{Path: "nbd://192.0.2.20:10809/exp", Format: "raw", Protocol: "nbd", Option: "-drive"},
				{Path: `{"driver":"nbd","export":"x","node-name":"n0","server":{"host":"nbd.example","port":"10809","type":"inet"}}`,
					Format: "raw", Protocol: "nbd", Option: "-blockdev"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := DiskImages(c.argv)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got\n%+v\nwant\n%+v", got, c.want)
			}
		})
	}
}

func TestDiskImagesRefuses(t *testing.T) {
	for _, c := range []struct {
		argv []string
		says string
	}{
		{[]string{"qemu-system-x86_64", "-snapshot", "-drive", "file=/srv/a.qcow2"}, "/srv/a.qcow2 to a temporary file"},
		{[]string{"qemu-system-x86_64", "-cdrom", "/iso/x.iso", "-hdb", "/srv/b.img", "--snapshot"}, "remove -snapshot"},
		{[]string{"qemu-system-x86_64", "-drive", "file=/srv/a.qcow2,snapshot=on"}, "remove snapshot=on"},
		{[]string{"qemu-system-x86_64", "-drive", "file=/srv/a.qcow2,snapshot"}, "remove snapshot=on"},
		{[]string{"qemu-system-x86_64", "-drive", "file=images/a.qcow2,if=virtio"}, "relative image path"},
		{[]string{"qemu-system-x86_64", "-hda", "a.img"}, "absolute path"},
		{[]string{"qemu-system-x86_64", "-blockdev", `{"driver":"file","node-name":"f","filename":"rel.qcow2"}`}, "relative"},
		{[]string{"qemu-system-x86_64", "-drive", "file=/dev/fdset/3,if=virtio"}, "file descriptor"},
		{[]string{"qemu-system-x86_64", "-drive", "file=fat:rw:/srv/dir,format=raw"}, "vvfat"},
		{[]string{"qemu-system-x86_64", "-drive", "file=nbd:unix:/run/nbd.sock,format=raw"}, "unix socket"},
		{[]string{"qemu-system-x86_64", "-drive", "file=nbd+unix:///exp?socket=/run/nbd.sock"}, "unix socket"},
		{[]string{"qemu-system-x86_64", "-drive", "file=nbd:localhost:10809,format=raw"}, "loopback"},
		{[]string{"qemu-system-x86_64", "-drive", "file=nbd://127.0.0.1/exp"}, "loopback"},
		{[]string{"qemu-system-x86_64", "-blockdev", `{"driver":"nbd","node-name":"n","server":{"type":"unix","path":"/run/x.sock"}}`}, "unix socket"},
	} {
		_, err := DiskImages(c.argv)
		if !errors.Is(err, ErrDiskRefused) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%q: %v, want a refusal saying %q", c.argv[1:], err, c.says)
		}
	}
	for _, argv := range [][]string{
		{"qemu-system-x86_64", "-drive"},
		{"qemu-system-x86_64", "-blockdev", "{not json"},
		{"qemu-system-x86_64", "-blockdev", `{"driver":"qcow2","node-name":"q","file":"nowhere"}`},
		{"qemu-system-x86_64", "-blockdev", "driver=qcow2,file=x,file.driver=file"},
		{"qemu-system-x86_64", "-drive", `file=json:{"driver":`},
	} {
		if _, err := DiskImages(argv); err == nil || errors.Is(err, ErrDiskRefused) {
			t.Errorf("%q: %v, want a parse error", argv[1:], err)
		}
	}
}

// TestSnapshotWithoutWritableDrive: -snapshot changes nothing for read-only drives and -blockdev nodes, so it is no
// reason to refuse a VM that has only those.
func TestSnapshotWithoutWritableDrive(t *testing.T) {
	for _, argv := range [][]string{
		{"qemu-system-x86_64", "-snapshot", "-m", "64"},
		{"qemu-system-x86_64", "-snapshot", "-cdrom", "/iso/x.iso", "-drive", "file=/srv/r.img,readonly=on"},
		{"qemu-system-x86_64", "-snapshot", "-blockdev", "driver=file,node-name=f,filename=/srv/b.img"},
	} {
		if _, err := DiskImages(argv); err != nil {
			t.Errorf("%q: %v", argv[1:], err)
		}
	}
}

func TestSplitOpts(t *testing.T) {
	for in, want := range map[string][]string{
		"":              nil,
		"a=1":           {"a=1"},
		"a=1,b=2":       {"a=1", "b=2"},
		"file=/x,,y,b":  {"file=/x,y", "b"},
		"a=1,":          {"a=1", ""},
		"a=,,,,,b=,,,,": {"a=,,", "b=,,"},
	} {
		if got := splitOpts(in); !reflect.DeepEqual(got, want) {
			t.Errorf("splitOpts(%q) = %q, want %q", in, got, want)
		}
	}
}
