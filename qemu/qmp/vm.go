package qmp

import (
	"context"
	"fmt"
	"strings"
)

// RunState is QEMU's run state (QAPI RunState), as query-status reports it.
type RunState string

// Run states (qapi/run-state.json).
const (
	RunStateDebug         RunState = "debug"
	RunStateInMigrate     RunState = "inmigrate"      // waiting for or loading an incoming migration
	RunStateInternalError RunState = "internal-error" // an internal error stopped the VM
	RunStateIOError       RunState = "io-error"
	RunStatePaused        RunState = "paused"
	RunStatePostMigrate   RunState = "postmigrate"    // the source after a completed migration
	RunStatePrelaunch     RunState = "prelaunch"      // started with -S, never run
	RunStateFinishMigrate RunState = "finish-migrate" // stopped for a migration's switch-over
	RunStateRestoreVM     RunState = "restore-vm"
	RunStateRunning       RunState = "running"
	RunStateSaveVM        RunState = "save-vm"
	RunStateShutdown      RunState = "shutdown"
	RunStateSuspended     RunState = "suspended"
	RunStateWatchdog      RunState = "watchdog"
	RunStateGuestPanicked RunState = "guest-panicked"
	RunStateColo          RunState = "colo"
)

// Running reports whether the vCPUs run in this state (query-status's "running" is exactly this).
func (s RunState) Running() bool { return s == RunStateRunning }

// Status returns the VM's run state (query-status).
func (q *Client) Status(ctx context.Context) (RunState, error) {
	var st struct {
		Status RunState `json:"status"`
	}
	err := q.Execute(ctx, "query-status", nil, &st)
	return st.Status, err
}

// Stop stops the vCPUs (stop). Stopping a stopped VM succeeds. QEMU has sent the STOP event when Stop returns.
func (q *Client) Stop(ctx context.Context) error {
	return q.Execute(ctx, "stop", nil, nil)
}

// Cont runs the vCPUs (cont). Continuing a running VM succeeds; a VM still loading an incoming migration starts
// when the load completes. QEMU has sent the RESUME event when Cont returns (unless the start was deferred).
func (q *Client) Cont(ctx context.Context) error {
	return q.Execute(ctx, "cont", nil, nil)
}

// Quit makes QEMU exit (quit). It returns nil once QEMU has acknowledged the command or closed the socket as it
// quits, whichever comes first; Done is closed when the socket is. A connection that had already ended before Quit
// was sent is an error (wrapping ErrClosed): this client cannot tell that QEMU quit.
func (q *Client) Quit(ctx context.Context) error {
	sent, err := q.call(ctx, "quit", nil, nil)
	if sent && isClosed(err) {
		return nil
	}
	return err
}

// MemorySize is QEMU's guest RAM (query-memory-size-summary), in bytes.
type MemorySize struct {
	Base    int64 `json:"base-memory"`    // the boot RAM (-m)
	Plugged int64 `json:"plugged-memory"` // hot-plugged memory devices (DIMMs, virtio-mem, ...)
}

// MemorySizeSummary returns the size of the guest's RAM (query-memory-size-summary).
func (q *Client) MemorySizeSummary(ctx context.Context) (MemorySize, error) {
	var m MemorySize
	err := q.Execute(ctx, "query-memory-size-summary", nil, &m)
	return m, err
}

// VCPUThreads returns the host thread id of each vCPU, in vCPU order (query-cpus-fast "thread-id").
func (q *Client) VCPUThreads(ctx context.Context) ([]int, error) {
	var cpus []struct {
		Thread int `json:"thread-id"`
	}
	if err := q.Execute(ctx, "query-cpus-fast", nil, &cpus); err != nil {
		return nil, err
	}
	tids := make([]int, len(cpus))
	for i, c := range cpus {
		tids[i] = c.Thread
	}
	return tids, nil
}

// Memory device types (QAPI MemoryDeviceInfoKind).
const (
	MemoryDeviceDIMM       = "dimm"
	MemoryDeviceNVDIMM     = "nvdimm"
	MemoryDeviceVirtioPMEM = "virtio-pmem"
	MemoryDeviceVirtioMem  = "virtio-mem"
	MemoryDeviceSGXEPC     = "sgx-epc"
)

// MemoryDevice is one memory device (query-memory-devices): RAM beyond the boot RAM.
type MemoryDevice struct {
	Type   string // MemoryDeviceDIMM, MemoryDeviceVirtioMem, ...
	ID     string // the device's id=, if it has one
	Addr   int64  // guest-physical address ("addr" of DIMMs, "memaddr" of the others)
	Size   int64  // bytes (for virtio-mem: currently plugged)
	Memdev string // QOM path of the backend
}

// MemoryDevices lists the VM's memory devices (query-memory-devices); a VM with only boot RAM has none.
func (q *Client) MemoryDevices(ctx context.Context) ([]MemoryDevice, error) {
	var devs []struct {
		Type string `json:"type"`
		Data struct {
			ID      string `json:"id"`
			Addr    int64  `json:"addr"`
			MemAddr int64  `json:"memaddr"`
			Size    int64  `json:"size"`
			Memdev  string `json:"memdev"`
		} `json:"data"`
	}
	if err := q.Execute(ctx, "query-memory-devices", nil, &devs); err != nil {
		return nil, err
	}
	out := make([]MemoryDevice, len(devs))
	for i, d := range devs {
		out[i] = MemoryDevice{Type: d.Type, ID: d.Data.ID, Addr: max(d.Data.Addr, d.Data.MemAddr), Size: d.Data.Size, Memdev: d.Data.Memdev}
	}
	return out, nil
}

// MemoryBackend is one host memory backend (query-memdev): the RAM of -m (an implicit backend, whose id is the
// machine's default RAM id, "pc.ram" on x86) or an -object memory-backend-*.
type MemoryBackend struct {
	ID       string // the object's id; "" from a QEMU that does not say (query-memdev has had "id" since 6.0)
	Size     int64  // bytes
	Prealloc bool   // every page is allocated (prealloc=on, -mem-prealloc, or a run-time Preallocate)
	Share    bool   // share=on: the pages are a file's or shared memory's, which other processes may map
	Reserve  bool   // swap space is reserved (reserve=on, the default): prealloc=on needs it
}

// Path is the backend's QOM path, "" when the QEMU did not give its id.
func (b MemoryBackend) Path() string {
	if b.ID == "" {
		return ""
	}
	return "/objects/" + b.ID
}

// MemoryBackends lists the VM's host memory backends (query-memdev).
func (q *Client) MemoryBackends(ctx context.Context) ([]MemoryBackend, error) {
	var mds []struct {
		ID       string `json:"id"`
		Size     int64  `json:"size"`
		Prealloc bool   `json:"prealloc"`
		Share    bool   `json:"share"`
		Reserve  *bool  `json:"reserve"` // since 6.1
	}
	if err := q.Execute(ctx, "query-memdev", nil, &mds); err != nil {
		return nil, err
	}
	out := make([]MemoryBackend, len(mds))
	for i, m := range mds {
		out[i] = MemoryBackend{ID: m.ID, Size: m.Size, Prealloc: m.Prealloc, Share: m.Share,
			Reserve: m.Reserve == nil || *m.Reserve}
	}
	return out, nil
}

// QOMSet sets property of the QOM object at path to value (qom-set).
func (q *Client) QOMSet(ctx context.Context, path, property string, value any) error {
	return q.Execute(ctx, "qom-set", map[string]any{"path": path, "property": property, "value": value}, nil)
}

// Preallocate allocates every page of the memory backend at path now, keeping their contents: it sets the backend's
// prealloc-threads to threads (if threads > 0), then prealloc to true (backends/hostmem.c does the allocation in the
// setter). QEMU's main loop does nothing else until the allocation is done: no other QMP command is answered, no
// incoming migration loads, and the threads it starts for the work inherit its main thread's scheduling. A
// context that ends returns at once but stops nothing in QEMU.
func (q *Client) Preallocate(ctx context.Context, path string, threads int) error {
	if threads > 0 {
		if err := q.QOMSet(ctx, path, "prealloc-threads", threads); err != nil {
			return err
		}
	}
	return q.QOMSet(ctx, path, "prealloc", true)
}

// Version is a QEMU's version (query-version).
type Version struct {
	Major, Minor, Micro int
	Package             string // the distribution's build, e.g. "Debian 1:7.2+dfsg-7+deb12u18"
}

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

// AtLeast reports whether v is major.minor or later.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || v.Major == major && v.Minor >= minor
}

// Version returns the QEMU's version (query-version).
func (q *Client) Version(ctx context.Context) (Version, error) {
	var r struct {
		QEMU struct {
			Major int `json:"major"`
			Minor int `json:"minor"`
			Micro int `json:"micro"`
		} `json:"qemu"`
		Package string `json:"package"`
	}
	if err := q.Execute(ctx, "query-version", nil, &r); err != nil {
		return Version{}, err
	}
	return Version{Major: r.QEMU.Major, Minor: r.QEMU.Minor, Micro: r.QEMU.Micro, Package: strings.TrimSpace(r.Package)}, nil
}

// MachineInfo is one machine type this QEMU binary provides (query-machines).
type MachineInfo struct {
	Name       string `json:"name"`       // the concrete type, e.g. "pc-i440fx-7.2"
	Alias      string `json:"alias"`      // the short name that stands for it in this binary, e.g. "pc"; often none
	IsDefault  bool   `json:"is-default"` // the type a -machine-less command line gets
	CPUMax     int    `json:"cpu-max"`
	Deprecated bool   `json:"deprecated"`
}

// Machines lists the machine types this QEMU binary provides (query-machines).
func (q *Client) Machines(ctx context.Context) ([]MachineInfo, error) {
	var ms []MachineInfo
	err := q.Execute(ctx, "query-machines", nil, &ms)
	return ms, err
}

// ResolveMachine returns the concrete machine type that name stands for in this QEMU binary (query-machines): an
// alias ("pc", "q35") resolves to the versioned type it names here (e.g. "pc-i440fx-7.2"), a concrete type to
// itself, and "" to the default type. The same alias names different types in different QEMU versions, which is why
// a migration's destination must be given the source's concrete type.
func (q *Client) ResolveMachine(ctx context.Context, name string) (string, error) {
	ms, err := q.Machines(ctx)
	if err != nil {
		return "", err
	}
	return resolveMachine(ms, name)
}

func resolveMachine(ms []MachineInfo, name string) (string, error) {
	for _, m := range ms {
		if name == "" && m.IsDefault || name != "" && (m.Name == name || m.Alias == name) {
			return m.Name, nil
		}
	}
	if name == "" {
		return "", fmt.Errorf("qmp query-machines: no default machine type")
	}
	return "", fmt.Errorf("qmp query-machines: no machine type %q in this QEMU", name)
}

// CurrentMachine returns the concrete machine type the VM runs (e.g. "pc-i440fx-7.2" for -machine pc): the QOM type
// of /machine (qom-get), without its "-machine" suffix. query-current-machine does not tell the type.
func (q *Client) CurrentMachine(ctx context.Context) (string, error) {
	var typ string
	if err := q.Execute(ctx, "qom-get", map[string]any{"path": "/machine", "property": "type"}, &typ); err != nil {
		return "", err
	}
	name, ok := strings.CutSuffix(typ, "-machine")
	if !ok || name == "" {
		return "", fmt.Errorf("qmp qom-get: /machine has type %q, not a machine type", typ)
	}
	return name, nil
}

// Pmemsave writes size bytes of guest-physical memory from addr to a file on QEMU's host (pmemsave). Stop the VM
// first for a consistent image.
func (q *Client) Pmemsave(ctx context.Context, addr, size int64, filename string) error {
	return q.Execute(ctx, "pmemsave", map[string]any{"val": addr, "size": size, "filename": filename}, nil)
}
