package wire

import (
	"fmt"
	"regexp"

	"github.com/vmscatter/vmscatter/qemu/stream"
)

// HelloMsg opens a control connection: the run and the sender.
type HelloMsg struct {
	Session SessionID `json:"session"`
	Sender  string    `json:"sender"` // sender host name, for logs
	// QEMU names the QEMU binaries the sender's VMs run (argv[0]'s base name, e.g. "qemu-system-x86_64"): INFO says
	// which binary the receiver would start for each, and what it can run.
	QEMU []string `json:"qemu,omitempty"`
}

// MaxHelloQEMU bounds the binary names of one HELLO.
const MaxHelloQEMU = 16

// InfoMsg is the receiver's answer to HELLO: what it offers for placement.
type InfoMsg struct {
	Host         string `json:"host"`
	MemAvailable uint64 `json:"mem_available"`
	CPUs         int    `json:"cpus"`
	StoreLimit   int64  `json:"store_limit"` // memory for the session's content store, in bytes
	// StoreContents is how many contents the session's store holds at most (seeded and primed): the sender primes no
	// more. 0 from an old receiver, whose store held StoreLimit/4096 pages in memory.
	StoreContents int        `json:"store_contents,omitempty"`
	Capacity      uint64     `json:"capacity,omitempty"` // memory offered to migrated VMs, if configured
	MaxVMs        int        `json:"max_vms,omitempty"`
	QEMU          []QEMUInfo `json:"qemu,omitempty"` // one for each name of HELLO's qemu, in its order
}

// QEMUInfo is the QEMU binary a receiver starts the destinations of one source binary name with.
type QEMUInfo struct {
	Name     string   `json:"name"`               // the name HELLO asked for
	Path     string   `json:"path,omitempty"`     // the binary: --qemu, else the name looked up on the receiver's PATH
	Version  string   `json:"version,omitempty"`  // MAJOR.MINOR.MICRO, e.g. "7.2.22"
	Machines []string `json:"machines,omitempty"` // the concrete machine types it runs, e.g. "pc-i440fx-7.2"
	Error    string   `json:"error,omitempty"`    // why the receiver has no such binary, or could not probe it
}

// PrimeDoneMsg ends the prime's CONTENT frames.
type PrimeDoneMsg struct {
	Contents int `json:"contents"`
}

// PrimeAckMsg is the receiver's count of the contents it holds after the prime.
type PrimeAckMsg struct {
	Held  int   `json:"held"`
	Bytes int64 `json:"bytes"`
	// Missing are the multicast contents the receiver dropped and does not hold: their bytes did not match the
	// digest DIGESTS gave, or no digest came for them. The sender never references them.
	Missing []uint32 `json:"missing,omitempty"`
	Error   string   `json:"error,omitempty"`
}

// OpenMsg opens a VM connection: the VM, the source's command line and what the destination needs to load it.
type OpenMsg struct {
	Session      SessionID       `json:"session"`
	VM           string          `json:"vm"`
	Epoch        uint64          `json:"epoch"` // this migration of the VM: greater than every earlier one's
	Argv         []string        `json:"argv"`
	Capabilities map[string]bool `json:"capabilities"`  // migration capabilities the destination must share
	Run          bool            `json:"run"`           // the source ran: START resumes the destination
	Slot         int             `json:"slot"`          // the VM's index in the sender's list, as in CONTENT records
	WatchConsole bool            `json:"watch_console"` // report when the guest's first console line arrives after START`
	// Disks is the identity of every disk image the source's command line opens that vmscatter checks, backing
	// files included, read at the source (qemu.IdentifyDisks): the receiver checks each against its own file at the
	// same path before it launches the destination (shared storage).
	Disks []DiskMsg `json:"disks,omitempty"`
}

// MaxDisks bounds the disk identities of one OPEN.
const MaxDisks = 256

// DiskMsg is one disk image's identity as the sender read it at the source. It has exactly the fields of
// qemu.ImageIdentity, so that each side converts with a type conversion (wire.DiskMsg(id), qemu.ImageIdentity(m));
// see there for what each field means and why it identifies the image while the source QEMU writes to it.
type DiskMsg struct {
	Path          string      `json:"path"`
	Format        string      `json:"format"`
	Size          int64       `json:"size"`
	VirtualSize   uint64      `json:"virtual_size,omitempty"`
	ClusterBits   uint32      `json:"cluster_bits,omitempty"`
	BackingFile   string      `json:"backing_file,omitempty"`
	BackingFormat string      `json:"backing_format,omitempty"`
	DataFile      string      `json:"data_file,omitempty"`
	Head          []byte      `json:"head,omitempty"` // SHA-256, 32 bytes (base64 in JSON)
	L1            [][2]uint64 `json:"l1,omitempty"`   // [index, L2 table offset] pairs
}

// ReadyMsg says the destination QEMU runs paused and waits for the stream.
type ReadyMsg struct {
	Epoch uint64 `json:"epoch"`
	PID   int    `json:"pid"`
}

// RunningMsg is the destination's state after loading (LOADED) or after START (RUNNING).
type RunningMsg struct {
	Epoch  uint64 `json:"epoch"`
	Status string `json:"status"`
	PID    int    `json:"pid"`
}

// JoinMsg asks a receiver to join a multicast group of the prime. The data key is fresh for every run.
type JoinMsg struct {
	Group      string `json:"group"` // "239.255.x.y:port"
	ReceiverID uint16 `json:"receiver_id"`
	Key        []byte `json:"key"`        // 32 bytes, AES-256-GCM data key
	SessionID  uint64 `json:"session_id"` // the data plane's session number
	RateBps    int64  `json:"rate_bps"`
	LocalSlots []int  `json:"local_slots"` // VM slots placed on this receiver (content records name all holders)
	// Salt is the session's digest key (32 bytes, dedup.Digester): the receiver checks each content the group
	// delivers against the digest DIGESTS gave for it.
	Salt []byte `json:"salt"`
}

// LeaveMsg asks a receiver to leave a multicast group.
type LeaveMsg struct {
	Group string `json:"group"`
}

// DoneMsg answers COMMIT.
type DoneMsg struct {
	Epoch             uint64 `json:"epoch"`
	FirstOutputUnixMS int64  `json:"first_output_unix_ms,omitempty"` // first console line after START, host time
}

// ErrorMsg is the payload of ERROR, ABORT and STREAM_CANCEL: the reason, for the operator.
type ErrorMsg struct {
	Epoch uint64 `json:"epoch,omitempty"` // on a VM connection: the migration it is about
	Error string `json:"error"`
}

// EpochMsg is the payload of START, COMMIT and QUERY: the migration they are about.
type EpochMsg struct {
	Epoch uint64 `json:"epoch"`
}

// AttachMsg opens a VM connection for a migration the receiver already knows (the sender reconnecting after a
// lost connection, or `vmscatter recover`), instead of OPEN: the frames that follow are about that migration.
type AttachMsg struct {
	Session SessionID `json:"session"`
	VM      string    `json:"vm"`
	Epoch   uint64    `json:"epoch"`
}

// StateMsg answers QUERY: the receiver's journal of the VM and what its destination QEMU is now.
type StateMsg struct {
	Epoch uint64 `json:"epoch"` // the epoch of the receiver's record (0: it has none)
	Phase string `json:"phase"` // the receiver's phase for that epoch (scatter/commit's names), "" if none
	Dest  string `json:"dest"`  // the destination QEMU: "running", "paused", "gone", or another run state
}

// RAMStartMsg is RAM_START's payload: the source's ram START section, whose block list every later page record
// refers to by index. It is stream.RAMStart with the wire's own names, so that renaming a field of the codec never
// changes the protocol; RAMStartToWire and RAMStartMsg.FromWire convert at the boundary.
type RAMStartMsg struct {
	SectionID    uint32          `json:"section_id"`
	InstanceID   uint32          `json:"instance_id"`
	VersionID    uint32          `json:"version_id"`
	Blocks       []RAMBlockEntry `json:"blocks"`
	IgnoreShared bool            `json:"ignore_shared,omitempty"`
}

// RAMBlockEntry is one RAM block of RAM_START.
type RAMBlockEntry struct {
	ID     string `json:"id"`
	Length uint64 `json:"length"`
	Addr   uint64 `json:"addr,omitempty"` // present when IgnoreShared
}

// RAMStartToWire converts the codec's RAM START for the wire.
func RAMStartToWire(s stream.RAMStart) RAMStartMsg {
	m := RAMStartMsg{SectionID: s.SectionID, InstanceID: s.InstanceID, VersionID: s.VersionID, IgnoreShared: s.IgnoreShared}
	for _, b := range s.Blocks {
		m.Blocks = append(m.Blocks, RAMBlockEntry{ID: b.ID, Length: b.Length, Addr: b.Addr})
	}
	return m
}

// FromWire converts RAM_START back into the codec's RAM START.
func (m RAMStartMsg) FromWire() stream.RAMStart {
	s := stream.RAMStart{SectionID: m.SectionID, InstanceID: m.InstanceID, VersionID: m.VersionID, IgnoreShared: m.IgnoreShared}
	for _, b := range m.Blocks {
		s.Blocks = append(s.Blocks, stream.RAMBlock{ID: b.ID, Length: b.Length, Addr: b.Addr})
	}
	return s
}

// vmNameRE is what a VM name may be: it names the VM's directory on the receiver.
var vmNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// CheckVMName refuses a VM name that could not name a directory safely.
func CheckVMName(name string) error {
	if !vmNameRE.MatchString(name) {
		return fmt.Errorf("invalid VM name %q: use letters, digits, '.', '_' and '-'", name)
	}
	return nil
}

// JoinedMsg answers JOIN: joined (Error empty), or why not.
type JoinedMsg struct {
	Error string `json:"error"`
}
