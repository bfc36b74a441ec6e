// Command workload is the guest program of vmscatter's test VMs. It keeps a working set of pages in memory (see
// package pageset), dirties them at a set rate in a sequential (NPB MG-like) or random (NPB IS-like) pattern,
// re-verifies every page continuously, and reports on stdout, the guest's serial console, in the format of package
// guestlog. Given a disk (-disk /dev/vda), it does the same with blocks of the disk: it rewrites them at -drate with
// O_DIRECT and fdatasync, and reads every one back with O_DIRECT in each -dvperiod. Given a read-only disk shared by
// guests (-cache /dev/vdb -cbytes 512M), it keeps that much of it in its page cache and checks it in each -cvperiod.
// Given a peer (-peer ADDR:PORT, on the network of its NIC), it sends it a UDP datagram every period and counts the
// echoes.
//
// It is built static (CGO_ENABLED=0) into the test initramfs as /bin/workload, where the init script runs it as
//
//	/bin/workload -kcmdline /proc/cmdline
//
// so that kernel command-line words vms.<flag>=<value> (vms.wss=32M vms.rate=2000 vms.pattern=random vms.seed=7
// vms.period=100ms ...) set its flags.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "workload:", err)
		os.Exit(2)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("workload", flag.ContinueOnError)
	var cfg config
	cfg.register(fs)
	kcmdline := fs.String("kcmdline", "", "read vms.<flag>=<value> words from this file (e.g. /proc/cmdline)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *kcmdline != "" {
		b, err := os.ReadFile(*kcmdline)
		if err != nil {
			return err
		}
		for _, w := range applyCmdline(fs, string(b)) {
			fmt.Fprintf(out, "warn %s\n", w)
		}
	}
	if err := cfg.validate(); err != nil {
		return err
	}
	mem, err := syscall.Mmap(-1, 0, int(cfg.wss), syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("mapping %d bytes: %w", cfg.wss, err)
	}
	var dev blockDevice
	if cfg.disk != "" {
		f, err := openDisk(cfg.disk, cfg.dblocks, 30*time.Second)
		if err != nil {
			return err
		}
		defer f.Close()
		dev = f
	}
	var cache io.ReaderAt
	if cfg.cache != "" {
		f, err := openCache(cfg.cache, int64(cfg.cbytes), 30*time.Second)
		if err != nil {
			return err
		}
		defer f.Close()
		cache = f
	}
	e, err := newEngine(cfg, mem, dev, cache, time.Now())
	if err != nil {
		return err
	}
	e.begin(time.Now(), out)
	tick := min(cfg.period, 10*time.Millisecond)
	for {
		e.advance(time.Now(), out)
		time.Sleep(tick)
	}
}

// applyCmdline sets flags from vms.<name>=<value> words and returns warnings for the words it could not apply.
func applyCmdline(fs *flag.FlagSet, cmdline string) []string {
	var warns []string
	for _, w := range strings.Fields(cmdline) {
		kv, ok := strings.CutPrefix(w, "vms.")
		if !ok {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		if k == "kcmdline" {
			continue
		}
		if err := fs.Set(k, v); err != nil {
			warns = append(warns, fmt.Sprintf("cmdline word %q: %v", w, err))
		}
	}
	return warns
}
