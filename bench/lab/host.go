package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"runtime"

	"golang.org/x/sys/unix"
)

// Command returns a command that runs name inside the host's namespace (through `ip netns exec`, which also gives
// it the namespace's /sys). The caller starts it and must end it before Lab.Close.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Do runs f on an OS thread switched into the host's namespace, and waits for it. Sockets f opens belong to the
// namespace for their whole life. Only f's own goroutine is in the namespace: goroutines it starts are not. If the
// thread cannot switch back, it is thrown away rather than reused.
func (h *Host) Do(f func() error) error {
	h.lab.mu.Lock()
	closed := h.lab.closed
	h.lab.mu.Unlock()
	if closed {
		return ErrClosed
	}
	type result struct {
		err   error
		panic any
	}
	done := make(chan result, 1)
	go func() {
		var r result
		defer func() {
			if p := recover(); p != nil {
				r.panic = p
			}
			done <- r
		}()
		runtime.LockOSThread() // never unlocked if the switch back fails: the thread then dies with the goroutine
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			r.err = fmt.Errorf("lab: opening own netns: %w", err)
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open("/run/netns/"+h.NS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			r.err = fmt.Errorf("lab: opening netns %s: %w", h.NS, err)
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			r.err = fmt.Errorf("lab: entering netns %s: %w", h.NS, err)
			return
		}
		defer func() {
			if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
				runtime.UnlockOSThread()
			}
		}()
		r.err = f()
	}()
	r := <-done
	if r.panic != nil {
		panic(r.panic)
	}
	return r.err
}

// Counters returns the byte counters of the host's interface.
func (h *Host) Counters() (rxBytes, txBytes uint64, err error) {
	return counters(h.NS, h.Iface)
}

// PortCounters returns the byte counters of the bridge-side end of the host's veth: rx is what the host sent, tx
// what the bridge delivered to it (after ingress shaping).
func (h *Host) PortCounters() (rxBytes, txBytes uint64, err error) {
	return counters(h.lab.BridgeNS, h.port)
}

func counters(ns, dev string) (rx, tx uint64, err error) {
	out, err := exec.Command("ip", "-n", ns, "-s", "-j", "link", "show", "dev", dev).Output()
	if err != nil {
		return 0, 0, fmt.Errorf("lab: ip -n %s -s link show %s: %w", ns, dev, err)
	}
	var links []struct {
		Stats64 struct {
			RX struct{ Bytes uint64 } `json:"rx"`
			TX struct{ Bytes uint64 } `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		return 0, 0, fmt.Errorf("lab: unexpected ip -j output for %s in %s: %v", dev, ns, err)
	}
	return links[0].Stats64.RX.Bytes, links[0].Stats64.TX.Bytes, nil
}
