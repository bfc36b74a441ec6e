package lab

import (
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Shaping describes the impairment of one direction of a link. The zero value means none.
type Shaping struct {
	Rate  uint64        // bits per second; 0 means unlimited
	Loss  float64       // percent of packets dropped at random, in [0, 100]
	Delay time.Duration // one-way delay added; needs sch_netem
	// To limits Loss to IPv4 packets whose destination lies in this prefix (e.g. 239.255.0.0/16: a host's multicast
	// groups); the zero value means every packet. Not with Delay.
	To netip.Prefix
}

// Shape impairs what the host sends (its eth0 egress), replacing any earlier Shape. Shape(Shaping{}) clears it.
func (h *Host) Shape(s Shaping) error { return shape(h.NS, h.Iface, s) }

// ShapeIngress impairs what the host receives, on the bridge-side end of its veth, replacing any earlier
// ShapeIngress. Use it to give one multicast receiver its own loss or rate.
func (h *Host) ShapeIngress(s Shaping) error { return shape(h.lab.BridgeNS, h.port, s) }

// shape sets dev's egress in namespace ns: netem when a delay is asked for, else htb for rate and a classic-BPF
// filter (ld rand; drop below a threshold) for loss, which need no sch_netem.
func shape(ns, dev string, s Shaping) error {
	if !(s.Loss >= 0 && s.Loss <= 100) || s.Delay < 0 || (s.To.IsValid() && (!s.To.Addr().Is4() || s.Delay > 0)) {
		return fmt.Errorf("%w: shaping %+v", ErrConfig, s)
	}
	// Clear: deleting what is absent fails, harmlessly.
	_ = tc(ns, "qdisc", "del", "dev", dev, "root")
	_ = tc(ns, "qdisc", "del", "dev", dev, "clsact")
	if s.Delay > 0 {
		args := []string{"qdisc", "add", "dev", dev, "root", "netem", "delay", fmt.Sprintf("%dus", s.Delay.Microseconds())}
		if s.Rate > 0 {
			args = append(args, "rate", fmt.Sprintf("%dbit", s.Rate))
		}
		if s.Loss > 0 {
			args = append(args, "loss", strconv.FormatFloat(s.Loss, 'f', -1, 64)+"%")
		}
		err := tc(ns, args...)
		if err != nil && strings.Contains(err.Error(), "qdisc kind is unknown") {
			return fmt.Errorf("%w: delay needs sch_netem (%v)", ErrUnsupported, err)
		}
		return err
	}
	if s.Rate > 0 {
		r := fmt.Sprintf("%dbit", s.Rate)
		if err := tc(ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1"); err != nil {
			return err
		}
		if err := tc(ns, "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", r, "ceil", r); err != nil {
			return err
		}
	}
	if s.Loss > 0 {
		if err := tc(ns, "qdisc", "add", "dev", dev, "clsact"); err != nil {
			return err
		}
		return tc(ns, "filter", "add", "dev", dev, "egress", "bpf", "da", "bytecode", lossProgram(s.Loss, s.To))
	}
	return nil
}

// lossProgram returns tc's text form of a classic BPF program that drops a packet with probability loss percent:
//
//	ld rand            ; A = a random 32-bit number (SKF_AD_OFF + SKF_AD_RANDOM)
//	jge #threshold, 0, 1
//	ret #0             ; TC_ACT_OK: pass
//	ret #2             ; TC_ACT_SHOT: drop
//
// With a valid prefix to, it first passes every packet that is not IPv4 to that prefix (at a device's egress a
// packet starts at its Ethernet header):
//
//	ldh [12]; jeq #0x800, 0, PASS        ; IPv4?
//	ld [30]; and #mask; jeq #net, 0, PASS ; its destination in the prefix?
//	... the loss above ...
//	PASS: ret #0
func lossProgram(loss float64, to netip.Prefix) string {
	threshold := uint64(math.Round(loss / 100 * (1 << 32)))
	const ldRand = 0xfffff000 + 56
	drop := []string{"6 0 0 2"}
	if threshold <= math.MaxUint32 { // under 100%: some random numbers reach it
		drop = []string{fmt.Sprintf("32 0 0 %d", uint32(ldRand)), fmt.Sprintf("53 0 1 %d", threshold), "6 0 0 0", "6 0 0 2"}
	}
	prog := drop
	if to.IsValid() {
		mask := uint32(0)
		if to.Bits() > 0 {
			mask = ^uint32(0) << (32 - to.Bits())
		}
		net := binary.BigEndian.Uint32(to.Masked().Addr().AsSlice())
		d := len(drop) // the jumps to PASS skip the checks after them and the loss
		prog = append([]string{
			"40 0 0 12", fmt.Sprintf("21 0 %d 2048", d+3),
			"32 0 0 30", fmt.Sprintf("84 0 0 %d", mask), fmt.Sprintf("21 0 %d %d", d, net),
		}, drop...)
		prog = append(prog, "6 0 0 0")
	}
	return fmt.Sprintf("%d,%s", len(prog), strings.Join(prog, ","))
}

func tc(ns string, args ...string) error {
	out, err := exec.Command("tc", append([]string{"-n", ns}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("lab: tc -n %s %s: %w: %s", ns, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
