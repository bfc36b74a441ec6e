package virtlab

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"text/template"
	"time"

	"github.com/vmscatter/vmscatter/bench/fixture"
	"github.com/vmscatter/vmscatter/bench/guest/guestlog"
)

// Guest is a fixture guest defined as a libvirt domain: kernel, initramfs and workload as package fixture boots
// them, a qcow2 disk the workload writes and verifies, and a serial console appended to a file. Every path is on the
// lab's shared storage, the same for every host.
type Guest struct {
	Name   string
	Dir    string // DIR/NAME: the domain XML, the disk and the console log
	Serial string
	Disk   string
	XML    string // the definition file
}

// domainTemplate is a TCG guest with nothing libvirt would add a host device for: no network, no graphics, no USB,
// no balloon. libvirt rounds <memory> to whole MiB, so the guest gets MemoryMiB exactly (QEMU 7.2's TCG dirty-
// tracking bug, bench/fixture's MemArg, wants 8 KiB less; a guest that dirties little does not meet it).
var domainTemplate = template.Must(template.New("domain").Parse(`<domain type='qemu'>
  <name>{{.Name}}</name>
  <memory unit='MiB'>{{.MemoryMiB}}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{{.Kernel}}</kernel>
    <initrd>{{.Initrd}}</initrd>
    <cmdline>{{.Cmdline}}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{{.Emulator}}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='{{.Cache}}'/>
      <source file='{{.Disk}}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='{{.Serial}}' append='on'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
`))

// GuestOptions describe one lab domain.
type GuestOptions struct {
	MemoryMiB int // 0 means 128
	Workload  fixture.Workload
}

// DefineGuest writes the domain's XML and disk under dir/name and defines it in h's libvirtd (not started).
func (h *Host) DefineGuest(ctx context.Context, dir, name string, o GuestOptions) (*Guest, error) {
	p, err := fixture.Ensure(ctx)
	if err != nil {
		return nil, err
	}
	if o.MemoryMiB == 0 {
		o.MemoryMiB = fixture.DefaultMemoryMiB
	}
	g := &Guest{Name: name, Dir: filepath.Join(dir, name)}
	if err := os.MkdirAll(g.Dir, 0o755); err != nil {
		return nil, err
	}
	g.Serial, g.Disk, g.XML = filepath.Join(g.Dir, "serial.log"), filepath.Join(g.Dir, "disk.qcow2"), filepath.Join(g.Dir, "domain.xml")
	// A fresh guest: no console lines of an earlier one, a new disk.
	for _, f := range []string{g.Serial, g.Disk} {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	if err := fixture.CreateDisk(ctx, g.Disk, fixture.DefaultDiskSize); err != nil {
		return nil, err
	}
	fo := fixture.GuestOptions{MemoryMiB: o.MemoryMiB, ExactMemory: true, Workload: o.Workload, Disk: fixture.Disk{Path: g.Disk}}
	esc := func(s string) string {
		var b bytes.Buffer
		_ = xml.EscapeText(&b, []byte(s))
		return b.String()
	}
	var out bytes.Buffer
	err = domainTemplate.Execute(&out, map[string]any{
		"Name": esc(name), "MemoryMiB": o.MemoryMiB, "Kernel": esc(p.Kernel), "Initrd": esc(p.Initrd),
		"Cmdline": esc(fixture.KernelCmdline(fo)), "Emulator": "/usr/bin/qemu-system-x86_64", "Disk": esc(g.Disk),
		"Serial": esc(g.Serial), "Cache": "none",
	})
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(g.XML, out.Bytes(), 0o644); err != nil {
		return nil, err
	}
	if err := h.Virt.Define(ctx, g.XML); err != nil {
		return nil, err
	}
	return g, nil
}

// StartGuest starts a defined guest in h's libvirtd and waits for its workload's ready line (at most 90 s).
func (h *Host) StartGuest(ctx context.Context, g *Guest) error {
	if err := h.Virt.Start(ctx, g.Name); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if err := fixture.Follow(ctx, g.Serial, 100*time.Millisecond, nil, func(line string, _ time.Time) bool {
		_, ok := guestlog.ParseOK(line)
		return !ok // stop at the first ok line
	}); err != nil {
		b, _ := os.ReadFile(g.Serial)
		return fmt.Errorf("virtlab: guest %s on %s did not reach its first ok line: %v: %s", g.Name, h.Name, err, tail(string(b), 500))
	}
	return nil
}
