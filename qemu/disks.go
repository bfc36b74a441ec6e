package qemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
)

// Disk is one image that a QEMU command line opens.
type Disk struct {
	// Path is the image file or block device, absolute, for Protocol "file"; for a network protocol, a description
	// of where it lives (its URI, or driver options).
	Path string
	// Format is the format driver over the file ("qcow2", "raw", ...); "" when QEMU probes it.
	Format   string
	ReadOnly bool
	// Protocol is "file" for files and block devices (QEMU's file, host_device and host_cdrom drivers), else the
	// network protocol ("nbd", "rbd", "iscsi", "gluster", "ssh", "http", "nfs", ...), whose images vmscatter does not
	// check: every host reaches them by the same name, which is the operator's to ensure.
	Protocol string
	// HeaderBacking says that QEMU opens the backing file the image's qcow2 header names: true unless a -blockdev
	// format node gave its backing node itself (or "backing": null).
	HeaderBacking bool
	// Option is where the image came from, for messages: "-drive", "-blockdev", "-hda", ...
	Option string
}

// Checked reports whether vmscatter checks the image (a file or block device), rather than trusting the operator.
func (d Disk) Checked() bool { return d.Protocol == "file" }

// ErrDiskRefused marks a command line whose disks vmscatter refuses to migrate. The error says which and what to do.
var ErrDiskRefused = errors.New("disk refused")

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrDiskRefused, fmt.Sprintf(format, args...))
}

// DiskImages returns every disk image a QEMU command line opens, in order: -drive (key=value, with file=json:{...}),
// -blockdev (JSON and key=value, nodes linked by node-name, backing nodes read-only), -hda to -hdd, -cdrom, -fda,
// -fdb, -sd, -mtdblock and -pflash. Every image of a migrated VM must be the same file on the target, at the same
// path (shared storage). It refuses, with ErrDiskRefused and what to do:
//   - snapshot=on, and -snapshot with a writable -drive image: the source's writes go to a temporary file on the
//     source host, which the destination never sees;
//   - a relative path: the destination QEMU runs in another directory;
//   - a file passed by descriptor (/dev/fdset/N), a vvfat directory, NBD over a unix socket or to a loopback address:
//     they are local to the source host.
//
// Images on other network protocols are returned unchecked (Disk.Checked is false). A -drive without a file (an
// empty CD drive) opens no image.
func DiskImages(argv []string) ([]Disk, error) {
	p := diskParser{nodes: map[string]map[string]any{}}
	var blockdevs []map[string]any
	var snapshot bool
	for i := 1; i < len(argv); i++ {
		name := argv[i]
		if strings.HasPrefix(name, "--") {
			name = name[1:]
		}
		if name == "-snapshot" {
			snapshot = true
			continue
		}
		_, legacy := legacyDiskOptions[name]
		if !legacy && name != "-drive" && name != "-blockdev" {
			if optionsWithArg[name] {
				i++ // the value of another option, which may look like a flag
			}
			continue
		}
		if i+1 >= len(argv) {
			return nil, fmt.Errorf("QEMU option %s has no value", name)
		}
		i++
		val := argv[i]
		var err error
		switch {
		case name == "-drive":
			err = p.drive(val)
		case name == "-blockdev":
			var n map[string]any
			n, err = parseBlockdev(val)
			if err == nil {
				if nn, ok := n["node-name"].(string); ok && nn != "" {
					p.nodes[nn] = n
				}
				blockdevs = append(blockdevs, n)
			}
		default:
			err = p.filename(val, "", legacyDiskOptions[name], name)
		}
		if err != nil {
			return nil, err
		}
	}
	// -blockdev nodes form a graph linked by node-name: walk it from the nodes no other node refers to.
	referenced := map[string]bool{}
	for _, n := range blockdevs {
		collectRefs(n, referenced)
	}
	for _, n := range blockdevs {
		if nn, _ := n["node-name"].(string); nn != "" && referenced[nn] {
			continue
		}
		if err := p.walk(n, "", false, true, "-blockdev", map[string]bool{}); err != nil {
			return nil, err
		}
	}
	if snapshot {
		// -snapshot puts a temporary overlay over every writable -drive (and -hda...) image; -blockdev nodes keep
		// their files.
		for _, d := range p.disks {
			if d.Option != "-blockdev" && !d.ReadOnly {
				return nil, refuse("-snapshot writes the guest's changes to %s to a temporary file on the source host, "+
					"which a destination never sees: remove -snapshot", d.Path)
			}
		}
	}
	return p.disks, nil
}

// legacyDiskOptions are the options whose value is a file name, each with whether QEMU opens it read-only.
var legacyDiskOptions = map[string]bool{
	"-hda": false, "-hdb": false, "-hdc": false, "-hdd": false, "-fda": false, "-fdb": false, "-sd": false,
	"-mtdblock": false, "-pflash": false, "-cdrom": true,
}

type diskParser struct {
	nodes map[string]map[string]any // -blockdev nodes by node-name
	disks []Disk
}

// drive handles one -drive value (QemuOpts: key=value, ",," for a comma in a value, a bare key means key=on).
func (p *diskParser) drive(val string) error {
	opts := map[string]string{}
	for _, kv := range splitOpts(val) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			v = "on"
		}
		opts[k] = v
	}
	if on, _ := parseBool(opts["snapshot"]); on {
		return refuse("-drive %s: snapshot=on writes the guest's disk changes to a temporary file on the source host, "+
			"which a destination never sees: remove snapshot=on", val)
	}
	ro, _ := parseBool(opts["readonly"])
	if r, _ := parseBool(opts["read-only"]); r || opts["media"] == "cdrom" {
		ro = true
	}
	format := opts["format"]
	if format == "" {
		format = opts["driver"] // -drive driver= names the format driver too
	}
	// The protocol layer: file=NAME, or file.driver=... with file.filename=... (or a network driver's options).
	proto := map[string]any{}
	for k, v := range opts {
		if sub, ok := strings.CutPrefix(k, "file."); ok {
			setDotted(proto, sub, v)
		}
	}
	if name, ok := opts["file"]; ok && name != "" {
		if len(proto) == 0 {
			return p.filename(name, format, ro, "-drive")
		}
		proto["filename"] = name // file=NAME with file.locking=... and the like
	}
	if len(proto) == 0 {
		return nil // an empty drive (a CD drive with no medium)
	}
	if _, ok := proto["driver"]; !ok {
		proto["driver"] = "file"
	}
	return p.walk(proto, format, ro, true, "-drive", map[string]bool{})
}

// filename handles an image named by a string, as -drive file=, -hda and the like take it: a path, a
// protocol-prefixed name (nbd:..., rbd:..., iscsi://...) or json:{...}.
func (p *diskParser) filename(name, format string, ro bool, option string) error {
	if js, ok := strings.CutPrefix(name, "json:"); ok {
		var n map[string]any
		if err := json.Unmarshal([]byte(js), &n); err != nil {
			return fmt.Errorf("%s %s: bad json: filename: %w", option, name, err)
		}
		return p.walk(n, format, ro, true, option, map[string]bool{})
	}
	proto, rest, ok := protocolPrefix(name)
	switch {
	case !ok, proto == "file", proto == "host_device", proto == "host_cdrom":
		if ok {
			name = rest
		}
		return p.file(name, format, ro, true, option)
	case proto == "fat":
		return refuse("%s %s: a vvfat drive shows a directory of the source host: give the guest a disk image on shared storage", option, name)
	case proto == "nbd" || strings.HasPrefix(proto, "nbd+"):
		if err := checkNBDName(name); err != nil {
			return fmt.Errorf("%s: %w", option, err)
		}
	}
	p.disks = append(p.disks, Disk{Path: name, Format: format, ReadOnly: ro, Protocol: baseProtocol(proto), Option: option})
	return nil
}

// file adds a local image after checking its path.
func (p *diskParser) file(path, format string, ro, headerBacking bool, option string) error {
	switch {
	case path == "":
		return fmt.Errorf("%s: an image with an empty file name", option)
	case strings.HasPrefix(path, "/dev/fdset/"):
		return refuse("%s %s: the image was passed by file descriptor (-add-fd), which a destination cannot open by name: "+
			"give QEMU the image's path on shared storage", option, path)
	case !filepath.IsAbs(path):
		return refuse("%s %s: a relative image path: the destination QEMU starts in another directory; give QEMU the "+
			"image's absolute path on shared storage", option, path)
	}
	p.disks = append(p.disks, Disk{Path: filepath.Clean(path), Format: format, ReadOnly: ro, Protocol: "file",
		HeaderBacking: headerBacking, Option: option})
	return nil
}

// protocolPrefix splits "proto:rest" the way QEMU tells a protocol prefix from a path: a ':' before any '/'.
func protocolPrefix(name string) (proto, rest string, ok bool) {
	i := strings.IndexByte(name, ':')
	if i <= 0 || strings.Contains(name[:i], "/") {
		return "", name, false
	}
	return name[:i], name[i+1:], true
}

// baseProtocol names a protocol family: nbd+unix and nbd+tcp are nbd, gluster+tcp is gluster.
func baseProtocol(p string) string {
	base, _, _ := strings.Cut(p, "+")
	return base
}

// checkNBDName refuses an NBD export the destination cannot reach under the same name: one served over a unix socket
// (nbd:unix:PATH, nbd+unix://) or from a loopback address.
func checkNBDName(name string) error {
	if strings.HasPrefix(name, "nbd:unix:") || strings.HasPrefix(name, "nbd+unix:") {
		return refuse("%s: an NBD export over a unix socket is local to the source host", name)
	}
	var host string
	if u, err := url.Parse(name); err == nil && u.Host != "" {
		host = u.Hostname()
	} else if rest, ok := strings.CutPrefix(name, "nbd:"); ok {
		host, _, _ = strings.Cut(rest, ":") // nbd:HOST:PORT[:exportname=...]
	}
	if isLoopback(host) {
		return refuse("%s: an NBD export on the source host's loopback address is not reachable from the destination", name)
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// fileDrivers open a host file or device by name.
var fileDrivers = map[string]bool{"file": true, "host_device": true, "host_cdrom": true}

// childKeys are the options under which a format or filter node names its children, with whether the child is
// read-only by its role. Quorum's children come as a list.
var childKeys = []struct {
	key string
	ro  bool
}{{"file", false}, {"data-file", false}, {"backing", true}, {"image", false}, {"test", false}, {"raw", false}}

// walk adds the images of one block node and its children. format is the format driver directly above it; ro says
// an ancestor is read-only.
func (p *diskParser) walk(n map[string]any, format string, ro, headerBacking bool, option string, seen map[string]bool) error {
	if nn, _ := n["node-name"].(string); nn != "" {
		if seen[nn] {
			return fmt.Errorf("%s: block node %q refers to itself", option, nn)
		}
		seen[nn] = true
		defer delete(seen, nn)
	}
	if r, _ := parseBool(n["read-only"]); r {
		ro = true
	}
	driver, _ := n["driver"].(string)
	switch {
	case fileDrivers[driver]:
		path, _ := n["filename"].(string)
		return p.file(path, format, ro, headerBacking, option)
	case driver == "vvfat":
		return refuse("%s: a vvfat drive shows a directory of the source host: give the guest a disk image on shared storage", option)
	case driver == "null-co" || driver == "null-aio":
		return nil
	case driver == "":
		// A -drive's json: filename may leave the driver out of a protocol node that names a file.
		if path, ok := n["filename"].(string); ok {
			return p.filename(path, format, ro, option)
		}
		return fmt.Errorf("%s: a block node without a driver: %s", option, describeNode(n))
	}
	if !hasChild(n) {
		// A protocol node other than a file: a network protocol (nbd, rbd, iscsi, gluster, ssh, http, nfs, ...).
		if driver == "nbd" {
			if err := checkNBDServer(n); err != nil {
				return fmt.Errorf("%s: %w", option, err)
			}
		}
		p.disks = append(p.disks, Disk{Path: describeNode(n), Format: format, ReadOnly: ro, Protocol: driver, Option: option})
		return nil
	}
	// A format or filter node: its children. A filter passes the format above it through; a format driver is the
	// format of its "file" child.
	childFormat := driver
	if filterDrivers[driver] {
		childFormat = format
	}
	_, explicitBacking := n["backing"]
	for _, ck := range childKeys {
		c, ok := n[ck.key]
		if !ok || c == nil {
			continue
		}
		var f string
		switch ck.key {
		case "file", "image", "test":
			f = childFormat
		case "data-file", "raw":
			f = "raw" // guest data, whatever it looks like
		} // a backing file's format is its own
		if err := p.child(c, f, ro || ck.ro, !explicitBacking, option, seen); err != nil {
			return err
		}
	}
	for _, c := range quorumChildren(n) {
		if err := p.child(c, "", ro, true, option, seen); err != nil {
			return err
		}
	}
	return nil
}

// quorumChildren returns a quorum node's children: a JSON list, or keyval's children.0=..., children.1=... .
func quorumChildren(n map[string]any) []any {
	switch c := n["children"].(type) {
	case []any:
		return c
	case map[string]any:
		var out []any
		for i := 0; ; i++ {
			v, ok := c[strconv.Itoa(i)]
			if !ok {
				return out
			}
			out = append(out, v)
		}
	}
	return nil
}

// hasChild reports whether a node names a child node, as format and filter nodes do and protocol nodes do not.
func hasChild(n map[string]any) bool {
	for _, ck := range childKeys {
		if c, ok := n[ck.key]; ok && c != nil {
			return true
		}
	}
	_, ok := n["children"]
	return ok
}

// filterDrivers stack on another node without a format of their own.
var filterDrivers = map[string]bool{"throttle": true, "copy-on-read": true, "blkdebug": true, "blkverify": true,
	"blklogwrites": true, "preallocate": true, "compress": true, "copy-before-write": true, "snapshot-access": true,
	"quorum": true}

// child walks a child reference: an object, or a node-name of a -blockdev node.
func (p *diskParser) child(c any, format string, ro, headerBacking bool, option string, seen map[string]bool) error {
	switch c := c.(type) {
	case map[string]any:
		return p.walk(c, format, ro, headerBacking, option, seen)
	case string:
		n, ok := p.nodes[c]
		if !ok {
			if option == "-drive" {
				return p.filename(c, format, ro, option) // -drive file.file=NAME: a file name
			}
			return fmt.Errorf("%s: reference to block node %q, which no -blockdev defines", option, c)
		}
		return p.walk(n, format, ro, headerBacking, option, seen)
	}
	return nil
}

// collectRefs marks the node-names a node refers to.
func collectRefs(n map[string]any, into map[string]bool) {
	for _, ck := range childKeys {
		switch c := n[ck.key].(type) {
		case string:
			into[c] = true
		case map[string]any:
			collectRefs(c, into)
		}
	}
	for _, c := range quorumChildren(n) {
		switch c := c.(type) {
		case string:
			into[c] = true
		case map[string]any:
			collectRefs(c, into)
		}
	}
}

// checkNBDServer refuses an NBD blockdev whose server is a unix socket or a loopback address.
func checkNBDServer(n map[string]any) error {
	s, _ := n["server"].(map[string]any)
	if s == nil {
		return nil
	}
	switch s["type"] {
	case "unix":
		return refuse("NBD server %v: a unix socket is local to the source host", s["path"])
	case "inet", nil:
		if h, _ := s["host"].(string); isLoopback(h) {
			return refuse("NBD server %s: the source host's loopback address is not reachable from the destination", h)
		}
	}
	return nil
}

// describeNode renders a network node's options for messages, without its secrets.
func describeNode(n map[string]any) string {
	m := map[string]any{}
	for k, v := range n {
		if strings.Contains(k, "secret") || strings.Contains(k, "password") || k == "key" {
			continue
		}
		m[k] = v
	}
	b, _ := json.Marshal(m)
	return string(b)
}
