package dest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/multicast"
	"github.com/vmscatter/vmscatter/scatter/host"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// groupSet is a receiver's multicast memberships for one session: one reliable-multicast receiver per group,
// each delivering into the session's content store through the check of the contents' digests (verify). Owned by
// the control connection's goroutine; close ends them.
type groupSet struct {
	log    *slog.Logger
	verify *groupVerifier

	mu     sync.Mutex
	groups map[string]*groupMember
}

func newGroupSet(log *slog.Logger, store *dedup.ContentStore) *groupSet {
	return &groupSet{log: log, verify: newGroupVerifier(store, log)}
}

type groupMember struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// join opens a socket on the group (the kernel joins at once: a snooping bridge needs the time) and runs a
// receiver on it until leave or close.
func (g *groupSet) join(ctx context.Context, m wire.JoinMsg, local net.Addr, iface string) error {
	group, err := netip.ParseAddrPort(m.Group)
	if err != nil {
		return fmt.Errorf("group %q: %w", m.Group, err)
	}
	if len(m.Key) != 32 {
		return errors.New("data key must be 32 bytes")
	}
	if err := g.verify.setSalt(m.Salt); err != nil {
		return err
	}
	if iface == "" {
		if iface, err = host.IfaceFor(local); err != nil {
			return err
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.groups == nil {
		g.groups = map[string]*groupMember{}
	}
	if g.groups[m.Group] != nil {
		return nil
	}
	tr, err := multicast.ListenMulticast(ctx, multicast.MulticastConfig{Group: group, Iface: iface})
	if err != nil {
		return err
	}
	var cfg multicast.Config
	copy(cfg.Key[:], m.Key)
	cfg.SessionID, cfg.RateBps = m.SessionID, m.RateBps
	r, err := multicast.NewReceiver(cfg, m.ReceiverID, tr)
	if err != nil {
		tr.Close()
		return err
	}
	local2 := slices.Clone(m.LocalSlots)
	slices.Sort(local2)
	rctx, cancel := context.WithCancel(ctx)
	mem := &groupMember{cancel: cancel, done: make(chan struct{})}
	g.groups[m.Group] = mem
	go func() {
		defer close(mem.done)
		defer tr.Close()
		err := r.Run(rctx, func(o multicast.Object) error {
			return putBundles(o.Payload, local2, g.verify.put)
		})
		if err != nil && rctx.Err() == nil {
			g.log.Warn("multicast receiver stopped", "group", m.Group, "err", err)
		}
	}()
	return nil
}

func (g *groupSet) leave(group string) {
	g.mu.Lock()
	mem := g.groups[group]
	delete(g.groups, group)
	g.mu.Unlock()
	if mem != nil {
		mem.cancel()
		<-mem.done
	}
}

func (g *groupSet) close() {
	g.mu.Lock()
	var names []string
	for n := range g.groups {
		names = append(names, n)
	}
	g.mu.Unlock()
	for _, n := range names {
		g.leave(n)
	}
}
