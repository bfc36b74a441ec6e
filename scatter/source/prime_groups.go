package source

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vmscatter/vmscatter/multicast"
	"github.com/vmscatter/vmscatter/multicast/seal"
	"github.com/vmscatter/vmscatter/scatter/host"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// multicastPort is the UDP port of every prime group; groups differ by address.
const multicastPort = 7450

// openGroups sets up one multicast group per target set of two or more targets in the schedule, unless the
// transport is unicast: every member joins before any data flows (a join takes time to reach a snooping bridge),
// then a probe checks that every member hears the group. A group that does not work is served by unicast (auto)
// or fails the prime (multicast).
func (p *primer) openGroups(ctx context.Context, rep *report.Report) error {
	s := p.s
	p.groups = map[string]*primeGroup{}
	mode := s.cfg.Transport
	if mode == TransportUnicast {
		return nil
	}
	var runKey [32]byte
	if _, err := rand.Read(runKey[:]); err != nil {
		return err
	}
	var sets [][]int
	crypto := map[*primeGroup]groupCrypto{} // each group's own key and session id
	for _, b := range s.batches {
		k := targetSetKey(b.targets)
		if len(b.targets) < 2 || p.groups[k] != nil {
			continue
		}
		if len(sets) >= 250 {
			break // more target sets than group addresses: the rest go by unicast
		}
		num := len(sets) + 1
		g := &primeGroup{addr: fmt.Sprintf("239.255.%d.%d:%d", s.session[0], num, multicastPort), targets: b.targets}
		crypto[g] = newGroupCrypto(runKey, s.session, num)
		p.groups[k] = g
		sets = append(sets, b.targets)
	}
	if len(sets) == 0 {
		return nil
	}
	iface := s.cfg.Iface
	for _, t := range s.targets {
		if iface == "" && t.sc != nil {
			iface, _ = host.IfaceFor(t.sc.LocalAddr())
		}
	}
	fail := func(g *primeGroup, err error) error {
		if mode == TransportMulticast {
			return fmt.Errorf("multicast group %s does not work (%v): use --transport auto or unicast", g.addr, err)
		}
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("multicast group %s: %v; its contents go by unicast", g.addr, err))
		return nil
	}
	// Join early: every member of every group, before the first byte. JOIN carries the digest salt: each member
	// checks the group's contents against the digests DIGESTS sends it (flushGroup).
	salt := s.digester.Salt()
	for _, g := range p.groups {
		gc := crypto[g]
		for _, ti := range g.targets {
			t := s.targets[ti]
			var local []int
			for vmi, vm := range s.vms {
				if vm.target == t {
					local = append(local, vmi)
				}
			}
			err := t.sc.SendJSON(wire.FrameJoin, wire.JoinMsg{Group: g.addr, ReceiverID: uint16(ti), Key: gc.key[:],
				SessionID: gc.session, RateBps: s.cfg.RateBps, LocalSlots: local, Salt: salt[:]})
			if err == nil {
				var e wire.JoinedMsg
				if err = t.sc.Expect(ctx, wire.FrameJoined, &e); err == nil && e.Error != "" {
					err = errors.New(e.Error)
				}
			}
			if err != nil {
				g.targets = nil // mark as broken below
				if ferr := fail(g, fmt.Errorf("%s could not join: %w", t.addr, err)); ferr != nil {
					return ferr
				}
				break
			}
		}
	}
	for _, g := range p.groups {
		if g.targets == nil || iface == "" {
			continue
		}
		addr, err := netip.ParseAddrPort(g.addr)
		if err != nil {
			return err
		}
		tr, err := multicast.ListenMulticast(ctx, multicast.MulticastConfig{Group: addr, Iface: iface})
		if err != nil {
			if ferr := fail(g, err); ferr != nil {
				return ferr
			}
			continue
		}
		ms, err := multicast.NewSender(multicast.Config{Key: crypto[g].key, SessionID: crypto[g].session, RateBps: s.cfg.RateBps}, tr)
		if err != nil {
			tr.Close()
			return err
		}
		want := make([]multicast.ReceiverID, len(g.targets))
		for i, ti := range g.targets {
			want[i] = multicast.ReceiverID(ti)
		}
		heard, rtt, err := ms.Probe(ctx, want, multicast.DefaultProbeTimeout)
		g.rtt = rtt
		if err == nil && len(heard) < len(want) {
			err = fmt.Errorf("%d of %d targets heard the probe", len(heard), len(want))
		}
		if err != nil {
			ms.Close()
			if ferr := fail(g, err); ferr != nil {
				return ferr
			}
			continue
		}
		g.sender = ms
		rep.Transport = TransportMulticast
	}
	// Broken groups: their batches go by unicast.
	for k, g := range p.groups {
		if g.sender == nil {
			delete(p.groups, k)
		}
	}
	return nil
}

// groupCrypto is one group's key and session id. Every group has its own key, derived from the run's data key and the
// group's session id (which carries the group's number), so that no two groups seal under one key: the sender is node
// 0xFFFF in every group and each target keeps its receiver id across groups, and their packet numbers start at the
// wall clock, so groups set up in the same nanosecond would otherwise reuse (key, nonce) pairs. A target is told the
// keys of its own groups only.
type groupCrypto struct {
	key     [32]byte
	session uint64
}

func newGroupCrypto(runKey [32]byte, session wire.SessionID, num int) groupCrypto {
	sid := seal.GroupSession(binary.BigEndian.Uint64(session[:8]), uint16(num))
	return groupCrypto{key: seal.GroupKey(runKey, sid), session: sid}
}

// recheckGroup probes a group again as its data is about to flow. The probe at openGroups may be answered before
// the network's snooping switches have learned the group (they flood a group they do not know yet), and a switch
// that then leaves the source's port out of it carries the data to the receivers and none of their
// acknowledgements back: the sender would hear nothing for 3 s, drop them as silent and send the group's contents
// by unicast. IGMPv2 report suppression did that in the lab (docs/benchmarks.md). A group whose members do not
// answer now goes by unicast at once.
func (p *primer) recheckGroup(ctx context.Context, g *primeGroup, rep *report.Report) {
	want := make([]multicast.ReceiverID, len(g.targets))
	for i, ti := range g.targets {
		want[i] = multicast.ReceiverID(ti)
	}
	heard, _, err := g.sender.Probe(ctx, want, max(recheckTimeout, 10*g.rtt))
	if ctx.Err() != nil || (err == nil && len(heard) == len(want)) {
		return
	}
	if err == nil {
		err = fmt.Errorf("%d of %d targets answered its probe", len(heard), len(want))
	}
	rep.Warnings = append(rep.Warnings, fmt.Sprintf("multicast group %s stopped answering before its data (%v); its contents go by unicast (behind IGMP snooping, run the querier with IGMPv3)", g.addr, err))
	p.s.log.Warn("multicast group stopped answering; its contents go by unicast", "group", g.addr, "err", err)
	p.multicastBytes += int64(g.sender.Stats().Transport.BytesSent)
	g.sender.Close()
	g.sender = nil
}

// recheckTimeout is the least time recheckGroup waits for the members' answers: as long as the first probe's
// (multicast.DefaultProbeTimeout), and far below the 3 s of silence it saves.
const recheckTimeout = multicast.DefaultProbeTimeout

// closeGroups ends every group: the members leave, the senders close, and their bytes count as prime bytes.
func (p *primer) closeGroups() {
	for _, g := range p.groups {
		for _, ti := range g.targets {
			_ = p.s.targets[ti].sc.SendJSON(wire.FrameLeave, wire.LeaveMsg{Group: g.addr})
		}
		if g.sender != nil {
			st := g.sender.Stats()
			p.multicastBytes += int64(st.Transport.BytesSent)
			p.s.log.Debug("multicast group closed", "group", g.addr, "sent", st.Transport.BytesSent, "data", st.Engine.DataBytes,
				"repair", st.Engine.RepairBytes, "rate_bps", st.Engine.RateBps, "cuts", st.Engine.RateCuts, "undos", st.Engine.RateUndos)
			g.sender.Close()
		}
	}
}
