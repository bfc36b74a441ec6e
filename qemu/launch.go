package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vmscatter/vmscatter/qemu/qmp"
)

// ReadCommandLine returns the argv of a running process (/proc/PID/cmdline).
func ReadCommandLine(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, fmt.Errorf("reading QEMU command line: %w", err)
	}
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil, fmt.Errorf("process %d has an empty command line (a zombie?)", pid)
	}
	return strings.Split(string(b), "\x00"), nil
}

// DestinationPaths are the host-local files of a destination QEMU, all under one directory.
type DestinationPaths struct {
	Dir     string
	QMP     string // qmp.sock
	Serial  string // serial.log
	PIDFile string // qemu.pid
	Log     string // qemu.log (-D)
}

// PathsIn returns the destination paths for a VM directory.
func PathsIn(dir string) DestinationPaths {
	return DestinationPaths{Dir: dir, QMP: filepath.Join(dir, "qmp.sock"), Serial: filepath.Join(dir, "serial.log"),
		PIDFile: filepath.Join(dir, "qemu.pid"), Log: filepath.Join(dir, "qemu.log")}
}

// RewriteCommandLine turns a source QEMU's argv into the destination's: host-local paths move under dir (the first
// QMP or monitor socket becomes qmp.sock, the first serial or chardev log serial.log, the pidfile qemu.pid), console
// I/O on stdio goes to serial.log, -daemonize and any -incoming are dropped, and `-incoming defer` is added. Disks are
// left alone: shared storage is assumed. The first QMP socket is always at qmp.sock; if the source had none, one is
// added, because the receiver drives the destination through it.
func RewriteCommandLine(argv []string, dir string) ([]string, error) {
	if len(argv) == 0 {
		return nil, errors.New("empty QEMU command line")
	}
	if !IsQEMUBinary(argv[0]) {
		return nil, fmt.Errorf("refusing to launch %q: not a qemu-system binary", argv[0])
	}
	p := PathsIn(dir)
	r := rewriter{p: p}
	out := []string{argv[0]}
	for i := 1; i < len(argv); i++ {
		name := argv[i]
		if strings.HasPrefix(name, "--") {
			name = name[1:] // QEMU accepts both -opt and --opt
		}
		if !optionsWithArg[name] {
			switch {
			case dropAlone[name]:
			case name == "-nographic": // would put serial and monitor on stdio, which a daemon does not have
				out = append(out, "-display", "none")
			default:
				out = append(out, argv[i])
			}
			continue
		}
		if i+1 >= len(argv) {
			return nil, fmt.Errorf("QEMU option %s has no value", name)
		}
		i++
		val := argv[i]
		nv, keep := r.rewrite(name, val)
		if keep {
			out = append(out, name, nv)
		}
	}
	if !r.haveQMP {
		out = append(out, "-qmp", "unix:"+p.QMP+",server=on,wait=off")
	}
	out = append(out, "-incoming", "defer")
	return out, nil
}

// optionsWithArg lists the QEMU options that take a value (the ones we must skip over or rewrite, and the common
// rest). An unknown option is passed through unchanged; if it takes a value, its value follows it unchanged too.
var optionsWithArg = map[string]bool{
	"-qmp": true, "-qmp-pretty": true, "-monitor": true, "-mon": true, "-chardev": true, "-serial": true,
	"-pidfile": true, "-incoming": true, "-D": true, "-vnc": true, "-object": true, "-machine": true, "-M": true,
	"-m": true, "-smp": true, "-cpu": true, "-accel": true, "-drive": true, "-device": true, "-netdev": true,
	"-nic": true, "-name": true, "-kernel": true, "-initrd": true, "-append": true, "-bios": true, "-boot": true,
	"-display": true, "-vga": true, "-global": true, "-rtc": true, "-uuid": true, "-numa": true, "-smbios": true,
	"-fw_cfg": true, "-blockdev": true, "-k": true, "-L": true, "-d": true, "-trace": true, "-parallel": true,
	"-debugcon": true, "-sandbox": true, "-msg": true, "-overcommit": true, "-action": true, "-audiodev": true,
	"-spice": true, "-iscsi": true, "-mem-path": true, "-hda": true, "-hdb": true, "-cdrom": true, "-fsdev": true,
	"-virtfs": true, "-watchdog-action": true, "-compat": true, "-run-with": true, "-add-fd": true,
}

// dropAlone are flags without values that make no sense for a destination started by the receiver.
var dropAlone = map[string]bool{"-daemonize": true}

type rewriter struct {
	p       DestinationPaths
	haveQMP bool
	socks   int
	logs    int
}

func (r *rewriter) sockPath() string {
	if !r.haveQMP {
		r.haveQMP = true
		return r.p.QMP
	}
	r.socks++
	return filepath.Join(r.p.Dir, fmt.Sprintf("qmp-%d.sock", r.socks))
}

func (r *rewriter) logPath() string {
	r.logs++
	if r.logs == 1 {
		return r.p.Serial
	}
	return filepath.Join(r.p.Dir, fmt.Sprintf("serial-%d.log", r.logs))
}

// rewrite returns the destination's value for one option, or keep=false to drop it.
func (r *rewriter) rewrite(name, val string) (string, bool) {
	switch name {
	case "-incoming", "-daemonize":
		return "", false
	case "-pidfile":
		return r.p.PIDFile, true
	case "-D":
		return r.p.Log, true
	case "-qmp", "-qmp-pretty", "-monitor":
		return r.rewriteCharURI(val, true), true
	case "-serial", "-parallel", "-debugcon":
		return r.rewriteCharURI(val, false), true
	case "-vnc":
		if strings.HasPrefix(val, "unix:") {
			return "unix:" + filepath.Join(r.p.Dir, "vnc.sock") + suffixAfterComma(val), true
		}
	case "-chardev":
		return r.rewriteChardev(val), true
	}
	return val, true
}

func suffixAfterComma(v string) string {
	if i := strings.IndexByte(v, ','); i >= 0 {
		return v[i:]
	}
	return ""
}

// rewriteCharURI handles the legacy character-device syntax: unix:PATH[,opts], file:PATH, stdio, mon:stdio.
func (r *rewriter) rewriteCharURI(val string, control bool) string {
	switch {
	case strings.HasPrefix(val, "unix:"):
		if control {
			return "unix:" + r.sockPath() + suffixAfterComma(val)
		}
		r.socks++
		return "unix:" + filepath.Join(r.p.Dir, fmt.Sprintf("char-%d.sock", r.socks)) + suffixAfterComma(val)
	case strings.HasPrefix(val, "file:"):
		return "file:" + r.logPath()
	case val == "stdio" || val == "mon:stdio":
		if control {
			return "unix:" + r.sockPath() + ",server=on,wait=off"
		}
		return "file:" + r.logPath()
	}
	return val
}

// rewriteChardev handles -chardev BACKEND,id=ID,path=PATH,... .
func (r *rewriter) rewriteChardev(val string) string {
	parts := strings.Split(val, ",")
	switch parts[0] {
	case "socket":
		for i, kv := range parts {
			if strings.HasPrefix(kv, "path=") {
				parts[i] = "path=" + r.sockPath()
			}
		}
	case "file":
		for i, kv := range parts {
			if strings.HasPrefix(kv, "path=") {
				parts[i] = "path=" + r.logPath()
			}
		}
	case "stdio":
		rest := []string{"file"}
		for _, kv := range parts[1:] {
			if strings.HasPrefix(kv, "id=") {
				rest = append(rest, kv)
			}
		}
		return strings.Join(append(rest, "path="+r.logPath()), ",")
	}
	return strings.Join(parts, ",")
}

// Destination is a QEMU started by the receiver, waiting for an incoming migration.
type Destination struct {
	Paths DestinationPaths
	Cmd   *exec.Cmd
	QMP   *qmp.Client
	exit  chan struct{}
	err   error // the process's exit status, once exit is closed
}

// LaunchDestination starts QEMU with argv (already rewritten), waits for its QMP socket and connects.
func LaunchDestination(ctx context.Context, argv []string, p DestinationPaths) (*Destination, error) {
	if err := os.MkdirAll(p.Dir, 0o750); err != nil {
		return nil, err
	}
	os.Remove(p.QMP)
	bin := argv[0]
	if _, err := os.Stat(bin); err != nil {
		lp, lerr := exec.LookPath(filepath.Base(bin))
		if lerr != nil {
			return nil, fmt.Errorf("QEMU binary %s not found on this host (install qemu-system): %w", bin, err)
		}
		bin = lp
	}
	errLog, err := os.Create(filepath.Join(p.Dir, "qemu.stderr"))
	if err != nil {
		return nil, err
	}
	defer errLog.Close()
	cmd := exec.Command(bin, argv[1:]...)
	cmd.Stdout, cmd.Stderr = errLog, errLog
	// Its own process group, and no parent-death signal: a migrated VM must outlive the receiver daemon (an
	// unfinished incoming QEMU exits by itself when its stream closes).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting destination QEMU: %w", err)
	}
	d := &Destination{Paths: p, Cmd: cmd, exit: make(chan struct{})}
	go func() { d.err = cmd.Wait(); close(d.exit) }()
	for {
		if _, err := os.Stat(p.QMP); err == nil {
			q, err := qmp.Dial(ctx, p.QMP)
			if err == nil {
				d.QMP = q
				return d, nil
			}
		}
		select {
		case <-d.exit:
			msg, _ := os.ReadFile(filepath.Join(p.Dir, "qemu.stderr"))
			return nil, fmt.Errorf("destination QEMU exited at start (%v): %s", d.err, strings.TrimSpace(lastLines(string(msg), 5)))
		case <-ctx.Done():
			d.Kill()
			return nil, fmt.Errorf("destination QEMU did not open its QMP socket: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Exited is closed when the QEMU process has exited.
func (d *Destination) Exited() <-chan struct{} { return d.exit }

// ExitError describes how the process ended, with the tail of its stderr. Call it only after Exited is closed.
func (d *Destination) ExitError() error {
	msg, _ := os.ReadFile(filepath.Join(d.Paths.Dir, "qemu.stderr"))
	return fmt.Errorf("destination QEMU exited (%v): %s", d.err, strings.TrimSpace(lastLines(string(msg), 5)))
}

// Kill stops the process by PID and waits for it.
func (d *Destination) Kill() {
	if d.QMP != nil {
		d.QMP.Close()
	}
	if d.Cmd.Process != nil {
		_ = d.Cmd.Process.Kill()
	}
	<-d.exit
}

// BootFiles returns the files a QEMU command line loads into guest memory at boot: the -kernel and -initrd
// images, and the files of generic loaders (-device loader,file=PATH,...). The destination QEMU is started with the same command line, so the target has them too; vmscatter
// reads guest pages that are copies of them from the target's own files instead of sending them.
func BootFiles(argv []string) []string {
	var files []string
	for i := 1; i+1 < len(argv); i++ {
		name := argv[i]
		if strings.HasPrefix(name, "--") {
			name = name[1:]
		}
		switch {
		case name == "-kernel" || name == "-initrd":
			files = append(files, argv[i+1])
			i++
		case name == "-device":
			if f := loaderFile(argv[i+1]); f != "" {
				files = append(files, f)
			}
			i++
		case optionsWithArg[name]:
			i++ // the value of another option, which may look like a flag
		}
	}
	return files
}

// loaderFile returns the file of a generic loader device (loader,file=PATH,...), or "".
func loaderFile(dev string) string {
	parts := strings.Split(dev, ",")
	if parts[0] != "loader" && parts[0] != "driver=loader" {
		return ""
	}
	for _, kv := range parts[1:] {
		if f, ok := strings.CutPrefix(kv, "file="); ok {
			return f
		}
	}
	return ""
}
