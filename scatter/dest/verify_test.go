package dest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/multicast"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

func verifyPage(b byte) []byte { return bytes.Repeat([]byte{b, 1, 2, 3}, dedup.PageSize/4) }

func bundleOf(t *testing.T, ids []dedup.ContentID, pages ...[]byte) []byte {
	t.Helper()
	var heads []wire.BundleHead
	var raw []byte
	for i, id := range ids {
		heads = append(heads, wire.BundleHead{ID: id, Slots: []int{0, 1}})
		raw = append(raw, pages[i]...)
	}
	data, codec := dedup.CompressPages(nil, raw, dedup.CodecZstd)
	return wire.AppendBundle(nil, codec, heads, data)
}

func digestsOf(d *dedup.Digester, ids []dedup.ContentID, pages ...[]byte) []byte {
	var b []byte
	for i, id := range ids {
		b = wire.AppendDigestRecord(b, id, d.Sum(pages[i]))
	}
	return b
}

func holds(store *dedup.ContentStore, id dedup.ContentID) []byte {
	p, err := store.Get(context.Background(), id, 0)
	if err != nil {
		return nil
	}
	return p
}

// TestGroupVerifierForgedContent: a multicast content with the right id and wrong bytes (a co-member's forgery under
// the group key) is not stored, whether its digest came first or after; a content without a digest is not stored
// either; both are named missing at the end of the prime; the sender's own bytes are stored.
func TestGroupVerifierForgedContent(t *testing.T) {
	var salt [32]byte
	salt[3] = 7
	d := dedup.NewDigester(salt)
	store := dedup.NewContentStore(1<<20, nil)
	defer store.Close()
	g := newGroupSet(slog.New(slog.DiscardHandler), store)
	if err := g.verify.addDigests(digestsOf(d, []dedup.ContentID{1}, verifyPage(1))); err == nil {
		t.Fatal("DIGESTS before JOIN accepted")
	}
	if err := g.verify.setSalt(salt[:]); err != nil {
		t.Fatal(err)
	}
	if err := g.verify.setSalt(make([]byte, 32)); err == nil {
		t.Fatal("a second, different salt accepted")
	}
	real1, real2, real4, forged := verifyPage(1), verifyPage(2), verifyPage(4), verifyPage(9)
	// Digests of 1 and 2 first; the group delivers 1 forged, 2 real, 3 with no digest.
	if err := g.verify.addDigests(digestsOf(d, []dedup.ContentID{1, 2}, real1, real2)); err != nil {
		t.Fatal(err)
	}
	if err := putBundles(bundleOf(t, []dedup.ContentID{1, 2, 3}, forged, real2, forged), []int{1}, g.verify.put); err != nil {
		t.Fatal(err)
	}
	// Content 4 and 5 come before their digests (parked), 4 real, 5 forged.
	if err := putBundles(bundleOf(t, []dedup.ContentID{4, 5}, real4, forged), []int{1}, g.verify.put); err != nil {
		t.Fatal(err)
	}
	if holds(store, 4) != nil {
		t.Fatal("content 4 stored before its digest came")
	}
	if err := g.verify.addDigests(digestsOf(d, []dedup.ContentID{4, 5}, real4, verifyPage(5))); err != nil {
		t.Fatal(err)
	}
	// Content 6 comes and its digest never does.
	if err := putBundles(bundleOf(t, []dedup.ContentID{6}, real4), nil, g.verify.put); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		id   dedup.ContentID
		want []byte
	}{{1, nil}, {2, real2}, {3, nil}, {4, real4}, {5, nil}, {6, nil}} {
		if got := holds(store, c.id); !bytes.Equal(got, c.want) {
			t.Errorf("content %d: stored %v, want stored %v", c.id, got != nil, c.want != nil)
		}
	}
	missing, drops := g.verify.settle()
	if want := []uint32{1, 3, 5, 6}; !slices.Equal(missing, want) || drops != 4 {
		t.Fatalf("missing %v (%d drops), want %v", missing, drops, want)
	}
	// The sender's own bytes of 1 come after the forgery (a retransmission, or the unicast fallback): stored, and no
	// longer missing.
	if err := putBundles(bundleOf(t, []dedup.ContentID{1}, real1), nil, g.verify.put); err != nil {
		t.Fatal(err)
	}
	if missing, _ = g.verify.settle(); !slices.Equal(missing, []uint32{3, 5, 6}) {
		t.Fatalf("after the real content 1: missing %v", missing)
	}
	if err := g.verify.addDigests([]byte{1, 2, 3}); !errors.Is(err, wire.ErrFrame) {
		t.Fatalf("truncated DIGESTS: %v", err)
	}
}

// TestGroupForgedThroughEngine injects a forged content through the group's own receiver engine: a sender on
// loopback that holds the group key (as a co-member does) multicasts a bundle with the right id and wrong bytes,
// sealed validly. The receiver stores the content it has a matching digest for, and not the forged one.
func TestGroupForgedThroughEngine(t *testing.T) {
	if ifi, err := net.InterfaceByName("lo"); err != nil || ifi.Flags&net.FlagUp == 0 {
		t.Skip("skipping: no loopback interface lo that is up")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var salt, key [32]byte
	salt[0], key[0] = 1, 2
	d := dedup.NewDigester(salt)
	store := dedup.NewContentStore(1<<20, nil)
	defer store.Close()
	g := newGroupSet(slog.New(slog.DiscardHandler), store)
	defer g.close()
	pid := os.Getpid()
	group := netip.AddrPortFrom(netip.AddrFrom4([4]byte{239, 255, 200, byte(pid)}), uint16(30000+pid%2000))
	const session = 0x5eed
	err := g.join(ctx, wire.JoinMsg{Group: group.String(), ReceiverID: 3, Key: key[:], SessionID: session, LocalSlots: []int{0},
		Salt: salt[:]}, nil, "lo")
	if err != nil {
		t.Fatal(err)
	}
	real7, real8, forged := verifyPage(7), verifyPage(8), verifyPage(66)
	if err := g.verify.addDigests(digestsOf(d, []dedup.ContentID{7, 8}, real7, real8)); err != nil {
		t.Fatal(err)
	}
	tr, err := multicast.ListenMulticast(ctx, multicast.MulticastConfig{Group: group, Iface: "lo"})
	if err != nil {
		t.Fatal(err)
	}
	forger, err := multicast.NewSender(multicast.Config{Key: key, SessionID: session}, tr)
	if err != nil {
		tr.Close()
		t.Fatal(err)
	}
	defer forger.Close()
	res, err := forger.Send(ctx, []multicast.ReceiverID{3}, []multicast.Object{
		{ID: 7, Payload: bundleOf(t, []dedup.ContentID{7}, forged)},
		{ID: 8, Payload: bundleOf(t, []dedup.ContentID{8}, real8)},
	})
	if err != nil || len(res.Dropped) > 0 {
		t.Fatalf("send: %v, dropped %v", err, res.Dropped)
	}
	if holds(store, 7) != nil {
		t.Error("the forged content 7 was stored")
	}
	if !bytes.Equal(holds(store, 8), real8) {
		t.Error("the sender's content 8 was not stored")
	}
	missing, _ := g.verify.settle()
	if fmt.Sprint(missing) != "[7]" {
		t.Fatalf("missing %v, want [7]", missing)
	}
}
