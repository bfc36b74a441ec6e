// Package lab builds a network of namespaces for integration tests: one network namespace per host, each with one
// veth interface (eth0) plugged into a bridge that lives in a namespace of its own. Nothing is linked to the root
// namespace, so no packet can leave the machine. Hosts get 198.18.0.x/24 addresses (TEST-NET-2 benchmarking space)
// and a 224.0.0.0/4 route on eth0, so multicast to 239.255.0.0/16 works without further setup.
//
// Use from a test (as root; skip with a reason otherwise):
//
//	l, err := lab.New(ctx, lab.Config{Hosts: []string{"src", "a", "b"}, MTU: 9000})
//	if err != nil { t.Fatal(err) }
//	t.Cleanup(func() { l.Close() })
//	a := l.Host("a")
//	var ln net.Listener
//	err = a.Do(func() (err error) { ln, err = net.Listen("tcp", a.Addr.String()+":7400"); return })
//	cmd := l.Host("src").Command(ctx, "ping", "-c1", a.Addr.String())
//	err = a.ShapeIngress(lab.Shaping{Rate: 100e6, Loss: 1})
//
// Sockets opened inside Host.Do stay in that host's namespace and can be used from any goroutine afterwards.
// Processes started with Host.Command must end before Close: a namespace that still holds a process outlives its
// name. Sweep removes the namespaces a crashed run left behind.
//
// Hosts share the machine's file system: `ip netns exec` gives a process a mount namespace of its own, but as a copy
// of the caller's (to mount the namespace's /sys), so a path names the same file from every host and from the
// caller. Any directory is the lab's shared storage: disk images a guest on one host uses are there, at the same
// absolute path, for a destination QEMU on another host, as on a cluster with shared storage. QEMU's image locks (OFD
// locks) are one kernel's too, so they act between hosts of the lab as they do over NFS with working locks.
//
// AddGuestNet gives every host a network for guests' NICs: a bridge of its own with a gateway address and tap devices
// that guests' QEMUs attach to, the same names on every host (see GuestNet).
//
// Shaping uses htb for rate and a classic-BPF tc filter for random loss, which work on minimal kernels; delay needs
// sch_netem, and Shape reports ErrUnsupported where the kernel lacks it.
package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
)

// Config describes a lab.
type Config struct {
	Hosts  []string     // host names: 1 to MaxHosts of [a-z0-9]{1,12}, unique
	MTU    int          // of every veth and the bridge; default 1500, 9000 for jumbo frames
	Prefix string       // namespace name prefix; default "vms<pid>_<n>", unique within the process
	Subnet netip.Prefix // host addresses; default 198.18.0.0/24; must lie inside 198.18.0.0/15
	// Snooping turns on IGMP snooping with a querier on the bridge (a join then takes effect after the host's
	// report). Off by default: the bridge floods multicast to every port. The querier speaks IGMPv3, so that the
	// hosts do too: under the bridge's default IGMPv2 querier the hosts fell back to IGMPv2, whose report
	// suppression (a host that hears another member's report for the group drops its own) left a member's port
	// out of the bridge's group table in about one join in ten. When that member was the source, the receivers'
	// acknowledgements never reached it, the sender dropped them as silent after 3 s and primed the group's
	// contents by unicast (the bench's "multicast receiver dropped" flake: 9 s runs instead of 5).
	Snooping bool
}

// MaxHosts bounds the hosts of one lab.
const MaxHosts = 200

// Typed failures.
var (
	ErrConfig      = errors.New("lab: bad config")
	ErrUnsupported = errors.New("lab: not supported by this kernel")
	ErrClosed      = errors.New("lab: closed")
)

var (
	hostNameRE = regexp.MustCompile(`^[a-z0-9]{1,12}$`)
	prefixRE   = regexp.MustCompile(`^[A-Za-z0-9_]{1,32}$`)
	benchNet   = netip.MustParsePrefix("198.18.0.0/15")
	labCount   atomic.Int64
)

// Lab is a set of namespaces. Its methods are safe for concurrent use.
type Lab struct {
	Prefix   string
	BridgeNS string

	hosts map[string]*Host
	order []*Host

	mu      sync.Mutex
	created []string // namespaces to delete, in creation order
	closed  bool
}

// Host is one namespace of a lab.
type Host struct {
	Name  string
	NS    string     // network namespace name (/run/netns/NS)
	Iface string     // the host's interface, "eth0"
	Addr  netip.Addr // on Iface
	port  string     // the bridge-side end of the host's veth, in the bridge namespace
	lab   *Lab
}

// New creates the lab. On failure it removes whatever it had created.
func New(ctx context.Context, cfg Config) (_ *Lab, err error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	l := &Lab{Prefix: cfg.Prefix, BridgeNS: cfg.Prefix + "-br", hosts: map[string]*Host{}}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	if err := l.addNS(ctx, l.BridgeNS); err != nil {
		return nil, err
	}
	snoop := "mcast_snooping 0"
	if cfg.Snooping {
		snoop = "mcast_snooping 1 mcast_querier 1 mcast_igmp_version 3"
	}
	brBatch := []string{
		"link set lo up",
		"link add br0 mtu " + fmt.Sprint(cfg.MTU) + " type bridge " + snoop,
		"link set br0 up",
	}
	addr := cfg.Subnet.Addr()
	for i, name := range cfg.Hosts {
		addr = addr.Next()
		h := &Host{Name: name, NS: cfg.Prefix + "-" + name, Iface: "eth0", Addr: addr, port: fmt.Sprintf("v%d", i), lab: l}
		if err := l.addNS(ctx, h.NS); err != nil {
			return nil, err
		}
		l.hosts[name], l.order = h, append(l.order, h)
		brBatch = append(brBatch,
			fmt.Sprintf("link add %s mtu %d type veth peer name eth0 mtu %d netns %s", h.port, cfg.MTU, cfg.MTU, h.NS),
			fmt.Sprintf("link set %s master br0 up", h.port))
	}
	if err := ipBatch(ctx, l.BridgeNS, brBatch); err != nil {
		return nil, err
	}
	for _, h := range l.order {
		if err := h.Do(disableIPv6); err != nil { // no router solicitations or MLD in the byte counters
			return nil, err
		}
		err := ipBatch(ctx, h.NS, []string{
			"link set lo up",
			fmt.Sprintf("addr add %s/%d dev eth0", h.Addr, cfg.Subnet.Bits()),
			"link set eth0 up",
			"route add 224.0.0.0/4 dev eth0",
		})
		if err != nil {
			return nil, err
		}
	}
	return l, nil
}

func (c *Config) fill() error {
	if len(c.Hosts) == 0 || len(c.Hosts) > MaxHosts {
		return fmt.Errorf("%w: %d hosts, want 1 to %d", ErrConfig, len(c.Hosts), MaxHosts)
	}
	seen := map[string]bool{}
	for _, h := range c.Hosts {
		if !hostNameRE.MatchString(h) || h == "br" || seen[h] {
			return fmt.Errorf("%w: host name %q (want unique [a-z0-9]{1,12}, not \"br\")", ErrConfig, h)
		}
		seen[h] = true
	}
	if c.MTU == 0 {
		c.MTU = 1500
	}
	if c.MTU < 576 || c.MTU > 65535 {
		return fmt.Errorf("%w: MTU %d", ErrConfig, c.MTU)
	}
	if c.Prefix == "" {
		c.Prefix = fmt.Sprintf("vms%d_%d", os.Getpid(), labCount.Add(1))
	}
	if !prefixRE.MatchString(c.Prefix) {
		return fmt.Errorf("%w: prefix %q (want [A-Za-z0-9_]{1,32})", ErrConfig, c.Prefix)
	}
	if !c.Subnet.IsValid() {
		c.Subnet = netip.MustParsePrefix("198.18.0.0/24")
	}
	c.Subnet = c.Subnet.Masked()
	if !c.Subnet.Addr().Is4() || c.Subnet.Bits() < benchNet.Bits() || !benchNet.Contains(c.Subnet.Addr()) ||
		1<<(32-c.Subnet.Bits()) < len(c.Hosts)+2 {
		return fmt.Errorf("%w: subnet %v (want room for %d hosts inside %v)", ErrConfig, c.Subnet, len(c.Hosts), benchNet)
	}
	return nil
}

// addNS creates a namespace and registers it for deletion.
func (l *Lab) addNS(ctx context.Context, name string) error {
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Errorf("lab: ip netns add %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.created = append(l.created, name)
	return nil
}

// ipBatch runs ip commands inside namespace ns, stopping at the first failure.
func ipBatch(ctx context.Context, ns string, cmds []string) error {
	cmd := exec.CommandContext(ctx, "ip", "-n", ns, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("lab: ip -n %s -batch: %w: %s", ns, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func disableIPv6() error {
	err := os.WriteFile("/proc/sys/net/ipv6/conf/all/disable_ipv6", []byte("1"), 0)
	if errors.Is(err, os.ErrNotExist) { // kernel without IPv6
		return nil
	}
	if err == nil {
		err = os.WriteFile("/proc/sys/net/ipv6/conf/default/disable_ipv6", []byte("1"), 0)
	}
	return err
}

// Host returns the named host, or nil.
func (l *Lab) Host(name string) *Host { return l.hosts[name] }

// Hosts returns the hosts in the order of Config.Hosts.
func (l *Lab) Hosts() []*Host { return append([]*Host(nil), l.order...) }

// Close deletes every namespace the lab created, which removes their interfaces and qdiscs. It is idempotent and
// reports the deletions that failed.
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	var errs []error
	for i := len(l.created) - 1; i >= 0; i-- {
		if err := deleteNS(l.created[i]); err != nil {
			errs = append(errs, err)
		}
	}
	l.created = nil
	return errors.Join(errs...)
}

func deleteNS(name string) error {
	out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput()
	if err != nil {
		if _, serr := os.Stat("/run/netns/" + name); errors.Is(serr, os.ErrNotExist) {
			return nil // already gone
		}
		return fmt.Errorf("lab: ip netns delete %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Sweep deletes the namespaces whose names start with prefix followed by '-' or '_': the leftovers of a lab (or of
// every lab of a process, with prefix "vms<pid>") that was never closed. It returns the names it deleted.
func Sweep(prefix string) ([]string, error) {
	if !prefixRE.MatchString(prefix) {
		return nil, fmt.Errorf("%w: prefix %q", ErrConfig, prefix)
	}
	names, err := namespaces()
	if err != nil {
		return nil, err
	}
	var deleted []string
	var errs []error
	for _, n := range names {
		if !strings.HasPrefix(n, prefix+"-") && !strings.HasPrefix(n, prefix+"_") {
			continue
		}
		if err := deleteNS(n); err != nil {
			errs = append(errs, err)
			continue
		}
		deleted = append(deleted, n)
	}
	return deleted, errors.Join(errs...)
}

// namespaces lists the named network namespaces.
func namespaces() ([]string, error) {
	ents, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}
