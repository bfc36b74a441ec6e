package multicast

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/multicast/reliable"
	"github.com/vmscatter/vmscatter/multicast/wire"
)

// recvWithin reads one packet from tr, failing the test after a second.
func recvWithin(t *testing.T, tr Transport, buf []byte) int {
	t.Helper()
	type res struct {
		n   int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		n, err := tr.Recv(buf)
		ch <- res{n, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.n
	case <-time.After(time.Second):
		t.Fatal("no packet within a second")
		return 0
	}
}

// A datagram longer than any packet is reported as oversized, through the auto transport too, and the next one
// still arrives: a stranger on the group cannot stop a receiver.
func TestOversizedDatagramDropped(t *testing.T) {
	needLoopbackMulticast(t)
	group := testGroup()
	for _, auto := range []bool{false, true} {
		t.Run(fmt.Sprintf("auto=%v", auto), func(t *testing.T) {
			var r Transport
			var err error
			if auto {
				r, _, err = ListenAuto(context.Background(), MulticastConfig{Group: group, Iface: "lo"}, "127.0.0.1:0")
			} else {
				r, err = ListenMulticast(context.Background(), MulticastConfig{Group: group, Iface: "lo"})
			}
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			// The stranger sends on lo, as every party of these tests does.
			c, err := ListenMulticast(context.Background(), MulticastConfig{Group: group, Iface: "lo"})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			big := make([]byte, 2*wire.MaxPacket)
			small := []byte("after the big one")
			for _, p := range [][]byte{big, small} {
				if err := c.Send(reliable.ToGroup, wire.Mask{}, p); err != nil {
					t.Fatal(err)
				}
			}
			buf := make([]byte, bufSize)
			if n := recvWithin(t, r, buf); n <= len(buf) {
				t.Fatalf("oversized datagram returned as %d bytes", n)
			}
			if n := recvWithin(t, r, buf); !bytes.Equal(buf[:n], small) {
				t.Fatalf("after the oversized one: got %q", buf[:n])
			}
		})
	}
}
