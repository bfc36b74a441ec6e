package lab

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
)

// GuestNet is the network of the guests' NICs: on every host, a bridge (GuestBridge) holding the gateway address and
// one tap device of each name in Taps, so that a guest's QEMU finds its tap on whichever host it runs, the source or
// the target it moved to, as on hosts whose VM networks are the same on each. Each host's bridge is its own: a guest
// reaches the host it runs on (its gateway address, where a test runs a responder), not the other hosts.
type GuestNet struct {
	Prefix netip.Prefix // the guests' addresses; default 198.19.0.0/24; inside 198.18.0.0/15 and apart from Config.Subnet
	Taps   []string     // tap device names, [a-z0-9]{1,15}, unique
}

// GuestBridge is the name of the guests' bridge on every host.
const GuestBridge = "vmbr0"

var tapNameRE = regexp.MustCompile(`^[a-z0-9]{1,15}$`)

// AddGuestNet sets up g on every host and returns the gateway address (the first of the prefix, on every host's
// bridge). Closing the lab removes it with the namespaces.
func (l *Lab) AddGuestNet(ctx context.Context, g GuestNet) (netip.Addr, error) {
	if !g.Prefix.IsValid() {
		g.Prefix = netip.MustParsePrefix("198.19.0.0/24")
	}
	g.Prefix = g.Prefix.Masked()
	if !g.Prefix.Addr().Is4() || g.Prefix.Bits() < benchNet.Bits() || !benchNet.Contains(g.Prefix.Addr()) ||
		1<<(32-g.Prefix.Bits()) < len(g.Taps)+3 {
		return netip.Addr{}, fmt.Errorf("%w: guest network %v (want room for %d guests inside %v)", ErrConfig, g.Prefix, len(g.Taps), benchNet)
	}
	seen := map[string]bool{GuestBridge: true, "eth0": true, "lo": true}
	for _, t := range g.Taps {
		if !tapNameRE.MatchString(t) || seen[t] {
			return netip.Addr{}, fmt.Errorf("%w: tap name %q (want unique [a-z0-9]{1,15})", ErrConfig, t)
		}
		seen[t] = true
	}
	gw := g.Prefix.Addr().Next()
	for _, h := range l.order {
		if h.Addr == gw || g.Prefix.Contains(h.Addr) {
			return netip.Addr{}, fmt.Errorf("%w: guest network %v overlaps host %s's address %v", ErrConfig, g.Prefix, h.Name, h.Addr)
		}
		cmds := []string{
			"link add " + GuestBridge + " type bridge",
			fmt.Sprintf("addr add %s/%d dev %s", gw, g.Prefix.Bits(), GuestBridge),
			"link set " + GuestBridge + " up",
		}
		for _, t := range g.Taps {
			cmds = append(cmds, "tuntap add dev "+t+" mode tap", "link set "+t+" master "+GuestBridge+" up")
		}
		if err := ipBatch(ctx, h.NS, cmds); err != nil {
			return netip.Addr{}, err
		}
	}
	return gw, nil
}
