package qemu

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Policy is what a target lets a destination QEMU do. A sender that holds the key chooses the destination's
// command line (it is the source's own, rewritten), so the receiver checks every option against an allow-list
// before it starts QEMU: nothing on that line may run a host program, open a network listener or a host device,
// pass a file descriptor, write a host file outside the VM's directory, or read a host file into the guest from
// outside the configured roots. ApplyPolicy applies it.
type Policy struct {
	// VMDir is the destination's own directory (DATA-DIR/<vm>). Everything QEMU creates or writes on the host (QMP and
	// other unix sockets, serial logs, the pidfile, -D) must lie under it; RewriteCommandLine moved the source's there.
	VMDir string
	// Roots are the directories guest files may come from: disks, kernels and initrds, loader blobs, memory-backend
	// files (the receiver's data directory and its `--allow-path` roots, the shared storage).
	Roots []string
	// FirmwareDirs are read-only directories of firmware and option ROMs (-bios, -L, romfile=, read-only pflash), in
	// addition to Roots; nil means DefaultFirmwareDirs.
	FirmwareDirs []string
	// RunAs is the user QEMU drops to after start-up (`receive --runas`); "" leaves it as the receiver's user.
	RunAs string
	// RunWith spells RunAs as `-run-with user=USER`, for QEMU 9.1 and later (10.0 removed -runas); false spells it
	// `-runas USER` (QEMU 7.2).
	RunWith bool
}

// Sandbox is the seccomp policy every destination runs under (QEMU's -sandbox): no obsolete system calls, no set*uid
// or set*gid, no fork or exec, no changes to scheduling or affinity. It is what libvirt gives its QEMUs.
const Sandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// SandboxRunAs is the seccomp policy with RunAs. QEMU installs its filter before it drops to the user, so set*uid must
// stay allowed for that drop (7.2, 10.0 and 11.1 die with SIGSYS otherwise); once it runs as the user it holds no
// capability to raise itself again, and exec (a set-uid program) stays denied.
const SandboxRunAs = "on,obsolete=deny,spawn=deny,resourcecontrol=deny"

// PrepareVMDir creates the policy's VM directory (mode 0750) and, with RunAs, gives it to that user: QEMU opens its
// incoming migration socket there after it dropped to the user. Call it before LaunchDestination.
func PrepareVMDir(p Policy) error {
	if err := os.MkdirAll(p.VMDir, 0o750); err != nil {
		return err
	}
	if p.RunAs == "" {
		return nil
	}
	u, err := user.Lookup(p.RunAs)
	if err != nil {
		return fmt.Errorf("--runas: %w", err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("--runas %s: uid %q gid %q", p.RunAs, u.Uid, u.Gid)
	}
	return os.Lchown(p.VMDir, uid, gid)
}

// DefaultFirmwareDirs are where Debian and Fedora install QEMU's firmware and option ROMs.
var DefaultFirmwareDirs = []string{"/usr/share/qemu", "/usr/share/seabios", "/usr/share/ovmf", "/usr/share/OVMF",
	"/usr/share/AAVMF", "/usr/share/qemu-efi-aarch64", "/usr/share/edk2", "/usr/share/ipxe", "/usr/lib/ipxe",
	"/usr/share/qemu-firmware"}

// ErrPolicy is what every refusal wraps: errors.Is(err, ErrPolicy).
var ErrPolicy = errors.New("refused by the receiver's policy")

// PolicyError names the option a destination's command line was refused for, and why.
type PolicyError struct {
	Option string // "-netdev"
	Value  string // its value, shortened
	Reason string
}

func (e *PolicyError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("QEMU option %s: %s (%v)", e.Option, e.Reason, ErrPolicy)
	}
	return fmt.Sprintf("QEMU option %s %s: %s (%v)", e.Option, e.Value, e.Reason, ErrPolicy)
}

func (e *PolicyError) Unwrap() error { return ErrPolicy }

// ApplyPolicy checks a destination's argv (as RewriteCommandLine made it) against p and returns the argv to run: the
// same options in the same order, with tap devices told to run no script (script=no,downscript=no), the source's own
// -sandbox, -runas, -chroot and -run-with dropped, and the receiver's -sandbox (and -runas) put right after the
// binary. Any option that is not on the allow-list, or whose value is not, refuses the whole line with a
// *PolicyError naming it. Paths are compared after cleaning and, when they exist, after resolving symbolic links.
func ApplyPolicy(argv []string, p Policy) ([]string, error) {
	if len(argv) == 0 {
		return nil, errors.New("empty QEMU command line")
	}
	c, err := newPolicyChecker(p)
	if err != nil {
		return nil, err
	}
	out := []string{argv[0]}
	switch {
	case p.RunAs == "":
		out = append(out, "-sandbox", Sandbox)
	case p.RunWith:
		out = append(out, "-sandbox", SandboxRunAs, "-run-with", "user="+p.RunAs)
	default:
		out = append(out, "-sandbox", SandboxRunAs, "-runas", p.RunAs)
	}
	for i := 1; i < len(argv); i++ {
		name := argv[i]
		if strings.HasPrefix(name, "--") {
			name = name[1:]
		}
		if !strings.HasPrefix(name, "-") {
			return nil, &PolicyError{Option: shorten(name), Reason: "a bare argument (QEMU reads it as -hda) is not allowed"}
		}
		rule, ok := policyRules[name]
		if !ok {
			if why, refused := refusedOptions[name]; refused {
				return nil, &PolicyError{Option: name, Reason: why}
			}
			return nil, &PolicyError{Option: name, Reason: "not on the receiver's list of allowed QEMU options"}
		}
		if rule.flag {
			if !rule.drop {
				out = append(out, name)
			}
			continue
		}
		if i+1 >= len(argv) {
			return nil, &PolicyError{Option: name, Reason: "has no value"}
		}
		i++
		val := argv[i]
		if rule.drop {
			continue
		}
		if why := c.fdInValue(val); why != "" && name != "-append" {
			return nil, &PolicyError{Option: name, Value: shorten(val), Reason: why}
		}
		nv, why := rule.check(c, val)
		if why != "" {
			return nil, &PolicyError{Option: name, Value: shorten(val), Reason: why}
		}
		out = append(out, name, nv)
	}
	return out, nil
}

func shorten(s string) string {
	if len(s) > 160 {
		return s[:160] + "…"
	}
	return s
}

type optionRule struct {
	flag  bool                                                        // takes no value
	drop  bool                                                        // removed from the line
	check func(c *policyChecker, val string) (newVal, refusal string) // the value's check
}

// Checks shared by several options.
var (
	anyValue  = func(_ *policyChecker, v string) (string, string) { return v, "" }
	guestFile = func(c *policyChecker, v string) (string, string) { return v, c.guestFile("", v) }
	diskFile  = func(c *policyChecker, v string) (string, string) { return v, c.disk("", v, false) }
	hostWrite = func(c *policyChecker, v string) (string, string) { return v, c.hostWrite("", v) }
	firmware  = func(c *policyChecker, v string) (string, string) { return v, c.firmware("", v) }
	noFDs     = func(c *policyChecker, v string) (string, string) {
		o, err := parseOpts(v, "")
		if err != nil {
			return "", err.Error()
		}
		return v, c.props(o)
	}
)

// policyRules is the allow-list: every option a destination may carry, with the check of its value.
var policyRules = map[string]optionRule{}

func init() {
	for _, f := range []string{"-S", "-nodefaults", "-no-user-config", "-nographic", "-no-hpet", "-no-acpi", "-no-reboot",
		"-no-shutdown", "-enable-kvm", "-only-migratable", "-mem-prealloc", "-usb", "-snapshot", "-no-fd-bootchk",
		"-full-screen", "-no-quit", "-ctrl-grab", "-alt-grab", "-no-frame", "-win2k-hack", "-rtc-td-hack", "-localtime",
		"-nodefconfig", "-enable-fips", "-singlestep", "-no-kvm-pit-reinjection", "-no-kvm-irqchip"} {
		policyRules[f] = optionRule{flag: true}
	}
	policyRules["-daemonize"] = optionRule{flag: true, drop: true} // RewriteCommandLine drops it too: it forks
	for _, o := range []string{"-name", "-uuid", "-m", "-smp", "-cpu", "-rtc", "-k", "-vga", "-append", "-msg",
		"-overcommit", "-action", "-compat", "-watchdog-action", "-watchdog", "-d", "-numa", "-iscsi", "-mon"} {
		policyRules[o] = optionRule{check: noFDs}
	}
	for _, o := range []string{"-sandbox", "-runas", "-chroot", "-run-with"} {
		policyRules[o] = optionRule{drop: true} // the receiver decides these
	}
	for _, o := range []string{"-kernel", "-initrd", "-dtb"} {
		policyRules[o] = optionRule{check: guestFile}
	}
	for _, o := range []string{"-hda", "-hdb", "-hdc", "-hdd", "-cdrom", "-fda", "-fdb", "-sd", "-mtdblock", "-pflash"} {
		policyRules[o] = optionRule{check: diskFile}
	}
	for _, o := range []string{"-pidfile", "-D"} {
		policyRules[o] = optionRule{check: hostWrite}
	}
	for _, o := range []string{"-bios", "-L"} {
		policyRules[o] = optionRule{check: firmware}
	}
	for _, o := range []string{"-serial", "-parallel", "-debugcon", "-monitor", "-qmp", "-qmp-pretty"} {
		policyRules[o] = optionRule{check: (*policyChecker).charURI}
	}
	policyRules["-mem-path"] = optionRule{check: func(c *policyChecker, v string) (string, string) { return v, c.memPath("", v) }}
	policyRules["-option-rom"] = optionRule{check: func(c *policyChecker, v string) (string, string) {
		return v, c.firmware("", splitOptValue(v)[0])
	}}
	policyRules["-incoming"] = optionRule{check: func(_ *policyChecker, v string) (string, string) {
		if v != "defer" {
			return "", "only -incoming defer (the receiver feeds the stream itself)"
		}
		return v, ""
	}}
	policyRules["-chardev"] = optionRule{check: (*policyChecker).chardev}
	policyRules["-netdev"] = optionRule{check: (*policyChecker).netdev}
	policyRules["-nic"] = optionRule{check: (*policyChecker).netdev}
	policyRules["-net"] = optionRule{check: (*policyChecker).netdev}
	policyRules["-drive"] = optionRule{check: (*policyChecker).drive}
	policyRules["-blockdev"] = optionRule{check: (*policyChecker).blockdev}
	policyRules["-device"] = optionRule{check: (*policyChecker).device}
	policyRules["-global"] = optionRule{check: (*policyChecker).global}
	policyRules["-object"] = optionRule{check: (*policyChecker).object}
	policyRules["-machine"] = optionRule{check: (*policyChecker).machine}
	policyRules["-M"] = optionRule{check: (*policyChecker).machine}
	policyRules["-accel"] = optionRule{check: (*policyChecker).accel}
	policyRules["-display"] = optionRule{check: (*policyChecker).display}
	policyRules["-vnc"] = optionRule{check: (*policyChecker).vnc}
	policyRules["-spice"] = optionRule{check: (*policyChecker).spice}
	policyRules["-audiodev"] = optionRule{check: (*policyChecker).audiodev}
	policyRules["-usbdevice"] = optionRule{check: func(_ *policyChecker, v string) (string, string) {
		if !slices.Contains([]string{"tablet", "mouse", "keyboard", "braille", "wacom-tablet"}, v) {
			return "", "only emulated USB input devices (tablet, mouse, keyboard, braille, wacom-tablet)"
		}
		return v, ""
	}}
	policyRules["-boot"] = optionRule{check: func(c *policyChecker, v string) (string, string) {
		return c.withOpts(v, "", func(o *optList) string {
			if f, ok := o.get("splash"); ok {
				return c.guestFile("splash=", f)
			}
			return ""
		})
	}}
	policyRules["-icount"] = optionRule{check: func(c *policyChecker, v string) (string, string) {
		return c.withOpts(v, "shift", func(o *optList) string {
			if _, ok := o.get("rr"); ok {
				return "record/replay (rr=) reads and writes host files"
			}
			return ""
		})
	}}
	policyRules["-fw_cfg"] = optionRule{check: func(c *policyChecker, v string) (string, string) {
		return c.withOpts(v, "name", func(o *optList) string {
			if f, ok := o.get("file"); ok {
				return c.guestFile("file=", f)
			}
			return ""
		})
	}}
	policyRules["-smbios"] = optionRule{check: func(c *policyChecker, v string) (string, string) {
		return c.withOpts(v, "", func(o *optList) string {
			if f, ok := o.get("file"); ok {
				return c.guestFile("file=", f)
			}
			return ""
		})
	}}
	policyRules["-acpitable"] = optionRule{check: func(c *policyChecker, v string) (string, string) {
		return c.withOpts(v, "", func(o *optList) string {
			for _, k := range []string{"file", "data"} {
				if fs, ok := o.get(k); ok {
					for _, f := range strings.Split(fs, ":") {
						if why := c.guestFile(k+"=", f); why != "" {
							return why
						}
					}
				}
			}
			return ""
		})
	}}
	policyRules["-fsdev"] = optionRule{check: (*policyChecker).fsdev}
	policyRules["-virtfs"] = optionRule{check: (*policyChecker).fsdev}
	policyRules["-trace"] = optionRule{check: func(c *policyChecker, v string) (string, string) {
		return c.withOpts(v, "enable", func(o *optList) string {
			if f, ok := o.get("file"); ok {
				if why := c.hostWrite("file=", f); why != "" {
					return why
				}
			}
			if f, ok := o.get("events"); ok {
				return c.guestFile("events=", f)
			}
			return ""
		})
	}}
}

// refusedOptions are options never allowed on a target, with the reason given to the operator.
var refusedOptions = map[string]string{
	"-plugin":              "TCG plugins load host shared objects into QEMU",
	"-readconfig":          "reads a host configuration file the receiver cannot check",
	"-writeconfig":         "writes a host file",
	"-set":                 "changes options after the receiver checked them",
	"-add-fd":              "passes file descriptors (fd=)",
	"-gdb":                 "opens a debugger port on the target",
	"-s":                   "opens a debugger port on TCP 1234 of the target",
	"-loadvm":              "loads a snapshot instead of the incoming migration",
	"-tpmdev":              "a TPM backend uses a host device or an external emulator",
	"-qtest":               "the qtest protocol controls QEMU from outside",
	"-qtest-log":           "writes a host file",
	"-semihosting":         "gives the guest access to host files",
	"-semihosting-config":  "gives the guest access to host files",
	"-preconfig":           "waits for configuration the receiver does not give",
	"-dump-vmstate":        "writes a host file and exits",
	"-xen-domid":           "Xen is not supported on targets",
	"-xen-attach":          "Xen is not supported on targets",
	"-enable-sync-profile": "not needed on a target",
}

// policyChecker holds a Policy with its directories cleaned and resolved.
type policyChecker struct {
	vmDir  []string // VMDir, lexically and resolved
	roots  []string // Roots, lexically and resolved
	fwDirs []string // FirmwareDirs and Roots, lexically and resolved
}

var userName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*$`)

func newPolicyChecker(p Policy) (*policyChecker, error) {
	if !filepath.IsAbs(p.VMDir) {
		return nil, fmt.Errorf("policy: the VM directory %q is not an absolute path", p.VMDir)
	}
	if p.RunAs != "" && !userName.MatchString(p.RunAs) {
		return nil, fmt.Errorf("policy: %q is not a user name", p.RunAs)
	}
	c := &policyChecker{vmDir: withResolved([]string{p.VMDir})}
	for _, r := range p.Roots {
		if !filepath.IsAbs(r) {
			return nil, fmt.Errorf("policy: allowed path %q is not absolute", r)
		}
	}
	c.roots = withResolved(p.Roots)
	fw := p.FirmwareDirs
	if fw == nil {
		fw = DefaultFirmwareDirs
	}
	c.fwDirs = append(withResolved(fw), c.roots...)
	return c, nil
}

// withResolved returns the cleaned directories, followed by their symlink-resolved forms where those differ.
func withResolved(dirs []string) []string {
	var out []string
	for _, d := range dirs {
		out = append(out, filepath.Clean(d))
	}
	for _, d := range dirs {
		if r, err := filepath.EvalSymlinks(d); err == nil && r != filepath.Clean(d) {
			out = append(out, r)
		}
	}
	return out
}

// under reports whether the absolute path p lies in one of dirs (or is one), lexically and, when p exists, also
// after resolving its symbolic links: a link under a root that points out of it does not pass.
func under(p string, dirs []string) bool {
	if !filepath.IsAbs(p) {
		return false
	}
	in := func(q string) bool {
		for _, d := range dirs {
			if q == d || strings.HasPrefix(q, d+"/") || d == "/" {
				return true
			}
		}
		return false
	}
	if !in(filepath.Clean(p)) {
		return false
	}
	if r, err := filepath.EvalSymlinks(p); err == nil && !in(r) {
		return false
	}
	return true
}

// systemTree reports whether p is under /dev, /proc or /sys (devices and kernel interfaces; never a guest file).
func systemTree(p string) bool {
	p = filepath.Clean(p)
	for _, d := range []string{"/dev", "/proc", "/sys"} {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	if r, err := filepath.EvalSymlinks(p); err == nil && r != p {
		return systemTree(r)
	}
	return false
}

func (c *policyChecker) rootsText() string {
	if len(c.roots) == 0 {
		return "none configured"
	}
	return strings.Join(c.roots, ", ")
}

// guestFile checks a host file QEMU reads into the guest (kernel, initrd, loader blob, fw_cfg file).
func (c *policyChecker) guestFile(key, p string) string {
	switch {
	case !filepath.IsAbs(p):
		return fmt.Sprintf("%s%q is not an absolute path", key, p)
	case systemTree(p):
		return fmt.Sprintf("%s%s is under /dev, /proc or /sys", key, p)
	case !under(p, c.roots):
		return fmt.Sprintf("%s%s is outside the allowed paths (%s; receive --allow-path adds one)", key, p, c.rootsText())
	}
	return ""
}

// disk checks a disk image; firmwareOK also allows the firmware directories (a read-only pflash).
func (c *policyChecker) disk(key, p string, firmwareOK bool) string {
	if systemTree(p) {
		return fmt.Sprintf("%s%s: raw host devices are not allowed as disks", key, p)
	}
	if firmwareOK && under(p, c.fwDirs) {
		return ""
	}
	return c.guestFile(key, p)
}

// memPath checks a memory-backend file or directory: under the roots (a hugetlbfs mount such as /dev/hugepages
// passes only if the operator allowed it).
func (c *policyChecker) memPath(key, p string) string {
	if !under(p, c.roots) {
		return fmt.Sprintf("%s%s is outside the allowed paths (%s; receive --allow-path adds one)", key, p, c.rootsText())
	}
	return ""
}

// firmware checks a firmware image, option ROM or firmware directory.
func (c *policyChecker) firmware(key, p string) string {
	if p == "" {
		return ""
	}
	if systemTree(p) || !under(p, c.fwDirs) {
		return fmt.Sprintf("%s%s is outside the firmware directories and the allowed paths", key, p)
	}
	return ""
}

// hostWrite checks a file QEMU creates or writes on the host: it must be in the VM's directory.
func (c *policyChecker) hostWrite(key, p string) string {
	if !under(p, c.vmDir) {
		return fmt.Sprintf("%s%s is outside the VM's directory %s (QEMU writes host files only there)", key, p, c.vmDir[0])
	}
	return ""
}

// fdKeys name properties that pass file descriptors.
var fdKeys = map[string]bool{"fd": true, "fds": true, "vhostfd": true, "vhostfds": true, "sock_fd": true, "fdset": true,
	"fdname": true}

// fdInValue refuses values that name inherited file descriptors however they are spelled.
func (c *policyChecker) fdInValue(v string) string {
	if strings.Contains(v, "/dev/fdset/") || strings.Contains(v, "/proc/self/fd") || strings.Contains(v, "/dev/fd/") {
		return "names a file descriptor (fd= and fdsets are not allowed: the source's descriptors do not exist here)"
	}
	return ""
}

// props checks the properties every option may carry: no file descriptors, and files by what they are.
func (c *policyChecker) props(o *optList) string {
	for _, kv := range o.kvs {
		last := kv.key[strings.LastIndexByte(kv.key, '.')+1:]
		switch {
		case fdKeys[last]:
			return fmt.Sprintf("%s= passes a file descriptor (not allowed: the source's descriptors do not exist here)", kv.key)
		case last == "romfile":
			if why := c.firmware(kv.key+"=", kv.val); why != "" {
				return why
			}
		}
	}
	return ""
}

// withOpts parses v and runs the property checks and then f.
func (c *policyChecker) withOpts(v, implied string, f func(o *optList) string) (string, string) {
	o, err := parseOpts(v, implied)
	if err != nil {
		return "", err.Error()
	}
	if why := c.props(o); why != "" {
		return "", why
	}
	return v, f(o)
}

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
