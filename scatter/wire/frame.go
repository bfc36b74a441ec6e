package wire

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
)

// ErrFrame says a frame was malformed, too large, forged or replayed.
var ErrFrame = errors.New("bad frame")

// FrameType is the first plaintext byte of a frame. docs/control.md lists each with its direction and payload.
type FrameType byte

const (
	// Control connection.
	FrameHello     FrameType = 0x01 // sender→receiver, JSON HelloMsg
	FrameInfo      FrameType = 0x02 // receiver→sender, JSON InfoMsg
	FrameContent   FrameType = 0x03 // sender→receiver, binary: content records (unicast prime)
	FramePrimeDone FrameType = 0x04 // sender→receiver, JSON PrimeDoneMsg
	FramePrimeAck  FrameType = 0x05 // receiver→sender, JSON PrimeAckMsg
	FrameBye       FrameType = 0x06 // sender→receiver, empty

	// VM connection.
	FrameOpen         FrameType = 0x10 // sender→receiver, JSON OpenMsg
	FrameReady        FrameType = 0x11 // receiver→sender, JSON ReadyMsg
	FramePrefix       FrameType = 0x12 // sender→receiver, raw stream bytes before the ram section
	FrameRAMStart     FrameType = 0x13 // sender→receiver, JSON RAMStartMsg
	FrameSection      FrameType = 0x14 // sender→receiver, binary: kind byte (2 part, 3 end) + be32 section id
	FramePages        FrameType = 0x15 // sender→receiver, binary: page records (dedup record codec)
	FrameSectionEnd   FrameType = 0x16 // sender→receiver, empty
	FrameTail         FrameType = 0x17 // sender→receiver, raw device-state bytes
	FrameStreamEnd    FrameType = 0x18 // sender→receiver, empty: the source closed its stream
	FrameReturnPath   FrameType = 0x19 // receiver→sender, raw bytes from the destination QEMU
	FrameRunning      FrameType = 0x1a // receiver→sender, JSON RunningMsg
	FrameCommit       FrameType = 0x1b // sender→receiver, empty: the source has quit, the VM is the target's
	FrameAbort        FrameType = 0x1c // sender→receiver, JSON ErrorMsg: tear the destination down
	FrameError        FrameType = 0x1d // either way, JSON ErrorMsg
	FrameDone         FrameType = 0x1e // receiver→sender, JSON DoneMsg: commit carried out
	FrameStreamCancel FrameType = 0x1f // sender→receiver, JSON ErrorMsg: the source stream failed
	FrameLoaded       FrameType = 0x20 // receiver→sender, JSON RunningMsg: destination loaded, paused
	FrameStart        FrameType = 0x21 // sender→receiver, empty: start the destination
	FrameAborted      FrameType = 0x24 // receiver→sender, JSON ErrorMsg: this epoch's destination is gone and never ran
	FrameAttach       FrameType = 0x25 // sender→receiver, JSON AttachMsg: a VM connection for a migration that exists
	FrameQuery        FrameType = 0x26 // sender→receiver, JSON EpochMsg: where does this VM stand?
	FrameState        FrameType = 0x27 // receiver→sender, JSON StateMsg: the answer to QUERY
	FrameSwitchover   FrameType = 0x23 // sender→receiver, empty: QEMU 10.0+'s SWITCHOVER_START, between two RAM sections
	FramePagesZ       FrameType = 0x22 // sender→receiver, binary: a PAGES payload compressed as a whole (dedup.CompressRecords)
	FrameJoin         FrameType = 0x07 // sender→receiver (control), JSON JoinMsg: join a multicast group now
	FrameJoined       FrameType = 0x08 // receiver→sender (control), JSON JoinedMsg: joined (error empty) or not
	FrameLeave        FrameType = 0x09 // sender→receiver (control), JSON LeaveMsg: leave a group
	FrameSeedFiles    FrameType = 0x0a // sender→receiver (control), JSON SeedFilesMsg: a seed's files and salt
	FrameSeed         FrameType = 0x0b // sender→receiver (control), binary: seed records
	FrameSeedDone     FrameType = 0x0c // sender→receiver (control), JSON SeedDoneMsg
	FrameSeedAck      FrameType = 0x0d // receiver→sender (control), JSON SeedAckMsg
	FrameDigests      FrameType = 0x0e // sender→receiver (control), binary: digest records of a group's contents
	FrameLibvirtOpen  FrameType = 0x28 // sender→receiver, JSON LibvirtOpenMsg: a libvirt-managed migration (libvirt.go)
	FrameLibvirtDone  FrameType = 0x29 // receiver→sender, JSON LibvirtDoneMsg: the libvirt-managed stream ended
)

func (t FrameType) String() string {
	if n, ok := frameNames[t]; ok {
		return n
	}
	return fmt.Sprintf("frame 0x%02x", byte(t))
}

var frameNames = map[FrameType]string{
	FrameHello: "HELLO", FrameInfo: "INFO", FrameContent: "CONTENT", FramePrimeDone: "PRIME_DONE",
	FramePrimeAck: "PRIME_ACK", FrameBye: "BYE", FrameOpen: "OPEN", FrameReady: "READY", FramePrefix: "PREFIX",
	FrameRAMStart: "RAM_START", FrameSection: "SECTION", FramePages: "PAGES", FrameSectionEnd: "SECTION_END",
	FrameTail: "TAIL", FrameStreamEnd: "STREAM_END", FrameReturnPath: "RETURN_PATH", FrameRunning: "RUNNING",
	FrameCommit: "COMMIT", FrameAbort: "ABORT", FrameError: "ERROR", FrameDone: "DONE", FrameStreamCancel: "STREAM_CANCEL",
	FrameLoaded: "LOADED", FrameStart: "START", FrameJoin: "JOIN", FrameJoined: "JOINED", FrameLeave: "LEAVE",
	FrameSeedFiles: "SEED_FILES", FrameSeed: "SEED", FrameSeedDone: "SEED_DONE", FrameSeedAck: "SEED_ACK", FrameDigests: "DIGESTS",
	FramePagesZ: "PAGES_Z", FrameSwitchover: "SWITCHOVER_START", FrameAborted: "ABORTED", FrameAttach: "ATTACH",
	FrameQuery: "QUERY", FrameState: "STATE", FrameLibvirtOpen: "LIBVIRT_OPEN", FrameLibvirtDone: "LIBVIRT_DONE",
}

// SessionID names one scatter run on every receiver.
type SessionID [16]byte

func (s SessionID) String() string { return fmt.Sprintf("%x", s[:]) }

// MarshalText encodes the id as hex.
func (s SessionID) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText decodes a hex id.
func (s *SessionID) UnmarshalText(b []byte) error {
	if len(b) != 2*len(s) {
		return fmt.Errorf("session id: want %d hex digits, got %d", 2*len(s), len(b))
	}
	_, err := hex.Decode(s[:], b)
	return err
}

// Marshal encodes a JSON message for a frame.
func Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Unmarshal decodes the JSON payload of a frame of type t; a bad payload is an ErrFrame.
func Unmarshal(t FrameType, b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %s payload: %v", ErrFrame, t, err)
	}
	return nil
}

// PeerError is an error reported by the other side in an ERROR frame.
type PeerError struct{ Msg string }

func (e *PeerError) Error() string { return "receiver: " + e.Msg }

// ParseError turns an ERROR (or ABORT, STREAM_CANCEL) payload into the peer's text.
func ParseError(b []byte) string {
	var e ErrorMsg
	_ = json.Unmarshal(b, &e)
	return e.Error
}
