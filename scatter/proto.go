package scatter

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// frameType is the first plaintext byte of a frame. docs/control.md lists each with its direction and payload.
type frameType byte

const (
	// Control connection.
	frameHello     frameType = 0x01 // sender→receiver, JSON helloMsg
	frameInfo      frameType = 0x02 // receiver→sender, JSON infoMsg
	frameContent   frameType = 0x03 // sender→receiver, binary: content records (unicast prime)
	framePrimeDone frameType = 0x04 // sender→receiver, JSON primeDoneMsg
	framePrimeAck  frameType = 0x05 // receiver→sender, JSON primeAckMsg
	frameBye       frameType = 0x06 // sender→receiver, empty

	// VM connection.
	frameOpen         frameType = 0x10 // sender→receiver, JSON openMsg
	frameReady        frameType = 0x11 // receiver→sender, JSON readyMsg
	framePrefix       frameType = 0x12 // sender→receiver, raw stream bytes before the ram section
	frameRAMStart     frameType = 0x13 // sender→receiver, JSON stream.RAMStart
	frameSection      frameType = 0x14 // sender→receiver, binary: kind byte (2 part, 3 end) + be32 section id
	framePages        frameType = 0x15 // sender→receiver, binary: page records (dedup record codec)
	frameSectionEnd   frameType = 0x16 // sender→receiver, empty
	frameTail         frameType = 0x17 // sender→receiver, raw device-state bytes
	frameStreamEnd    frameType = 0x18 // sender→receiver, empty: the source closed its stream
	frameReturnPath   frameType = 0x19 // receiver→sender, raw bytes from the destination QEMU
	frameRunning      frameType = 0x1a // receiver→sender, JSON runningMsg
	frameCommit       frameType = 0x1b // sender→receiver, empty: the source has quit, the VM is the target's
	frameAbort        frameType = 0x1c // sender→receiver, JSON errorMsg: tear the destination down
	frameError        frameType = 0x1d // either way, JSON errorMsg
	frameDone         frameType = 0x1e // receiver→sender, JSON doneMsg: commit carried out
	frameStreamCancel frameType = 0x1f // sender→receiver, JSON errorMsg: the source stream failed
	frameLoaded       frameType = 0x20 // receiver→sender, JSON runningMsg: destination loaded, paused
	frameStart        frameType = 0x21 // sender→receiver, empty: start the destination
	framePagesZ       frameType = 0x22 // sender→receiver, binary: a PAGES payload compressed as a whole (dedup.CompressRecords)
	frameJoin         frameType = 0x07 // sender→receiver (control), JSON joinMsg: join a multicast group now
	frameJoined       frameType = 0x08 // receiver→sender (control), JSON errorMsg: joined (error empty) or not
	frameLeave        frameType = 0x09 // sender→receiver (control), JSON leaveMsg: leave a group
	frameSeedFiles    frameType = 0x0a // sender→receiver (control), JSON seedFilesMsg: a seed's files and salt
	frameSeed         frameType = 0x0b // sender→receiver (control), binary: seed records
	frameSeedDone     frameType = 0x0c // sender→receiver (control), JSON seedDoneMsg
	frameSeedAck      frameType = 0x0d // receiver→sender (control), JSON seedAckMsg
)

func (t frameType) String() string {
	if n, ok := frameNames[t]; ok {
		return n
	}
	return fmt.Sprintf("frame 0x%02x", byte(t))
}

var frameNames = map[frameType]string{
	frameHello: "HELLO", frameInfo: "INFO", frameContent: "CONTENT", framePrimeDone: "PRIME_DONE",
	framePrimeAck: "PRIME_ACK", frameBye: "BYE", frameOpen: "OPEN", frameReady: "READY", framePrefix: "PREFIX",
	frameRAMStart: "RAM_START", frameSection: "SECTION", framePages: "PAGES", frameSectionEnd: "SECTION_END",
	frameTail: "TAIL", frameStreamEnd: "STREAM_END", frameReturnPath: "RETURN_PATH", frameRunning: "RUNNING",
	frameCommit: "COMMIT", frameAbort: "ABORT", frameError: "ERROR", frameDone: "DONE", frameStreamCancel: "STREAM_CANCEL",
	frameLoaded: "LOADED", frameStart: "START", frameJoin: "JOIN", frameJoined: "JOINED", frameLeave: "LEAVE",
	frameSeedFiles: "SEED_FILES", frameSeed: "SEED", frameSeedDone: "SEED_DONE", frameSeedAck: "SEED_ACK",
	framePagesZ: "PAGES_Z",
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

type helloMsg struct {
	Session SessionID `json:"session"`
	Sender  string    `json:"sender"` // sender host name, for logs
	DataKey []byte    `json:"data_key,omitempty"`
}

type infoMsg struct {
	Host         string `json:"host"`
	MemTotal     uint64 `json:"mem_total"`
	MemAvailable uint64 `json:"mem_available"`
	CPUs         int    `json:"cpus"`
	StoreLimit   int64  `json:"store_limit"`
	Capacity     uint64 `json:"capacity,omitempty"` // memory offered to migrated VMs, if configured
	MaxVMs       int    `json:"max_vms,omitempty"`
}

type primeDoneMsg struct {
	Contents int `json:"contents"`
}

type primeAckMsg struct {
	Held  int    `json:"held"`
	Bytes int64  `json:"bytes"`
	Error string `json:"error,omitempty"`
}

type openMsg struct {
	Session      SessionID       `json:"session"`
	VM           string          `json:"vm"`
	Argv         []string        `json:"argv"`
	Capabilities map[string]bool `json:"capabilities"`  // migration capabilities the destination must share
	Run          bool            `json:"run"`           // the source ran: START resumes the destination
	Slot         int             `json:"slot"`          // the VM's index in the sender's list, as in CONTENT records
	WatchConsole bool            `json:"watch_console"` // report when the guest's first console line arrives after START`
}

type readyMsg struct {
	Dir string `json:"dir"`
	PID int    `json:"pid"`
}

type runningMsg struct {
	Status      string `json:"status"`
	PID         int    `json:"pid"`
	LoadMillis  int64  `json:"load_ms"` // from the first stream byte to the destination running
	StoreHits   int    `json:"store_hits"`
	PagesLoaded int    `json:"pages_loaded"`
}

// joinMsg asks a receiver to join a multicast group of the prime. The data key is fresh for every run.
type joinMsg struct {
	Group      string `json:"group"` // "239.255.x.y:port"
	ReceiverID uint16 `json:"receiver_id"`
	Key        []byte `json:"key"`        // 32 bytes, AES-256-GCM data key
	SessionID  uint64 `json:"session_id"` // the data plane's session number
	RateBps    int64  `json:"rate_bps"`
	LocalSlots []int  `json:"local_slots"` // VM slots placed on this receiver (content records name all holders)
}

type leaveMsg struct {
	Group string `json:"group"`
}

type doneMsg struct {
	FirstOutputUnixMS int64 `json:"first_output_unix_ms,omitempty"` // first console line after START, host time
}

type errorMsg struct {
	Error string `json:"error"`
}

func sendJSON(s *secureConn, t frameType, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.Send(t, b, true)
}

func decodeJSON(t frameType, b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %s payload: %v", ErrFrame, t, err)
	}
	return nil
}

// expect receives one frame and checks its type; an ERROR frame becomes an error with the peer's text.
func expect(s *secureConn, want frameType, v any) error {
	t, b, err := s.Recv()
	if err != nil {
		return err
	}
	if t == frameError {
		var e errorMsg
		_ = json.Unmarshal(b, &e)
		return &PeerError{Msg: e.Error}
	}
	if t != want {
		return fmt.Errorf("%w: got %s, want %s", ErrFrame, t, want)
	}
	if v == nil {
		return nil
	}
	return decodeJSON(t, b, v)
}

// expectWithin is expect with a bound on the wait; ctx ending also ends it. A frame cut short by the bound leaves
// the connection unusable, as any failed read does.
func expectWithin(ctx context.Context, s *secureConn, want frameType, v any, d time.Duration) error {
	_ = s.c.SetReadDeadline(time.Now().Add(d))
	defer s.c.SetReadDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { _ = s.c.SetReadDeadline(time.Now()) })
	defer stop()
	return expect(s, want, v)
}

// PeerError is an error reported by the other side.
type PeerError struct{ Msg string }

func (e *PeerError) Error() string { return "receiver: " + e.Msg }

func appendSection(dst []byte, kind byte, id uint32) []byte {
	dst = append(dst, kind)
	return binary.BigEndian.AppendUint32(dst, id)
}

func parseSection(b []byte) (kind byte, id uint32, err error) {
	if len(b) != 5 || (b[0] != 2 && b[0] != 3) {
		return 0, 0, fmt.Errorf("%w: SECTION payload %x", ErrFrame, b)
	}
	return b[0], binary.BigEndian.Uint32(b[1:]), nil
}
