// Package stream is the QEMU pre-copy migration stream codec: a decoder that turns a source QEMU's stream into
// typed records (prefix, RAM sections and pages, device-state tail) and an encoder that writes a byte-valid stream
// from them for a destination QEMU. docs/stream.md gives the byte layout. It is a leaf: it imports nothing of the
// project.
package stream

// The pre-copy migration stream codec of QEMU 7.2 through 11.1: the shared vocabulary of the decoder (decode.go) and
// the encoder (encode.go). docs/stream.md gives the byte layout and what each QEMU version sends; the constants below
// are named as in QEMU's migration/savevm.c and migration/ram.c.

import (
	"errors"
	"fmt"
)

// PageSize is the target page size of an x86 guest (TARGET_PAGE_BITS 12). RAM records carry their flags in the low
// PageBits bits of the offset word, so every offset in the stream is page aligned by construction.
const (
	PageBits = 12
	PageSize = 1 << PageBits
)

// RAMOffset is a byte offset inside one RAM block (not a guest physical address). Offsets on the wire are multiples
// of PageSize.
type RAMOffset uint64

// PageIndex is the offset's page number inside its block.
func (o RAMOffset) PageIndex() uint64 { return uint64(o) >> PageBits }

// Stream framing (migration/savevm.c).
const (
	streamMagic     = 0x5145564D // "QEVM"
	streamVersion   = 3
	multifdMagic    = 0x11223344 // first word of a multifd channel (migration/multifd.c)
	secEOF          = 0x00
	secStart        = 0x01
	secPart         = 0x02
	secEnd          = 0x03
	secFull         = 0x04
	secSubsection   = 0x05
	secVMDesc       = 0x06
	secConfig       = 0x07
	secCommand      = 0x08
	secFooter       = 0x7E
	ramIDStr        = "ram"
	ramVersion      = 4
	configName      = "configuration"
	capIgnoreShared = "x-ignore-shared"
	capMappedRAM    = "mapped-ram" // QEMU 9.0+, file migration only: the ram START section changes layout
)

// Commands (enum qemu_vm_cmd in migration/savevm.c, read in QEMU v10.0.2; numbers 1-10 are the same since QEMU
// 3.0, 11 came with 10.0).
const (
	cmdOpenReturnPath   = 1  // len 0
	cmdPing             = 2  // len 4
	cmdPostcopyAdvise   = 3  // len 16 (0 when only dirty bitmaps use postcopy)
	cmdPostcopyListen   = 4  // len 0
	cmdPostcopyRun      = 5  // len 0
	cmdPostcopyDiscard  = 6  // variable
	cmdPackaged         = 7  // len 4, postcopy's wrapped device state
	cmdEnableCOLO       = 8  // len 0
	cmdPostcopyResume   = 9  // len 0
	cmdRecvBitmap       = 10 // variable
	cmdSwitchoverStart  = 11 // len 0, QEMU 10.0+: the VM stopped, the final RAM section follows
	switchoverStartSize = 5  // 0x08 · be16 11 · be16 0
)

// RAM record flags (migration/ram.c), in the low PageBits bits of each record's be64 word.
const (
	ramFlagZero         = 0x02
	ramFlagMemSize      = 0x04
	ramFlagPage         = 0x08
	ramFlagEOS          = 0x10
	ramFlagContinue     = 0x20
	ramFlagXBZRLE       = 0x40
	ramFlagHook         = 0x80  // RDMA
	ramFlagCompress     = 0x100 // RAM_SAVE_FLAG_COMPRESS_PAGE, QEMU 9.0 and earlier (9.1 removed compress)
	ramFlagMultifdFlush = 0x200 // QEMU 8.1 and later; 8.1.0-8.1.2 send it without multifd too (see decode.go)
	ramFlagMask         = PageSize - 1
)

// Bounds checked before anything is allocated.
const (
	maxMachineName  = 256     // configuration section: machine type name
	maxCapabilities = 64      // configuration/capabilities entries
	maxRAMBlocks    = 1024    // blocks in the ram START section
	maxPrefix       = 1 << 20 // bytes before the ram START section
)

// SectionKind says whether a RAM section is a PART (sent while the guest runs) or the END (sent once it stopped).
// QEMU's loader treats both alike in pre-copy.
type SectionKind uint8

const (
	SectionKindPart SectionKind = secPart
	SectionKindEnd  SectionKind = secEnd
)

func (k SectionKind) String() string {
	switch k {
	case SectionKindPart:
		return "part"
	case SectionKindEnd:
		return "end"
	}
	return fmt.Sprintf("SectionKind(%#x)", uint8(k))
}

// StreamEvent is one item of a decoded migration stream: Prefix, RAMStart, SectionBegin, Page, SectionEnd,
// SwitchoverStart or Tail.
// (It is not called Event because the QMP client owns that name.)
type StreamEvent interface{ isStreamEvent() }

// Prefix is everything before the ram START section, verbatim: magic, version, the configuration section and
// commands such as OPEN_RETURN_PATH and PING. The fields after Raw are what the decoder read from it.
type Prefix struct {
	Raw          []byte
	Machine      string   // machine type of the source, e.g. "pc-i440fx-7.2"
	Capabilities []string // capabilities QEMU asks the destination to check (configuration/capabilities)
	ReturnPath   bool     // OPEN_RETURN_PATH was sent: the destination answers on the same socket
}

// RAMBlock is one RAM block as announced in the ram START section.
type RAMBlock struct {
	ID     string // QEMU's idstr, e.g. "pc.ram" or "/rom@etc/acpi/tables"
	Length uint64 // used length in bytes, a multiple of PageSize
	// Addr is the block's memory-region address, present on the wire only when the source has x-ignore-shared on.
	Addr uint64
}

// RAMStart is the START section of idstr "ram": the block list every later page refers to.
type RAMStart struct {
	SectionID  uint32
	InstanceID uint32
	VersionID  uint32
	Blocks     []RAMBlock
	// IgnoreShared is true when the prefix's capabilities include x-ignore-shared; each block then carries Addr.
	IgnoreShared bool
}

// SectionBegin opens a PART or END section of the ram state.
type SectionBegin struct {
	Kind      SectionKind
	SectionID uint32
}

// SectionEnd closes the section opened by the last SectionBegin (EOS record and footer).
type SectionEnd struct{}

// Page is one RAM page. A Zero page carries only its Fill byte (QEMU fills the page with it; 7.2 sources send 0).
// Otherwise Data holds PageSize bytes. Data from the Decoder aliases its buffer and is valid until the next Next call.
type Page struct {
	Block  int // index into RAMStart.Blocks
	Offset RAMOffset
	Zero   bool
	Fill   byte
	Data   []byte
}

// SwitchoverStart is QEMU 10.0's MIG_CMD_SWITCHOVER_START command. Sources with machine types 10.0 and later send it
// once, between RAM sections, after the VM stopped and just before the END section of ram (older machine types turn
// it off: hw_compat_9_2's send-switchover-start=off). A destination runs the switchover_start handlers of its devices
// (VFIO's, to start loading device state that came over multifd), so it must arrive where the source put it: after
// every RAM section the source sent before it. QEMU before 10.0 rejects the command ("MIG_CMD 0xb unknown").
type SwitchoverStart struct{}

// Tail is a chunk of everything after the last RAM section: device state (FULL sections), EOF and VMDESCRIPTION,
// verbatim. Chunks are cut wherever reads return; Raw from the Decoder is valid until the next Next call.
type Tail struct{ Raw []byte }

func (Prefix) isStreamEvent()          {}
func (RAMStart) isStreamEvent()        {}
func (SectionBegin) isStreamEvent()    {}
func (SectionEnd) isStreamEvent()      {}
func (SwitchoverStart) isStreamEvent() {}
func (Page) isStreamEvent()            {}
func (Tail) isStreamEvent()            {}

// ErrUnsupported is matched (errors.Is) by every *UnsupportedError.
var ErrUnsupported = errors.New("unsupported migration feature")

// Features the codec refuses, as named in UnsupportedError.Feature. An iterable section of another idstr is named by
// its idstr ("block", "dirty-bitmap", ...), with vfio devices reported as FeatureVFIO.
const (
	FeatureMultifd     = "multifd"
	FeatureCompress    = "compress"
	FeatureXBZRLE      = "xbzrle"
	FeaturePostcopy    = "postcopy"
	FeatureRDMA        = "rdma"
	FeatureCOLO        = "colo"
	FeatureVFIO        = "vfio"
	FeatureEarlyDevice = "device state before ram" // QEMU 8+ early-setup sections
	FeaturePageSize    = "target page size"
	FeatureMappedRAM   = "mapped-ram" // QEMU 9.0+ file migration's fixed-offset RAM layout
)

// UnsupportedError is a valid stream that uses a feature this codec does not handle.
type UnsupportedError struct {
	Feature string
	Offset  int64 // byte offset in the stream where it showed
	Detail  string
}

func (e *UnsupportedError) Error() string {
	s := fmt.Sprintf("migration stream uses %s at byte %d, which vmscatter does not support", e.Feature, e.Offset)
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

// Is makes errors.Is(err, ErrUnsupported) true.
func (e *UnsupportedError) Is(target error) bool { return target == ErrUnsupported }

// Classes of malformed input, the Err of a *StreamError.
var (
	ErrBadHeader         = errors.New("bad stream header")
	ErrBadConfiguration  = errors.New("bad configuration section")
	ErrUnknownSubsection = errors.New("unknown configuration subsection")
	ErrBadSection        = errors.New("bad section")
	ErrBadCommand        = errors.New("bad command")
	ErrBadRAMList        = errors.New("bad RAM block list")
	ErrBadRecord         = errors.New("bad RAM record")
	ErrBadOffset         = errors.New("page offset outside its block")
	ErrUnknownBlock      = errors.New("unknown RAM block")
	ErrNoPreviousBlock   = errors.New("CONTINUE with no previous block")
	ErrBadFooter         = errors.New("bad section footer")
	ErrTooLong           = errors.New("length over limit")
)

// StreamError is malformed input: Err is one of the Err* classes above or io.ErrUnexpectedEOF.
type StreamError struct {
	Offset int64 // byte offset in the stream of the item that failed
	Err    error
	Detail string
}

func (e *StreamError) Error() string {
	s := fmt.Sprintf("migration stream at byte %d: %v", e.Offset, e.Err)
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

func (e *StreamError) Unwrap() error { return e.Err }

// ErrEncoderState is returned when Encoder methods are called out of stream order.
var ErrEncoderState = errors.New("encoder: call out of stream order")

func featureOfSection(idstr string) string {
	if len(idstr) >= 5 && idstr[len(idstr)-5:] == "/vfio" || idstr == "vfio" {
		return FeatureVFIO
	}
	return idstr
}

// commandFeature names the feature behind a command that the codec refuses, or "" for an allowed or unknown one.
// PACKAGED carries postcopy's device state; RECV_BITMAP and POSTCOPY_RESUME come only when a postcopy migration
// recovers.
func commandFeature(cmd uint16) string {
	switch cmd {
	case cmdPostcopyAdvise, cmdPostcopyListen, cmdPostcopyRun, cmdPostcopyDiscard, cmdPackaged, cmdPostcopyResume,
		cmdRecvBitmap:
		return FeaturePostcopy
	case cmdEnableCOLO:
		return FeatureCOLO
	}
	return ""
}
