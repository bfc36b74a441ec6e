package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vmscatter/vmscatter/bench/fixture"
	"github.com/vmscatter/vmscatter/bench/guest/guestlog"
	"github.com/vmscatter/vmscatter/bench/lab"
)

// BigShape is the cluster's realistic guest: GiBs of RAM and 2 vCPUs, a qcow2 disk of its own on the shared storage,
// a virtio NIC on the hosts' guest network, and most of its RAM filled by the guest with a mix of:
//
//   - page cache of a file all guests share: the first Cache × RAM bytes of one raw image on the shared storage, made
//     of the source host's libraries and programs (fixture.BuildCacheImage), which every guest reads into its page
//     cache, so that those pages are identical across guests;
//   - private anonymous data: Private × RAM bytes of the workload's working set, every page random and the guest's
//     own (pageset pages with the guest's salt), of which Rate pages a second are rewritten;
//   - zero pages: the rest, less what the kernel, the initramfs and the workload take (about 100 MiB measured).
//
// After a move the guest verifies all of it where it runs: its working set, its page cache (against the sums it noted
// when it first read the image), its disk's blocks, and its network (UDP echoes from the responder of the host it
// runs on; Cluster.Echoes counts them on the host side).
type BigShape struct {
	MemoryMiB int     // per guest; default 1536 (under TCG 8 KiB less, fixture.GuestOptions.MemArg)
	CPUs      int     // default 2
	Cache     float64 // fraction of RAM in the shared image's page cache; default 0.35
	Private   float64 // fraction of RAM of private anonymous data; default 0.35
	Rate      float64 // private pages rewritten per second; default 200
	// VPeriod is the time for one verification pass over the working set and over the page cache each; default 20 s
	// (a pass over hundreds of MiB costs a TCG guest seconds of CPU).
	VPeriod time.Duration
}

// MaxBigGuests bounds the guests of one StartGuests call of a big cluster: the taps every host gets.
const MaxBigGuests = 8

// echoPort is the UDP port of every host's echo responder on the guest network.
const echoPort = 7

// fill sets the defaults.
func (s *BigShape) fill() error {
	if s.MemoryMiB == 0 {
		s.MemoryMiB = 1536
	}
	if s.CPUs == 0 {
		s.CPUs = 2
	}
	if s.Cache == 0 && s.Private == 0 {
		s.Cache, s.Private = 0.35, 0.35
	}
	if s.Rate == 0 {
		s.Rate = 200
	}
	if s.VPeriod == 0 {
		s.VPeriod = 20 * time.Second
	}
	// What the kernel and the initramfs hold must fit beside the mix, or the guest evicts its page cache.
	const reservedMiB = 160
	if s.MemoryMiB < 512 || s.Cache < 0 || s.Private < 0 ||
		(s.Cache+s.Private)*float64(s.MemoryMiB) > float64(s.MemoryMiB-reservedMiB) {
		return fmt.Errorf("bench: big guests of %d MiB with %.2f page cache and %.2f private: want at least 512 MiB, and "+
			"%d MiB left for the guest's kernel", s.MemoryMiB, s.Cache, s.Private, reservedMiB)
	}
	return nil
}

// bytesOf is fraction f of the guest's RAM, in whole pages.
func (s BigShape) bytesOf(f float64) int64 {
	return int64(f*float64(s.MemoryMiB)*(1<<20)) &^ 4095
}

// String describes the shape, for results and logs.
func (s BigShape) String() string {
	return fmt.Sprintf("%d MiB, %d vCPUs, %.0f%% shared page cache, %.0f%% private anonymous (%g pages/s rewritten), "+
		"the rest zero; a disk and a NIC", s.MemoryMiB, s.CPUs, 100*s.Cache, 100*s.Private, s.Rate)
}

// bigNet is what a big cluster adds to its lab: the guest network and its echo responders.
type bigNet struct {
	gateway netip.Addr
	prefix  netip.Prefix
	conns   []*net.UDPConn // by host: source, then targets
	mu      sync.Mutex
	echoes  []map[netip.Addr]uint64 // by host: datagrams echoed, by guest address
	wg      sync.WaitGroup
}

// setUpBig gives every host the guest network with MaxBigGuests taps and an echo responder on its gateway address,
// and builds the shared cache image on the shared storage.
func (c *Cluster) setUpBig(ctx context.Context) error {
	s := c.cfg.Big
	var taps []string
	for i := range MaxBigGuests {
		taps = append(taps, bigTap(i))
	}
	b := &bigNet{prefix: netip.MustParsePrefix("198.19.0.0/24")}
	gw, err := c.Lab.AddGuestNet(ctx, lab.GuestNet{Prefix: b.prefix, Taps: taps})
	if err != nil {
		return err
	}
	b.gateway = gw
	c.big = b
	hosts := append([]*lab.Host{c.Source}, c.Targets...)
	for i, h := range hosts {
		var conn *net.UDPConn
		err := h.Do(func() (err error) {
			conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(gw, echoPort)))
			return err
		})
		if err != nil {
			return fmt.Errorf("echo responder on %s: %w", h.Name, err)
		}
		b.conns = append(b.conns, conn)
		b.echoes = append(b.echoes, map[netip.Addr]uint64{})
		b.wg.Add(1)
		go b.serve(i, conn)
	}
	return fixture.BuildCacheImage(ctx, c.cacheImage(), s.bytesOf(s.Cache))
}

// serve echoes every datagram back to its sender and counts it, until the connection is closed.
func (b *bigNet) serve(host int, conn *net.UDPConn) {
	defer b.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		_, _ = conn.WriteToUDPAddrPort(buf[:n], from)
		b.mu.Lock()
		b.echoes[host][from.Addr()]++
		b.mu.Unlock()
	}
}

func (b *bigNet) close() {
	for _, c := range b.conns {
		c.Close()
	}
	b.wg.Wait()
}

// Echoes returns how many datagrams the echo responder of a host (0 the source, i+1 target i) has answered for guest
// guestIndex of a big cluster's StartGuests call (its address follows from that index).
func (c *Cluster) Echoes(host int, guestIndex int) uint64 {
	if c.big == nil {
		return 0
	}
	c.big.mu.Lock()
	defer c.big.mu.Unlock()
	return c.big.echoes[host][c.bigAddr(guestIndex).Addr()]
}

func bigTap(i int) string { return fmt.Sprintf("vt%d", i+1) }

// bigAddr is the address of guest i of a StartGuests call.
func (c *Cluster) bigAddr(i int) netip.Prefix {
	a := c.big.gateway
	for range 10 + i {
		a = a.Next()
	}
	return netip.PrefixFrom(a, c.big.prefix.Bits())
}

func (c *Cluster) cacheImage() string { return filepath.Join(c.SharedDir(), "shared-cache.img") }

// bigOptions fills in guest i's options of the big shape, keeping what the caller set beyond it (its name's paths,
// extra arguments).
func (c *Cluster) bigOptions(o fixture.GuestOptions, i int) fixture.GuestOptions {
	s := c.cfg.Big
	o.MemoryMiB, o.CPUs = s.MemoryMiB, s.CPUs
	seed := o.Workload.Seed
	if seed == 0 {
		seed = 7
	}
	o.Workload = fixture.Workload{WSS: s.bytesOf(s.Private), Rate: s.Rate, Seed: seed, Private: 1, VPeriod: s.VPeriod,
		DiskBlocks: 256, DiskRate: 10, DiskVPeriod: 5 * time.Second}
	o.Cache = fixture.CacheImage{Path: c.cacheImage(), Bytes: s.bytesOf(s.Cache), VPeriod: s.VPeriod}
	o.NIC = fixture.NIC{Tap: bigTap(i), MAC: fmt.Sprintf("52:54:00:5c:00:%02x", i+1), Addr: c.bigAddr(i),
		Peer: netip.AddrPortFrom(c.big.gateway, echoPort)}
	o.Netns = c.Source.NS
	return o
}

// waitFilled waits for a big guest's first progress line, which its workload prints once it has filled its memory and
// read its page cache, and fails at once if the workload ends instead (a missing device, a bad flag: its console says).
func waitFilled(ctx context.Context, g *fixture.Guest) error {
	var filled, exited bool
	var lines []string
	err := fixture.Follow(ctx, g.SerialPath, 100*time.Millisecond, g.Done(), func(line string, _ time.Time) bool {
		_, filled = guestlog.ParseOK(line)
		exited = strings.Contains(line, guestlog.ExitedMarker)
		if lines = append(lines, line); len(lines) > 20 {
			lines = lines[1:]
		}
		return !filled && !exited
	})
	switch {
	case filled:
		return nil
	case exited:
		return fmt.Errorf("big guest %s: its workload ended before it filled its memory; console:\n%s", g.Name, strings.Join(lines, "\n"))
	}
	return fmt.Errorf("big guest %s did not fill its memory: %w; console:\n%s", g.Name, err, strings.Join(lines, "\n"))
}

// BigFillTimeout bounds the wait for a big guest's workload to fill its memory and read its page cache after boot.
const BigFillTimeout = 10 * time.Minute
