package lab

import (
	"context"
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
)

func TestGuestNetOnEveryHost(t *testing.T) {
	needRoot(t)
	l := newLab(t, Config{Hosts: []string{"a", "b"}})
	ctx := context.Background()
	if _, err := l.AddGuestNet(ctx, GuestNet{Prefix: netip.MustParsePrefix("198.18.0.0/24")}); !errors.Is(err, ErrConfig) {
		t.Fatalf("a guest network over the hosts' subnet: %v, want ErrConfig", err)
	}
	if _, err := l.AddGuestNet(ctx, GuestNet{Taps: []string{"tap1", "tap1"}}); !errors.Is(err, ErrConfig) {
		t.Fatalf("two taps of one name: %v, want ErrConfig", err)
	}
	gw, err := l.AddGuestNet(ctx, GuestNet{Taps: []string{"tap1", "tap2"}})
	if err != nil {
		t.Fatal(err)
	}
	if gw != netip.MustParseAddr("198.19.0.1") {
		t.Fatalf("gateway %v", gw)
	}
	for _, h := range l.Hosts() {
		out, err := exec.Command("ip", "-n", h.NS, "-br", "addr", "show", "dev", GuestBridge).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "198.19.0.1/24") {
			t.Errorf("%s: %s: %v: %s", h.Name, GuestBridge, err, out)
		}
		for _, tap := range []string{"tap1", "tap2"} {
			out, err := exec.Command("ip", "-n", h.NS, "-d", "link", "show", "dev", tap).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "master "+GuestBridge) || !strings.Contains(string(out), "tun type tap") {
				t.Errorf("%s: %s is not a tap on %s: %v: %s", h.Name, tap, GuestBridge, err, out)
			}
		}
	}
}
