package source

import (
	"testing"

	"github.com/vmscatter/vmscatter/multicast/seal"
	mwire "github.com/vmscatter/vmscatter/multicast/wire"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// sealedNonce is one AEAD use: the key it sealed under and the nonce (node, packet number) in its header.
type sealedNonce struct {
	key  [32]byte
	node uint16
	pn   uint64
}

// reusedNonces seals packets from the sender and from every receiver of every group, all of whose packet numbers start at
// the same instant, and returns how many (key, nonce) pairs came up twice.
func reusedNonces(t *testing.T, groups int, crypto func(num int) groupCrypto) int {
	t.Helper()
	const receivers, packets = 4, 64
	const sameNanosecond = 1_700_000_000_000_000_000
	seen := map[sealedNonce]bool{}
	reused := 0
	for num := 1; num <= groups; num++ {
		gc := crypto(num)
		nodes := []uint16{mwire.SenderNode}
		for r := range receivers {
			nodes = append(nodes, uint16(r))
		}
		for _, node := range nodes {
			s, err := seal.NewSealer(gc.key, gc.session, node, sameNanosecond)
			if err != nil {
				t.Fatal(err)
			}
			for range packets {
				p, err := s.Seal(nil, &mwire.Complete{Transfer: 1})
				if err != nil {
					t.Fatal(err)
				}
				h, _, err := mwire.ParseHeader(p)
				if err != nil {
					t.Fatal(err)
				}
				if h.Session != gc.session {
					t.Fatalf("group %d: header carries session %x, want the group's %x", num, h.Session, gc.session)
				}
				k := sealedNonce{gc.key, h.Node, h.PN}
				if seen[k] {
					reused++
				}
				seen[k] = true
			}
		}
	}
	return reused
}

// Every group of a run is set up "in the same nanosecond" (every node's packet numbers start at one instant): no
// (key, nonce) pair is ever used twice, because every group seals under its own key. The same packets under one
// shared key, as before, reuse nonces: the check can tell.
func TestGroupsNeverReuseANonce(t *testing.T) {
	var runKey [32]byte
	runKey[0] = 42
	var session wire.SessionID
	session[0], session[7] = 0x5b, 0x77
	if n := reusedNonces(t, 250, func(num int) groupCrypto { return newGroupCrypto(runKey, session, num) }); n != 0 {
		t.Fatalf("%d (key, nonce) pairs reused across 250 groups", n)
	}
	shared := func(num int) groupCrypto {
		return groupCrypto{key: runKey, session: newGroupCrypto(runKey, session, num).session}
	}
	if n := reusedNonces(t, 2, shared); n == 0 {
		t.Fatal("one key for every group reused no nonce: the check proves nothing")
	}
	// The group's number is in its session id, and so in every packet's additional data; the run's session id stays
	// in its upper bits.
	a, b := newGroupCrypto(runKey, session, 1), newGroupCrypto(runKey, session, 2)
	if a.session == b.session || a.key == b.key || a.session>>16 != b.session>>16 {
		t.Fatalf("groups 1 and 2: sessions %x %x", a.session, b.session)
	}
}

// A packet sealed for one group opens in no other group of the run, not even with that group's receiver ids.
func TestGroupPacketsStayInTheirGroup(t *testing.T) {
	var runKey [32]byte
	var session wire.SessionID
	a, b := newGroupCrypto(runKey, session, 1), newGroupCrypto(runKey, session, 2)
	s, err := seal.NewSealer(a.key, a.session, mwire.SenderNode, 1)
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.Seal(nil, &mwire.Complete{Transfer: 9})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := seal.NewOpener(b.key, b.session, 0, nil)
	if _, _, err := other.Open(append([]byte(nil), p...)); err == nil {
		t.Fatal("group 1's packet opened in group 2")
	}
	// Even relabelled with group 2's session id, it does not authenticate under group 2's key.
	relabelled := append([]byte(nil), p...)
	copy(relabelled[8:16], mwire.AppendHeader(nil, mwire.Header{Session: b.session})[8:16])
	if _, _, err := other.Open(relabelled); err == nil {
		t.Fatal("a relabelled packet of group 1 opened in group 2")
	}
	own, _ := seal.NewOpener(a.key, a.session, 0, nil)
	if _, _, err := own.Open(p); err != nil {
		t.Fatalf("its own group: %v", err)
	}
}
