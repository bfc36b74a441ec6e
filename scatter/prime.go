package scatter

import (
	"runtime"

	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/vmscatter/vmscatter/multicast"
	"golang.org/x/sync/errgroup"
	"net/netip"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/kvm"
)

// scan reads every VM's RAM while the VMs run and builds the sharing map (phase 2). A VM whose RAM cannot be read
// is left out with a warning: the scan is an optimization, never a correctness input.
func (s *sender) scan(ctx context.Context, rep *Report) *dedup.SharingMap {
	start := time.Now()
	var regions []dedup.Region
	for i, vm := range s.vms {
		if vm.report.Status != "" || vm.qmp == nil {
			continue
		}
		s.progress.set(vm.spec.Name, "scanning", "")
		ram, err := kvm.OpenGuestRAM(ctx, vm.qmp, vm.pid)
		if err != nil {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("VM %s: scan skipped, its pages travel literal: %v", vm.spec.Name, err))
			continue
		}
		s.rams = append(s.rams, ram) // the prime reads through it too; release closes it
		regions = append(regions, dedup.Region{VM: i, Block: ram.Block, Size: ram.Size, R: ram})
	}
	if len(regions) == 0 {
		return nil
	}
	sm, err := dedup.Scan(ctx, regions, dedup.ScanOptions{Fingerprint: s.fingerprint(), OnRegionError: func(e *dedup.RegionError) error {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("VM %s: scan of %s stopped: %v", s.vms[e.VM].spec.Name, e.Block, e.Err))
		return nil
	}})
	rep.Totals.ScanMS = time.Since(start).Milliseconds()
	if err != nil {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("scan failed, every page travels literal: %v", err))
		return nil
	}
	rep.Totals.NonZeroPages = int64(sm.NonZeroPages)
	for _, r := range sm.Regions {
		s.vms[r.VM].report.ScanNonZero += int64(r.Pages - r.ZeroPages)
	}
	rep.Totals.DistinctPages = int64(sm.Distinct())
	s.log.Info("scan done", "pages", sm.Pages, "zero", sm.ZeroPages, "distinct", sm.Distinct(), "ms", rep.Totals.ScanMS)
	return sm
}

// contentFrameTarget is the size at which a CONTENT frame is sent.
const contentFrameTarget = 256 << 10

// multicastChunk bounds the objects of one multicast Send (and so the memory held for repairs).
const multicastChunk = 2048

// primer is the state of one prime (phase 5), owned by the sender's goroutine.
type primer struct {
	s                                   *sender
	sm                                  *dedup.SharingMap
	digester                            *dedup.Digester
	held                                []*dedup.HeldIndex // per target
	pinned                              [][]uint64         // per target: contents kept for no VM in particular
	frames                              [][]byte           // per target: the CONTENT frame being filled
	sent                                []int              // per target: contents sent to it
	groups                              map[string]*primeGroup
	holders                             []int
	slots                               []int
	lowerBound, lowerCompressed         int64 // once per target that needs it (unicast)
	lowerBoundOnce, lowerCompressedOnce int64 // once in all (multicast)
	multicastBytes                      int64 // datagram payload bytes the group senders sent
}

// primeGroup is one multicast group: the batches of one target set of two or more targets.
type primeGroup struct {
	addr    string
	targets []int
	sender  *multicast.Sender // nil: the group is served by unicast
	objects []multicast.Object
}

// prime sends every distinct content once to each target that needs it (phase 5), batch by batch in the
// schedule's order: over multicast to a batch's group when it has two or more targets and multicast works, else
// over the targets' control connections. It records what each target confirmed holding. Each content's bytes are
// read once, at prime time, from a page that still has the scanned fingerprint; the salted digest is taken over
// exactly the bytes sent, so a later reference is exact whatever the guest did in between.
func (s *sender) prime(ctx context.Context, sm *dedup.SharingMap, rep *Report) error {
	var salt [32]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return err
	}
	n := len(s.targets)
	s.costs = make([]uint32, sm.Distinct())
	p := &primer{s: s, sm: sm, digester: dedup.NewDigester(salt), held: make([]*dedup.HeldIndex, n),
		pinned: make([][]uint64, n), frames: make([][]byte, n), sent: make([]int, n)}
	for i := range n {
		p.held[i] = dedup.NewHeldIndex(s.fingerprint(), p.digester)
		p.pinned[i] = make([]uint64, (sm.Distinct()+63)/64)
	}
	if err := p.openGroups(ctx, rep); err != nil {
		return err
	}
	defer func() {
		p.closeGroups()
		rep.Totals.PrimeBytes += p.multicastBytes
		for _, t := range s.targets {
			if t.sc != nil {
				rep.Totals.PrimeBytes += t.sc.BytesOut()
			}
		}
	}()
	done, total := 0, 0
	for _, b := range s.batches {
		total += len(b.contents)
	}
	lastProgress := time.Now()
	for _, b := range s.batches {
		g := p.groups[targetSetKey(b.targets)]
		for start := 0; start < len(b.contents); start += prepareWindow {
			window := b.contents[start:min(start+prepareWindow, len(b.contents))]
			prepared, err := p.prepare(ctx, window)
			if err != nil {
				return err
			}
			for i := range window {
				if err := p.one(ctx, &prepared[i], b.targets, g); err != nil {
					return err
				}
			}
			done += len(window)
			if time.Since(lastProgress) > time.Second {
				s.progress.set("(prime)", "priming", fmt.Sprintf("%d of %d contents", done, total))
				lastProgress = time.Now()
			}
		}
		if g != nil {
			if err := p.flushGroup(ctx, g); err != nil {
				return err
			}
		}
	}
	rep.Totals.LowerBoundUnicastBytes, rep.Totals.LowerBoundMulticastBytes = p.lowerBound, p.lowerBoundOnce
	rep.Totals.LowerBoundBytes, rep.Totals.LowerBoundCompressedBytes = p.lowerBound, p.lowerCompressed
	if rep.Transport == TransportMulticast {
		rep.Totals.LowerBoundBytes, rep.Totals.LowerBoundCompressedBytes = p.lowerBoundOnce, p.lowerCompressedOnce
	}
	return p.finish(ctx, rep)
}

// prepareWindow is how many contents are read, digested and compressed at once, in parallel: it bounds the
// memory of the prime's pipeline (about 2 × 4 KiB each).
const prepareWindow = 1024

// preparedContent is one content ready to send: its bytes as read at prime time, their digest, and the compressed
// form.
type preparedContent struct {
	id    dedup.ContentID
	ok    bool // false: every holder changed since the scan; its pages will travel literal
	dg    dedup.Digest
	codec dedup.Codec
	lit   []byte
}

// prepare reads, digests and compresses a window of contents on every core. The pipeline's stages: this parallel
// stage (bounded by the window and GOMAXPROCS workers), then the sequential queueing in one, in order.
func (p *primer) prepare(ctx context.Context, ids []uint32) ([]preparedContent, error) {
	out := make([]preparedContent, len(ids))
	workers := min(runtime.GOMAXPROCS(0), 4)
	var g errgroup.Group
	per := (len(ids) + workers - 1) / workers
	for w := range workers {
		lo, hi := w*per, min((w+1)*per, len(ids))
		if lo >= hi {
			break
		}
		g.Go(func() error {
			page := make([]byte, dedup.PageSize)
			fp := p.s.fingerprint()
			for i := lo; i < hi; i++ {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				c := &out[i]
				c.id = dedup.ContentID(ids[i])
				if c.ok = readCurrent(p.sm, c.id, page, fp); c.ok {
					c.dg = p.digester.Sum(page)
					c.lit, c.codec = p.s.codec.Compress(nil, page)
				}
			}
			return nil
		})
	}
	return out, g.Wait()
}

// one queues a prepared content for its targets.
func (p *primer) one(ctx context.Context, c *preparedContent, targets []int, g *primeGroup) error {
	s, sm, cid := p.s, p.sm, c.id
	p.lowerBound += int64(len(targets)) * dedup.PageSize
	p.lowerBoundOnce += dedup.PageSize
	if !c.ok {
		return nil
	}
	dg, codec := c.dg, c.codec
	p.lowerCompressed += int64(len(targets) * len(c.lit))
	p.lowerCompressedOnce += int64(len(c.lit))
	s.costs[cid] = uint32(len(c.lit))
	p.holders = sm.HolderVMs(p.holders[:0], cid)
	rec := dedup.PageRecord{Kind: dedup.RecordLiteral, Codec: codec, Data: c.lit}
	fp := sm.Contents[cid].FP
	if g != nil && g.sender != nil {
		// One object for the whole group, naming every holder; each receiver keeps its own VMs' slots.
		slots := p.holders
		if len(slots) > maxSlotsPerContent {
			slots = nil
			for _, ti := range targets {
				p.pinned[ti][cid/64] |= 1 << (cid % 64)
			}
		}
		g.objects = append(g.objects, multicast.Object{ID: uint64(cid), Payload: appendContentRecord(nil, cid, slots, rec)})
		for _, ti := range targets {
			p.held[ti].Add(cid, fp, dg)
			p.sent[ti]++
		}
		if len(g.objects) >= multicastChunk {
			return p.flushGroup(ctx, g)
		}
		return nil
	}
	for _, ti := range targets {
		p.slots = p.slots[:0]
		for _, vmi := range p.holders {
			if s.vms[vmi].target == s.targets[ti] {
				p.slots = append(p.slots, vmi)
			}
		}
		if len(p.slots) > maxSlotsPerContent {
			// Too many to name: the receiver keeps it for the whole session, and every VM may use it.
			p.slots = p.slots[:0]
			p.pinned[ti][cid/64] |= 1 << (cid % 64)
		}
		p.frames[ti] = appendContentRecord(p.frames[ti], cid, p.slots, rec)
		p.held[ti].Add(cid, fp, dg)
		p.sent[ti]++
		if len(p.frames[ti]) >= contentFrameTarget {
			if err := p.flush(ti); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p *primer) flush(ti int) error {
	if len(p.frames[ti]) == 0 {
		return nil
	}
	err := p.s.targets[ti].sc.Send(frameContent, p.frames[ti], false)
	p.frames[ti] = p.frames[ti][:0]
	if err != nil {
		return fmt.Errorf("prime to %s: %w", p.s.targets[ti].addr, err)
	}
	return nil
}

// flushGroup multicasts the group's queued objects; targets the transport dropped get them by unicast.
func (p *primer) flushGroup(ctx context.Context, g *primeGroup) error {
	if len(g.objects) == 0 {
		return nil
	}
	ids := make([]multicast.ReceiverID, len(g.targets))
	for i, ti := range g.targets {
		ids[i] = multicast.ReceiverID(ti)
	}
	res, err := g.sender.Send(ctx, ids, g.objects)
	if err != nil {
		return fmt.Errorf("multicast to %s: %w", g.addr, err)
	}
	for _, id := range res.Dropped {
		ti := int(id)
		p.s.log.Warn("multicast receiver dropped as too slow; serving it by unicast", "target", p.s.targets[ti].addr)
		for _, o := range g.objects {
			p.frames[ti] = append(p.frames[ti], o.Payload...) // the same content record as on unicast
			if len(p.frames[ti]) >= contentFrameTarget {
				if err := p.flush(ti); err != nil {
					return err
				}
			}
		}
	}
	g.objects = g.objects[:0]
	return nil
}

// finish flushes the unicast frames, closes the prime with every target and waits for their confirmations. Only
// a target that confirmed counts as holding the contents.
func (p *primer) finish(ctx context.Context, rep *Report) error {
	s := p.s
	for ti, t := range s.targets {
		if t.sc == nil || p.sent[ti] == 0 {
			continue
		}
		if err := p.flush(ti); err != nil {
			return err
		}
		if err := sendJSON(t.sc, framePrimeDone, primeDoneMsg{Contents: p.sent[ti]}); err != nil {
			return fmt.Errorf("prime to %s: %w", t.addr, err)
		}
	}
	for ti, t := range s.targets {
		if t.sc == nil || p.sent[ti] == 0 {
			continue
		}
		var ack primeAckMsg
		if err := expect(t.sc, framePrimeAck, &ack); err != nil {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("prime to %s failed, its VMs' pages travel literal: %v", t.addr, err))
			continue
		}
		if ack.Held < p.sent[ti] {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("prime to %s: it holds %d of %d contents; its VMs' pages travel literal",
				t.addr, ack.Held, p.sent[ti]))
			continue
		}
		t.held, t.pinned = p.held[ti], p.pinned[ti]
		s.log.Info("prime done", "target", t.addr, "contents", ack.Held, "bytes", ack.Bytes)
	}
	return nil
}

func targetSetKey(targets []int) string { return fmt.Sprint(targets) }

// readCurrent reads content id's bytes from the first holder whose page still has the scanned fingerprint.
func readCurrent(sm *dedup.SharingMap, id dedup.ContentID, page []byte, fp dedup.FingerprintFunc) bool {
	want := sm.Contents[id].FP
	for i, l := range sm.Holders(id) {
		if i >= 4 {
			return false
		}
		var rerr *dedup.RegionError
		if err := sm.ReadPage(l, page); err != nil && !errors.As(err, &rerr) {
			return false
		} else if err != nil {
			continue
		}
		if fp(page) == want && !dedup.IsZero(page) {
			return true
		}
	}
	return false
}

// multicastPort is the UDP port of every prime group; groups differ by address.
const multicastPort = 7450

// openGroups sets up one multicast group per target set of two or more targets in the schedule, unless the
// transport is unicast: every member joins before any data flows (a join takes time to reach a snooping bridge),
// then a probe checks that every member hears the group. A group that does not work is served by unicast (auto)
// or fails the prime (multicast).
func (p *primer) openGroups(ctx context.Context, rep *Report) error {
	s := p.s
	p.groups = map[string]*primeGroup{}
	mode := s.cfg.Transport
	if mode == TransportUnicast {
		return nil
	}
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return err
	}
	sid := binary.BigEndian.Uint64(s.session[:8])
	cfg := multicast.Config{Key: key, SessionID: sid, RateBps: s.cfg.RateBps}
	var sets [][]int
	for _, b := range s.batches {
		k := targetSetKey(b.targets)
		if len(b.targets) < 2 || p.groups[k] != nil {
			continue
		}
		if len(sets) >= 250 {
			break // more target sets than group addresses: the rest go by unicast
		}
		g := &primeGroup{addr: fmt.Sprintf("239.255.%d.%d:%d", s.session[0], len(sets)+1, multicastPort), targets: b.targets}
		p.groups[k] = g
		sets = append(sets, b.targets)
	}
	if len(sets) == 0 {
		return nil
	}
	iface := s.cfg.Iface
	for _, t := range s.targets {
		if iface == "" && t.sc != nil {
			iface, _ = ifaceFor(t.sc.c.LocalAddr())
		}
	}
	fail := func(g *primeGroup, err error) error {
		if mode == TransportMulticast {
			return fmt.Errorf("multicast group %s does not work (%v): use --transport auto or unicast", g.addr, err)
		}
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("multicast group %s: %v; its contents go by unicast", g.addr, err))
		return nil
	}
	// Join early: every member of every group, before the first byte.
	for _, g := range p.groups {
		for _, ti := range g.targets {
			t := s.targets[ti]
			var local []int
			for vmi, vm := range s.vms {
				if vm.target == t {
					local = append(local, vmi)
				}
			}
			err := sendJSON(t.sc, frameJoin, joinMsg{Group: g.addr, ReceiverID: uint16(ti), Key: key[:], SessionID: sid,
				RateBps: s.cfg.RateBps, LocalSlots: local})
			if err == nil {
				var e errorMsg
				if err = expect(t.sc, frameJoined, &e); err == nil && e.Error != "" {
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
		ms, err := multicast.NewSender(cfg, tr)
		if err != nil {
			tr.Close()
			return err
		}
		want := make([]multicast.ReceiverID, len(g.targets))
		for i, ti := range g.targets {
			want[i] = multicast.ReceiverID(ti)
		}
		heard, _, err := ms.Probe(ctx, want, multicast.DefaultProbeTimeout)
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

// closeGroups ends every group: the members leave, the senders close, and their bytes count as prime bytes.
func (p *primer) closeGroups() {
	for _, g := range p.groups {
		for _, ti := range g.targets {
			_ = sendJSON(p.s.targets[ti].sc, frameLeave, leaveMsg{Group: g.addr})
		}
		if g.sender != nil {
			p.multicastBytes += int64(g.sender.Stats().Transport.BytesSent)
			g.sender.Close()
		}
	}
}

// fingerprint is the fast page hash of the scan and of the held index: xxhash64, or a deliberately weak one that
// this package's tests inject to force collisions.
func (s *sender) fingerprint() dedup.FingerprintFunc {
	if s.cfg.faults.weakFingerprint {
		return func(page []byte) dedup.Fingerprint { return dedup.Fingerprint(page[0]) }
	}
	return dedup.XXHash
}
