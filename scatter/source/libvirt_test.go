package source

import (
	"testing"

	"github.com/vmscatter/vmscatter/scatter/converge"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

func TestLibvirtTargetURI(t *testing.T) {
	c := LibvirtConfig{TargetURIs: map[string]string{"hostA:7400": "qemu+ssh://root@hostA/system"}}
	for addr, want := range map[string]string{
		"hostA:7400":       "qemu+ssh://root@hostA/system",
		"hostB:7400":       "qemu://hostB/system",
		"198.18.0.3:7400":  "qemu://198.18.0.3/system",
		"[2001:db8::1]:74": "qemu://[2001:db8::1]/system",
	} {
		if got := c.TargetURI(addr); got != want {
			t.Errorf("%s: %s, want %s", addr, got, want)
		}
	}
}

func TestLibvirtPolicies(t *testing.T) {
	var id wire.SessionID
	for kind, ok := range map[string]bool{converge.PolicyPrecopy: true, converge.PolicyAutoconverge: true,
		converge.PolicyTimebound: true, converge.PolicyMembound: false} {
		_, err := newLibvirtSource(&LibvirtConfig{}, id, converge.Policy{Kind: kind})
		if (err == nil) != ok {
			t.Errorf("policy %s: %v", kind, err)
		}
	}
}
