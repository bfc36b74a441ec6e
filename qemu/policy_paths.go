package qemu

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
)

// The policy's path checks: where each kind of host file may lie (ApplyPolicy).

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
