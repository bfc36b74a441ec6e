package source

import (
	"strings"
	"testing"

	"github.com/vmscatter/vmscatter/qemu/qmp"
)

func TestUnsupportedFeatures(t *testing.T) {
	// What QEMU 7.2 reports by default, plus the ones vmscatter turns on itself: fine.
	fine := map[string]bool{"xbzrle": false, "rdma-pin-all": false, "auto-converge": true, "zero-blocks": false,
		"compress": false, "events": true, "postcopy-ram": false, "x-colo": false, "release-ram": false, "block": false,
		"return-path": true, "pause-before-switchover": false, "multifd": false, "dirty-bitmaps": false,
		"postcopy-blocktime": false, "late-block-activate": false, "x-ignore-shared": false, "validate-uuid": false,
		"background-snapshot": false}
	if err := unsupportedFeatures(fine, []qmp.MemoryDevice{{Type: qmp.MemoryDeviceDIMM, ID: "dimm0"}}); err != nil {
		t.Fatalf("refused: %v", err)
	}
	// Every capability the proxy cannot carry is refused when on, with its reason and the command that turns it off.
	for name, reason := range unsupportedCapabilities {
		err := unsupportedFeatures(map[string]bool{name: true, "events": true}, nil)
		if err == nil {
			t.Errorf("%s on: not refused", name)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, name+" ("+reason+")") || !strings.Contains(msg, `{"capability":"`+name+`","state":false}`) {
			t.Errorf("%s: %s", name, msg)
		}
	}
	// All at once: one message names each, and one command turns them all off.
	err := unsupportedFeatures(map[string]bool{"switchover-ack": true, "multifd": true, "mapped-ram": true, "events": true},
		[]qmp.MemoryDevice{{Type: qmp.MemoryDeviceVirtioMem, ID: "vmem0"}})
	if err == nil {
		t.Fatal("not refused")
	}
	msg := err.Error()
	for _, want := range []string{"mapped-ram (", "multifd (", "switchover-ack (", "acknowledgement", "virtio-mem device (vmem0)",
		"before RAM", `[{"capability":"mapped-ram","state":false},{"capability":"multifd","state":false},{"capability":"switchover-ack","state":false}]`} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q: %s", want, msg)
		}
	}
	if strings.Contains(msg, `"events"`) {
		t.Errorf("message names a capability that may stay on: %s", msg)
	}
}
