package qemu

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
)

// The policy's checks of option values, one per option family (ApplyPolicy's allow-list calls them).

const networkCharRefusal = "TCP, UDP, telnet and websocket character devices open network sockets on the target; " +
	"only unix sockets (moved under the VM's directory) and files are allowed"

// charURI checks the legacy character-device syntax of -serial, -monitor, -qmp and the like.
func (c *policyChecker) charURI(val string) (string, string) {
	v := strings.TrimPrefix(val, "mon:")
	path := func(prefix string) string { return splitOptValue(strings.TrimPrefix(v, prefix))[0] }
	switch {
	case slices.Contains([]string{"none", "null", "pty", "vc", "stdio", "msmouse", "braille"}, v),
		strings.HasPrefix(v, "vc:"), strings.HasPrefix(v, "chardev:"):
		return val, ""
	case strings.HasPrefix(v, "unix:"):
		return val, c.hostWrite("unix:", path("unix:"))
	case strings.HasPrefix(v, "file:"):
		return val, c.hostWrite("file:", path("file:"))
	case strings.HasPrefix(v, "pipe:"):
		return val, c.hostWrite("pipe:", path("pipe:"))
	case strings.HasPrefix(v, "tcp:"), strings.HasPrefix(v, "telnet:"), strings.HasPrefix(v, "udp:"),
		strings.HasPrefix(v, "websocket"), strings.HasPrefix(v, "tn3270:"):
		return "", networkCharRefusal
	case strings.HasPrefix(v, "/dev/"):
		return "", "host serial or parallel devices are not allowed"
	}
	return "", "not an allowed character device (none, null, pty, vc, stdio, unix:, file:, chardev:)"
}

// chardev checks -chardev BACKEND,id=...,... .
func (c *policyChecker) chardev(val string) (string, string) {
	return c.withOpts(val, "backend", func(o *optList) string {
		if f, ok := o.get("logfile"); ok {
			if why := c.hostWrite("logfile=", f); why != "" {
				return why
			}
		}
		switch o.implied {
		case "socket":
			for _, k := range []string{"host", "port", "websocket", "telnet", "tn3270", "to", "ipv4", "ipv6"} {
				if _, ok := o.get(k); ok {
					return networkCharRefusal
				}
			}
			p, ok := o.get("path")
			if !ok {
				return "a socket character device without path= is a network socket"
			}
			return c.hostWrite("path=", p)
		case "file", "pipe":
			if p, ok := o.get("path"); ok {
				if why := c.hostWrite("path=", p); why != "" {
					return why
				}
			}
			if p, ok := o.get("input-path"); ok {
				return c.hostWrite("input-path=", p)
			}
			return ""
		case "null", "pty", "ringbuf", "memory", "vc", "msmouse", "braille", "wctablet", "testdev", "spicevmc",
			"spiceport", "qemu-vdagent", "stdio", "mux":
			return ""
		case "udp":
			return networkCharRefusal
		case "serial", "tty", "parallel", "parport":
			return "host serial or parallel devices are not allowed"
		}
		return fmt.Sprintf("character device backend %q is not allowed", o.implied)
	})
}

// netdev checks -netdev, -nic and -net.
func (c *policyChecker) netdev(val string) (string, string) {
	o, err := parseOpts(val, "type")
	if err != nil {
		return "", err.Error()
	}
	if why := c.props(o); why != "" {
		return "", why
	}
	switch o.implied {
	case "user":
		for _, k := range []string{"guestfwd", "smb"} {
			if _, ok := o.get(k); ok {
				return "", k + "= runs a host program or connects host sockets"
			}
		}
		if d, ok := o.get("tftp"); ok {
			return "", c.guestFile("tftp=", d)
		}
		return val, ""
	case "tap":
		if _, ok := o.get("helper"); ok {
			return "", "helper= runs a host program"
		}
		for _, k := range []string{"script", "downscript"} {
			if s, ok := o.get(k); ok && s != "no" && s != "" {
				return "", k + "= runs a host program (only " + k + "=no is allowed)"
			}
		}
		// Without script=no QEMU runs /etc/qemu-ifup and /etc/qemu-ifdown.
		o.set("script", "no")
		return o.set("downscript", "no"), ""
	case "hubport", "none", "nic":
		return val, ""
	case "bridge":
		return "", "the bridge backend runs qemu-bridge-helper (use tap on a bridge set up by the host)"
	}
	return "", fmt.Sprintf("network backend %q is not allowed (user, tap without scripts, hubport are): it opens host sockets or devices", o.implied)
}

// blockDrivers are the block drivers a destination may use: image formats, filters, and network shared storage.
var blockDrivers = map[string]bool{"file": true, "raw": true, "qcow2": true, "qcow": true, "qed": true, "vmdk": true,
	"vdi": true, "vhdx": true, "vpc": true, "luks": true, "throttle": true, "copy-on-read": true, "null-co": true,
	"null-aio": true, "rbd": true, "iscsi": true, "nbd": true, "gluster": true, "compress": true, "preallocate": true,
	"parallels": true, "bochs": true, "cloop": true, "dmg": true, "quorum": true, "blklogwrites": true,
	"snapshot-access": true}

func blockDriverRefusal(d string) string {
	switch d {
	case "host_device", "host_cdrom", "host_floppy", "nvme", "virtio-blk-vfio-pci", "virtio-blk-vhost-user",
		"virtio-blk-vhost-vdpa":
		return fmt.Sprintf("driver=%s: raw host devices are not allowed as disks", d)
	case "vvfat":
		return "driver=vvfat exposes a host directory to the guest"
	}
	return fmt.Sprintf("block driver %q is not allowed", d)
}

// networkStorage are the file= protocols of -drive that reach shared storage over the network.
var networkStorage = []string{"rbd:", "iscsi://", "nbd:", "nbd://", "nbd+tcp://", "nbd+unix://", "gluster://",
	"gluster+tcp://", "gluster+unix://", "gluster+rdma://"}

// blockProps checks the keys of -drive and -blockdev alike.
func (c *policyChecker) blockProps(o *optList, firmwareOK bool) string {
	if why := c.props(o); why != "" {
		return why
	}
	for _, kv := range o.kvs {
		last := kv.key[strings.LastIndexByte(kv.key, '.')+1:]
		switch {
		case (last == "driver" || last == "format") && !blockDrivers[kv.val]:
			return blockDriverRefusal(kv.val)
		case last == "filename" || last == "data-file" && strings.HasPrefix(kv.val, "/"):
			if strings.Contains(kv.val, "://") {
				continue // a network driver's URL
			}
			if why := c.disk(kv.key+"=", kv.val, firmwareOK); why != "" {
				return why
			}
		case last == "config":
			return kv.key + "= reads a host configuration file"
		}
	}
	return ""
}

// drive checks -drive file=...,if=...,format=... .
func (c *policyChecker) drive(val string) (string, string) {
	return c.withOpts(val, "", func(o *optList) string {
		iface, _ := o.get("if")
		ro, _ := o.get("readonly")
		firmwareOK := iface == "pflash" && (ro == "on" || ro == "true" || ro == "yes")
		if why := c.blockProps(o, firmwareOK); why != "" {
			return why
		}
		f, ok := o.get("file")
		if !ok || f == "" {
			return ""
		}
		if p, isFile := strings.CutPrefix(f, "file:"); isFile {
			f = p
		}
		if strings.HasPrefix(f, "/") {
			return c.disk("file=", f, firmwareOK)
		}
		for _, proto := range networkStorage {
			if strings.HasPrefix(f, proto) {
				return ""
			}
		}
		if strings.HasPrefix(f, "host_device:") || strings.HasPrefix(f, "host_cdrom:") {
			return "file=" + f + ": raw host devices are not allowed as disks"
		}
		if i := strings.IndexByte(f, ':'); i > 0 {
			return fmt.Sprintf("file=%s: protocol %q is not allowed (absolute paths under the allowed roots, and rbd, iscsi, nbd, gluster are)", f, f[:i])
		}
		return fmt.Sprintf("file=%q is not an absolute path", f)
	})
}

// blockdev checks -blockdev (JSON, as libvirt writes it, or key=value).
func (c *policyChecker) blockdev(val string) (string, string) {
	return c.withOpts(val, "", func(o *optList) string {
		if _, ok := o.get("driver"); !ok {
			return "-blockdev needs driver="
		}
		return c.blockProps(o, false)
	})
}

// passthroughDevice reports why a -device driver hands the guest a host device, or "".
func passthroughDevice(d string) string {
	switch {
	case strings.HasPrefix(d, "vfio"), d == "pci-assign", d == "kvm-pci-assign", d == "xen-pci-passthrough":
		return "PCI and VFIO passthrough hands the guest a host device"
	case d == "usb-host", d == "u2f-passthrough":
		return "USB passthrough hands the guest a host device"
	case d == "scsi-generic", d == "scsi-block":
		return "SCSI passthrough hands the guest a host device"
	case strings.HasPrefix(d, "vhost-scsi"), strings.HasPrefix(d, "vhost-user"), strings.HasPrefix(d, "vhost-vdpa"):
		return "vhost-scsi, vhost-user and vhost-vdpa devices connect the guest to host devices or daemons"
	case d == "ivshmem-doorbell":
		return "ivshmem-doorbell connects to a host server"
	}
	return ""
}

// device checks -device DRIVER,prop=value,... .
func (c *policyChecker) device(val string) (string, string) {
	return c.withOpts(val, "driver", func(o *optList) string {
		if why := passthroughDevice(o.implied); why != "" {
			return fmt.Sprintf("%s: %s", o.implied, why)
		}
		for _, k := range []string{"file", "kernel", "initrd"} { // loader, guest-loader
			if f, ok := o.get(k); ok {
				if why := c.guestFile(k+"=", f); why != "" {
					return why
				}
			}
		}
		return ""
	})
}

// global checks -global DRIVER.PROP=VALUE and -global driver=D,property=P,value=V.
func (c *policyChecker) global(val string) (string, string) {
	var driver, prop, v string
	if strings.HasPrefix(val, "driver=") {
		o, err := parseOpts(val, "")
		if err != nil {
			return "", err.Error()
		}
		driver, _ = o.get("driver")
		prop, _ = o.get("property")
		v, _ = o.get("value")
	} else {
		left, right, _ := strings.Cut(val, "=")
		if i := strings.LastIndexByte(left, '.'); i >= 0 {
			driver, prop = left[:i], left[i+1:]
		}
		v = right
	}
	if why := passthroughDevice(driver); why != "" {
		return "", why
	}
	o := &optList{kvs: []optKV{{prop, v}}}
	if why := c.props(o); why != "" {
		return "", why
	}
	switch prop {
	case "file", "kernel", "initrd", "filename":
		return val, c.guestFile(prop+"=", v)
	case "chardev":
		return val, ""
	}
	return val, ""
}

// objectTypes are the -object types a destination may create without further checks.
var objectTypes = map[string]bool{"memory-backend-ram": true, "memory-backend-memfd": true, "memory-backend-epc": true,
	"memory-backend-shm": true, "iothread": true, "main-loop": true, "throttle-group": true, "rng-builtin": true,
	"rng-egd": true, "tls-cipher-suites": true, "authz-simple": true, "authz-list": true, "sev-guest": true,
	"sev-snp-guest": true, "tdx-guest": true, "s390-pv-guest": true, "pef-guest": true, "thread-context": true,
	"cryptodev-backend-builtin": true, "cryptodev-backend-lkcf": true, "filter-buffer": true, "filter-mirror": true,
	"filter-redirector": true, "filter-rewriter": true, "can-bus": true, "acpi-generic-initiator": true,
	"acpi-generic-port": true}

// object checks -object TYPE,id=...,... .
func (c *policyChecker) object(val string) (string, string) {
	return c.withOpts(val, "qom-type", func(o *optList) string {
		t := o.implied
		switch {
		case t == "memory-backend-file":
			p, _ := o.get("mem-path")
			return c.memPath("mem-path=", p)
		case t == "rng-random":
			if f, ok := o.get("filename"); ok && !slices.Contains([]string{"/dev/urandom", "/dev/random", "/dev/hwrng"}, f) {
				return "filename=" + f + ": only /dev/urandom, /dev/random or /dev/hwrng"
			}
		case t == "secret":
			if f, ok := o.get("file"); ok {
				return c.guestFile("file=", f)
			}
		case strings.HasPrefix(t, "tls-creds-"):
			if d, ok := o.get("dir"); ok {
				return c.guestFile("dir=", d)
			}
		case t == "authz-listfile":
			f, _ := o.get("filename")
			return c.guestFile("filename=", f)
		case t == "filter-dump":
			f, _ := o.get("file")
			return c.hostWrite("file=", f)
		case t == "input-linux":
			return "input-linux hands the guest a host input device"
		case !objectTypes[t]:
			return fmt.Sprintf("object type %q is not allowed on a target", t)
		}
		return ""
	})
}

// machine checks -machine TYPE,prop=value,... .
func (c *policyChecker) machine(val string) (string, string) {
	return c.withOpts(val, "type", func(o *optList) string {
		if _, ok := o.get("dumpdtb"); ok {
			return "dumpdtb= writes a host file and exits"
		}
		for _, k := range []string{"kernel", "initrd", "dtb"} {
			if f, ok := o.get(k); ok {
				if why := c.guestFile(k+"=", f); why != "" {
					return why
				}
			}
		}
		if f, ok := o.get("firmware"); ok {
			return c.firmware("firmware=", f)
		}
		return ""
	})
}

// accel checks -accel NAME,... .
func (c *policyChecker) accel(val string) (string, string) {
	return c.withOpts(val, "accel", func(o *optList) string {
		if o.implied != "kvm" && o.implied != "tcg" {
			return fmt.Sprintf("accelerator %q is not allowed (kvm, tcg)", o.implied)
		}
		return ""
	})
}

// display checks -display TYPE,... .
func (c *policyChecker) display(val string) (string, string) {
	o, err := parseOpts(val, "type")
	if err != nil {
		return "", err.Error()
	}
	if v, ok := o.get("vnc"); ok && o.implied == "" {
		_, why := c.vnc(v)
		return val, why
	}
	if r, ok := o.get("rendernode"); ok && !strings.HasPrefix(filepath.Clean(r), "/dev/dri/") {
		return "", "rendernode= must be a /dev/dri render node"
	}
	switch o.implied {
	case "none", "egl-headless", "curses", "gtk", "sdl", "cocoa":
		return val, c.props(o)
	case "dbus":
		return "", "the dbus display connects to a host bus"
	case "spice-app":
		return "", "spice-app starts a viewer program"
	}
	return "", fmt.Sprintf("display %q is not allowed", o.implied)
}

// loopback reports whether host (a VNC or SPICE listen address) is on the loopback interface.
func loopback(host string) bool {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// vnc checks -vnc DISPLAY,opts: a unix socket in the VM's directory, or a loopback address.
func (c *policyChecker) vnc(val string) (string, string) {
	parts := splitOptValue(val)
	for _, p := range parts[1:] {
		k, _, _ := strings.Cut(p, "=")
		switch k {
		case "websocket":
			return "", "websocket= opens a network listener on the target"
		case "reverse":
			return "", "reverse= connects from the target to another host"
		}
	}
	addr := parts[0]
	switch {
	case addr == "none":
		return val, ""
	case strings.HasPrefix(addr, "unix:"):
		return val, c.hostWrite("unix:", strings.TrimPrefix(addr, "unix:"))
	}
	i := strings.LastIndexByte(addr, ':')
	if i < 0 || !loopback(addr[:i]) {
		return "", "VNC may listen only on a loopback address or a unix socket (it would expose the console on the target's network)"
	}
	return val, ""
}

// spice checks -spice: loopback or a unix socket in the VM's directory.
func (c *policyChecker) spice(val string) (string, string) {
	return c.withOpts(val, "", func(o *optList) string {
		addr, _ := o.get("addr")
		if u, _ := o.get("unix"); u == "on" {
			return c.hostWrite("addr=", addr)
		}
		if !loopback(addr) {
			return "SPICE may listen only on a loopback address (addr=127.0.0.1) or a unix socket"
		}
		if r, ok := o.get("rendernode"); ok && !strings.HasPrefix(filepath.Clean(r), "/dev/dri/") {
			return "rendernode= must be a /dev/dri render node"
		}
		return ""
	})
}

// audiodev checks -audiodev DRIVER,id=...: no host sound system.
func (c *policyChecker) audiodev(val string) (string, string) {
	return c.withOpts(val, "driver", func(o *optList) string {
		switch o.implied {
		case "none", "spice":
			return ""
		case "wav":
			p, ok := o.get("path")
			if !ok {
				return "the wav backend needs path= in the VM's directory"
			}
			return c.hostWrite("path=", p)
		}
		return fmt.Sprintf("audio backend %q uses the host's sound system (none, spice, wav are allowed)", o.implied)
	})
}

// fsdev checks -fsdev and -virtfs: a shared directory under the roots, no proxy helper.
func (c *policyChecker) fsdev(val string) (string, string) {
	return c.withOpts(val, "fsdriver", func(o *optList) string {
		switch o.implied {
		case "local":
			p, _ := o.get("path")
			return c.guestFile("path=", p)
		case "synth":
			return ""
		}
		return fmt.Sprintf("file system driver %q is not allowed (local under the allowed paths is)", o.implied)
	})
}
