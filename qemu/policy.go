package qemu

import (
	"errors"
	"fmt"
	"os"
	"os/user"
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
