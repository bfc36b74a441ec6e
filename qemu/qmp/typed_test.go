package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// canonical re-marshals JSON text so that two spellings of one value compare equal (map keys sorted).
func canonical(t *testing.T, v any) string {
	t.Helper()
	b, ok := v.(string)
	if !ok {
		mb, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		b = string(mb)
	}
	var x any
	if err := json.Unmarshal([]byte(b), &x); err != nil {
		t.Fatalf("bad JSON %q: %v", b, err)
	}
	out, err := json.Marshal(x)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// recorder is a fake QMP peer that answers each command from a table and records what it got.
type recorder struct {
	mu      sync.Mutex
	got     []map[string]any
	answers map[string][]string // command -> lines; "RET" in a line is replaced by the reply envelope's id
}

func newRecorder(t *testing.T, answers map[string][]string) (*recorder, *Client) {
	t.Helper()
	r := &recorder{answers: answers}
	path := fakeQMP(t, func(cmd map[string]any) []string {
		name, _ := cmd["execute"].(string)
		if name == "qmp_capabilities" {
			return []string{reply(cmd, "{}")}
		}
		r.mu.Lock()
		r.got = append(r.got, cmd)
		r.mu.Unlock()
		lines, ok := r.answers[name]
		if !ok {
			return []string{reply(cmd, "{}")}
		}
		id, _ := json.Marshal(cmd["id"])
		out := make([]string, len(lines))
		for i, l := range lines {
			l = strings.ReplaceAll(l, "ID", string(id))
			var buf bytes.Buffer
			if json.Compact(&buf, []byte(l)) == nil { // one message, one line
				l = buf.String()
			}
			out[i] = l
		}
		return out
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return r, q
}

func (r *recorder) commands() []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]map[string]any(nil), r.got...)
}

func ret(v string) []string { return []string{`{"return": ` + v + `, "id": ID}`} }

// TestTypedMethodsSendAndParse checks, for every typed method, the command and arguments it sends and how it reads
// the answer.
func TestTypedMethodsSendAndParse(t *testing.T) {
	answers := map[string][]string{
		"query-status":              ret(`{"status": "postmigrate", "singlestep": false, "running": false}`),
		"query-memory-size-summary": ret(`{"base-memory": 67108864, "plugged-memory": 1048576}`),
		"query-cpus-fast": ret(`[{"thread-id": 101, "props": {"core-id": 0}, "qom-path": "/machine/unattached/device[0]", "cpu-index": 0, "target": "x86_64"},
			{"thread-id": 102, "cpu-index": 1, "target": "x86_64"}]`),
		"query-memory-devices": ret(`[{"type": "virtio-mem", "data": {"id": "vm0", "memaddr": 4294967296, "size": 134217728, "requested-size": 134217728, "max-size": 1073741824, "block-size": 2097152, "node": 0, "memdev": "/objects/mem0"}},
			{"type": "dimm", "data": {"id": "d0", "addr": 8589934592, "size": 268435456, "slot": 0, "node": 0, "memdev": "/objects/mem1", "hotplugged": false, "hotpluggable": true}}]`),
		"query-version": ret(`{"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": " Debian 1:7.2+dfsg-7 "}`),
		"query-machines": ret(`[{"name": "pc-q35-7.2", "alias": "q35", "cpu-max": 288, "deprecated": false},
			{"name": "pc-i440fx-7.2", "alias": "pc", "is-default": true, "cpu-max": 255, "deprecated": false},
			{"name": "pc-i440fx-7.1", "cpu-max": 255, "deprecated": false}]`),
		"qom-get": ret(`"pc-i440fx-7.2-machine"`),
		"query-migrate": ret(`{"status": "active", "total-time": 1500, "expected-downtime": 300, "setup-time": 4,
			"ram": {"transferred": 1000, "remaining": 2000, "total": 67108864, "duplicate": 5, "normal": 7, "normal-bytes": 28672,
			"dirty-pages-rate": 11, "mbps": 812.5, "dirty-sync-count": 2, "page-size": 4096, "pages-per-second": 99, "postcopy-requests": 0},
			"cpu-throttle-percentage": 30}`),
		"query-migrate-capabilities": ret(`[{"state": false, "capability": "xbzrle"}, {"state": true, "capability": "events"}]`),
		"query-migrate-parameters": ret(`{"cpu-throttle-tailslow": false, "xbzrle-cache-size": 67108864, "cpu-throttle-initial": 20,
			"announce-max": 550, "multifd-channels": 2, "downtime-limit": 300, "tls-authz": "", "multifd-compression": "none",
			"max-cpu-throttle": 99, "max-postcopy-bandwidth": 0, "tls-hostname": "", "throttle-trigger-threshold": 50,
			"max-bandwidth": 134217728, "cpu-throttle-increment": 10}`),
		"human-monitor-command": ret(`"Host virtual address for 0x0 (pc.ram) is 0x7f0000000000\r\n"`),
		"query-memdev": ret(`[{"share": false, "reserve": true, "prealloc": false, "host-nodes": [], "size": 67108864, "merge": true, "dump": true, "policy": "default", "id": "pc.ram"},
			{"share": true, "prealloc": true, "size": 1048576, "merge": true, "dump": true, "policy": "default"}]`),
	}
	r, q := newRecorder(t, answers)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var (
		st      RunState
		mem     MemorySize
		tids    []int
		devs    []MemoryDevice
		ver     Version
		mach    []MachineInfo
		resolve string
		current string
		mi      MigrationInfo
		caps    map[string]bool
		params  MigrationParameters
		hmp     string
		mds     []MemoryBackend
	)
	steps := []struct {
		call    func() error
		command string
		args    string // "" for no arguments
	}{
		{func() (err error) { st, err = q.Status(ctx); return }, "query-status", ""},
		{func() error { return q.Stop(ctx) }, "stop", ""},
		{func() error { return q.Cont(ctx) }, "cont", ""},
		{func() (err error) { mem, err = q.MemorySizeSummary(ctx); return }, "query-memory-size-summary", ""},
		{func() (err error) { tids, err = q.VCPUThreads(ctx); return }, "query-cpus-fast", ""},
		{func() (err error) { devs, err = q.MemoryDevices(ctx); return }, "query-memory-devices", ""},
		{func() (err error) { ver, err = q.Version(ctx); return }, "query-version", ""},
		{func() (err error) { mach, err = q.Machines(ctx); return }, "query-machines", ""},
		{func() (err error) { resolve, err = q.ResolveMachine(ctx, "pc"); return }, "query-machines", ""},
		{func() (err error) { current, err = q.CurrentMachine(ctx); return }, "qom-get", `{"path": "/machine", "property": "type"}`},
		{func() error { return q.Pmemsave(ctx, 0, 1<<20, "/tmp/x.bin") }, "pmemsave", `{"val": 0, "size": 1048576, "filename": "/tmp/x.bin"}`},
		{func() error { return q.Migrate(ctx, "unix:/run/a.sock") }, "migrate", `{"uri": "unix:/run/a.sock"}`},
		{func() error { return q.MigrateIncoming(ctx, "unix:/run/b.sock") }, "migrate-incoming", `{"uri": "unix:/run/b.sock"}`},
		{func() error { return q.MigrateCancel(ctx) }, "migrate_cancel", ""},
		{func() (err error) { mi, err = q.QueryMigrate(ctx); return }, "query-migrate", ""},
		{func() (err error) { caps, err = q.Capabilities(ctx); return }, "query-migrate-capabilities", ""},
		{func() error { return q.SetCapabilities(ctx, map[string]bool{"events": true, "auto-converge": false}) },
			"migrate-set-capabilities", `{"capabilities": [{"capability": "auto-converge", "state": false}, {"capability": "events", "state": true}]}`},
		{func() (err error) { params, err = q.Parameters(ctx); return }, "query-migrate-parameters", ""},
		{func() error {
			return q.SetParameters(ctx, MigrationParameters{DowntimeLimit: new(1500*time.Microsecond + 2*time.Second),
				MaxBandwidth: new(int64(1) << 40), CPUThrottleInitial: new(20), CPUThrottleIncrement: new(10)})
		}, "migrate-set-parameters", `{"downtime-limit": 2001, "max-bandwidth": 1099511627776, "cpu-throttle-initial": 20, "cpu-throttle-increment": 10}`},
		{func() (err error) { hmp, err = q.HMP(ctx, "gpa2hva 0"); return }, "human-monitor-command", `{"command-line": "gpa2hva 0"}`},
		{func() (err error) { mds, err = q.MemoryBackends(ctx); return }, "query-memdev", ""},
		{func() error { return q.QOMSet(ctx, "/objects/m", "merge", false) }, "qom-set", `{"path": "/objects/m", "property": "merge", "value": false}`},
		{func() error { return q.Preallocate(ctx, "/objects/pc.ram", 0) }, "qom-set", `{"path": "/objects/pc.ram", "property": "prealloc", "value": true}`},
		{func() error { return q.Quit(ctx) }, "quit", ""},
	}
	for i, s := range steps {
		if err := s.call(); err != nil {
			t.Fatalf("step %d (%s): %v", i, s.command, err)
		}
		got := r.commands()
		if len(got) != i+1 {
			t.Fatalf("step %d (%s): %d commands sent in all, want %d", i, s.command, len(got), i+1)
		}
		cmd := got[i]
		if cmd["execute"] != s.command {
			t.Errorf("step %d sent %v, want %s", i, cmd["execute"], s.command)
		}
		args, has := cmd["arguments"]
		switch {
		case s.args == "" && has:
			t.Errorf("%s: unexpected arguments %v", s.command, args)
		case s.args != "" && !has:
			t.Errorf("%s: no arguments, want %s", s.command, s.args)
		case s.args != "" && canonical(t, args) != canonical(t, s.args):
			t.Errorf("%s: arguments %s, want %s", s.command, canonical(t, args), canonical(t, s.args))
		}
	}

	if st != RunStatePostMigrate || st.Running() {
		t.Errorf("Status = %q", st)
	}
	if mem != (MemorySize{Base: 64 << 20, Plugged: 1 << 20}) {
		t.Errorf("MemorySizeSummary = %+v", mem)
	}
	if !reflect.DeepEqual(tids, []int{101, 102}) {
		t.Errorf("VCPUThreads = %v", tids)
	}
	wantDevs := []MemoryDevice{{Type: MemoryDeviceVirtioMem, ID: "vm0", Addr: 4 << 30, Size: 128 << 20, Memdev: "/objects/mem0"},
		{Type: MemoryDeviceDIMM, ID: "d0", Addr: 8 << 30, Size: 256 << 20, Memdev: "/objects/mem1"}}
	if !reflect.DeepEqual(devs, wantDevs) {
		t.Errorf("MemoryDevices = %+v", devs)
	}
	if ver.String() != "7.2.22" || ver.Package != "Debian 1:7.2+dfsg-7" || !ver.AtLeast(7, 2) || ver.AtLeast(7, 3) || !ver.AtLeast(6, 9) {
		t.Errorf("Version = %+v", ver)
	}
	if len(mach) != 3 || mach[1] != (MachineInfo{Name: "pc-i440fx-7.2", Alias: "pc", IsDefault: true, CPUMax: 255}) {
		t.Errorf("Machines = %+v", mach)
	}
	if resolve != "pc-i440fx-7.2" || current != "pc-i440fx-7.2" {
		t.Errorf("ResolveMachine(pc) = %q, CurrentMachine = %q", resolve, current)
	}
	for name, want := range map[string]string{"": "pc-i440fx-7.2", "q35": "pc-q35-7.2", "pc-i440fx-7.1": "pc-i440fx-7.1", "pc-i440fx-7.2": "pc-i440fx-7.2"} {
		if got, err := resolveMachine(mach, name); got != want || err != nil {
			t.Errorf("resolveMachine(%q) = %q, %v; want %q", name, got, err, want)
		}
	}
	if _, err := resolveMachine(mach, "isapc"); err == nil {
		t.Error("resolveMachine of an unknown type did not fail")
	}
	wantMI := MigrationInfo{Status: MigrationActive, TotalTime: 1500 * time.Millisecond, ExpectedDowntime: 300 * time.Millisecond,
		SetupTime: 4 * time.Millisecond, CPUThrottlePercentage: 30,
		RAM: MigrationRAM{Transferred: 1000, Remaining: 2000, Total: 64 << 20, Duplicate: 5, Normal: 7, NormalBytes: 28672,
			DirtyPagesRate: 11, MBps: 812.5, DirtySyncCount: 2, PageSize: 4096, PagesPerSecond: 99}}
	if mi != wantMI {
		t.Errorf("QueryMigrate = %+v\nwant %+v", mi, wantMI)
	}
	if !reflect.DeepEqual(caps, map[string]bool{"xbzrle": false, "events": true}) {
		t.Errorf("Capabilities = %v", caps)
	}
	wantParams := MigrationParameters{DowntimeLimit: new(300 * time.Millisecond), MaxBandwidth: new(int64(128 << 20)),
		CPUThrottleInitial: new(20), CPUThrottleIncrement: new(10), CPUThrottleTailslow: new(false), MaxCPUThrottle: new(99),
		ThrottleTriggerThreshold: new(50), MultifdChannels: new(2), MultifdCompression: new("none"),
		XBZRLECacheSize: new(int64(64 << 20)), MaxPostcopyBandwidth: new(int64(0))}
	if !reflect.DeepEqual(params, wantParams) {
		t.Errorf("Parameters = %s\nwant %s", canonical(t, params), canonical(t, wantParams))
	}
	// What Parameters read, SetParameters writes back whole: the rollback's round trip.
	if got, want := canonical(t, params), canonical(t, `{"cpu-throttle-tailslow": false, "xbzrle-cache-size": 67108864,
		"cpu-throttle-initial": 20, "multifd-channels": 2, "downtime-limit": 300, "multifd-compression": "none", "max-cpu-throttle": 99,
		"max-postcopy-bandwidth": 0, "throttle-trigger-threshold": 50, "max-bandwidth": 134217728, "cpu-throttle-increment": 10}`); got != want {
		t.Errorf("Parameters marshal as %s\nwant %s", got, want)
	}
	if !strings.Contains(hmp, "pc.ram") {
		t.Errorf("HMP = %q", hmp)
	}
	// The second backend is from a QEMU that gives neither its id nor "reserve" (before 6.0): no path, reserved.
	wantMds := []MemoryBackend{{ID: "pc.ram", Size: 64 << 20, Reserve: true}, {Size: 1 << 20, Prealloc: true, Share: true, Reserve: true}}
	if !reflect.DeepEqual(mds, wantMds) || mds[0].Path() != "/objects/pc.ram" || mds[1].Path() != "" {
		t.Errorf("MemoryBackends = %+v", mds)
	}

	// Empty sets send nothing.
	n := len(r.commands())
	if err := q.SetCapabilities(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := q.SetParameters(ctx, MigrationParameters{}); err != nil {
		t.Fatal(err)
	}
	if len(r.commands()) != n {
		t.Errorf("empty SetCapabilities/SetParameters sent %v", r.commands()[n:])
	}

	// Preallocate with threads sets prealloc-threads first: prealloc's setter reads it.
	if err := q.Preallocate(ctx, "/objects/mem0", 2); err != nil {
		t.Fatal(err)
	}
	got := r.commands()[n:]
	if len(got) != 2 || canonical(t, got[0]["arguments"]) != canonical(t, `{"path": "/objects/mem0", "property": "prealloc-threads", "value": 2}`) ||
		canonical(t, got[1]["arguments"]) != canonical(t, `{"path": "/objects/mem0", "property": "prealloc", "value": true}`) {
		t.Errorf("Preallocate(mem0, 2) sent %v", got)
	}
}

func TestSetCapabilitiesCommand(t *testing.T) {
	got := SetCapabilitiesCommand(map[string]bool{"xbzrle": false, "multifd": false})
	want := `{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"multifd","state":false},{"capability":"xbzrle","state":false}]}}`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestQueryMigrateNoMigrationAndErrors(t *testing.T) {
	_, q := newRecorder(t, map[string][]string{
		"query-migrate": ret(`{}`),
		"migrate":       {`{"error": {"class": "GenericError", "desc": "There's a migration process in progress"}, "id": ID}`},
		"qom-get":       ret(`"some-device"`),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	mi, err := q.QueryMigrate(ctx)
	if err != nil || mi.Status != MigrationNone || mi.Status.Active() || mi.Status.Finished() {
		t.Fatalf("QueryMigrate with no migration = %+v, %v", mi, err)
	}
	var qe *Error
	if err := q.Migrate(ctx, "unix:/x"); !errors.As(err, &qe) || qe.Command != "migrate" || qe.Class != "GenericError" ||
		!strings.Contains(err.Error(), "in progress") {
		t.Fatalf("Migrate error = %#v", err)
	}
	if _, err := q.CurrentMachine(ctx); err == nil {
		t.Fatal("CurrentMachine accepted a non-machine type")
	}
}

func TestMigrationStatusPredicates(t *testing.T) {
	for s, want := range map[MigrationStatus][2]bool{ // active, finished
		"": {false, false}, MigrationNone: {false, false}, MigrationSetup: {true, false}, MigrationActive: {true, false},
		MigrationCancelling: {true, false}, MigrationDevice: {true, false}, MigrationPreSwitchover: {true, false},
		MigrationPostcopyActive: {true, false}, MigrationCompleted: {false, true}, MigrationFailed: {false, true},
		MigrationCancelled: {false, true},
	} {
		if s.Active() != want[0] || s.Finished() != want[1] {
			t.Errorf("%q: Active %v Finished %v, want %v", s, s.Active(), s.Finished(), want)
		}
	}
}

func TestQuitWhenQEMUClosesTheSocket(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for name, lines := range map[string][]string{
		"answer then close": {`{"timestamp": {"seconds": 1, "microseconds": 0}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}`,
			`{"return": {}, "id": ID}`, "CLOSE"},
		"close without an answer": {"CLOSE"},
	} {
		_, q := newRecorder(t, map[string][]string{"quit": lines})
		if err := q.Quit(ctx); err != nil {
			t.Errorf("%s: Quit = %v", name, err)
		}
		select {
		case <-q.Done():
		case <-ctx.Done():
			t.Fatalf("%s: connection still open", name)
		}
		// Now the connection is gone: a second Quit cannot know QEMU quit, and says so.
		if err := q.Quit(ctx); !errors.Is(err, ErrClosed) {
			t.Errorf("%s: Quit on a closed connection = %v", name, err)
		}
	}
}
