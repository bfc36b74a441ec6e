package wire

import (
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// payloads names the JSON message of each frame that carries one.
var payloads = map[FrameType]any{
	FrameHello: HelloMsg{}, FrameInfo: InfoMsg{}, FramePrimeDone: PrimeDoneMsg{}, FramePrimeAck: PrimeAckMsg{},
	FrameJoin: JoinMsg{}, FrameJoined: JoinedMsg{}, FrameLeave: LeaveMsg{}, FrameSeedFiles: SeedFilesMsg{},
	FrameSeedDone: SeedDoneMsg{}, FrameSeedAck: SeedAckMsg{}, FrameOpen: OpenMsg{}, FrameReady: ReadyMsg{},
	FrameRAMStart: RAMStartMsg{}, FrameRunning: RunningMsg{}, FrameAbort: ErrorMsg{}, FrameError: ErrorMsg{},
	FrameDone: DoneMsg{}, FrameStreamCancel: ErrorMsg{}, FrameLoaded: RunningMsg{}, FrameStart: EpochMsg{},
	FrameCommit: EpochMsg{}, FrameAborted: ErrorMsg{}, FrameAttach: AttachMsg{}, FrameQuery: EpochMsg{}, FrameState: StateMsg{},
	FrameLibvirtOpen: LibvirtOpenMsg{}, FrameLibvirtDone: LibvirtDoneMsg{},
}

// TestControlDocMatchesCode holds docs/control.md's frame table against the code: every frame type with its number
// and name, no row for a frame that does not exist, and every JSON field of each frame's message named in its row.
func TestControlDocMatchesCode(t *testing.T) {
	doc, err := os.ReadFile("../../docs/control.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| 0x([0-9a-f]{2}) \\| ([A-Z_]+) \\| [^|]+ \\| (.*) \\|$")
	rows := map[FrameType]string{}
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		n, _ := strconv.ParseUint(m[1], 16, 8)
		ft := FrameType(n)
		if got := ft.String(); got != m[2] {
			t.Errorf("docs/control.md: 0x%s is %s, the code says %s", m[1], m[2], got)
		}
		rows[ft] = m[3]
	}
	for ft := range frameNames {
		payload, ok := rows[ft]
		if !ok {
			t.Errorf("docs/control.md has no row for %s (0x%02x)", ft, byte(ft))
			continue
		}
		msg, ok := payloads[ft]
		if !ok {
			if strings.Contains(payload, "JSON") {
				t.Errorf("docs/control.md: %s has a JSON payload in the doc and none in the code", ft)
			}
			continue
		}
		for _, name := range jsonFields(reflect.TypeOf(msg)) {
			if !strings.Contains(payload, `"`+name+`"`) {
				t.Errorf("docs/control.md: %s's row does not name the field %q", ft, name)
			}
		}
	}
}

// jsonFields lists the JSON names of a struct's fields, nested structs' included.
func jsonFields(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		out = append(out, name)
		ft := f.Type
		if ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct {
			out = append(out, jsonFields(ft)...)
		}
	}
	return out
}
