package commit

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The cases in testdata/*.txt, in the style of etcd raft's datadriven tests (and grouping's). A file is a
// sequence of directives separated by blank lines; lines starting with # are comments. A directive is
//
//	command [key=value ...]
//	input lines
//	----
//	expected output lines
//
// Commands:
//
//	at SIDE PHASE            SIDE is source or dest. Input: one event a line. Each event is stepped into a fresh
//	                         machine brought to PHASE by that phase's canonical path (canonical below, epoch 7,
//	                         the VM running); output: "EVENT -> actions => next phase". These directives state what
//	                         each side does for every event in every phase; TestEveryPairStated checks that none
//	                         is missing.
//	new SIDE [epoch=N] [paused]
//	                         a fresh machine for the step directives that follow (paused: the VM was paused).
//	restore dest phase=P [epoch=N]
//	                         a receiver restarted with journal entry P; output: its first actions and phase.
//	step                     input: events stepped in order into the current machine; output as for at.
//	decide src=P[@E] dst=P[@E]|? source=S dest=D [ran]
//	                         Decide's plan for the journals (epoch 7 unless @E; dst=? for a receiver that could
//	                         not be asked), the source QEMU (gone running paused migrating), the destination
//	                         QEMU (unknown gone paused running); ran: the VM ran before the migration.
//
// An event is its name (a frame's in capitals, as on the wire), then optionally e=N (a frame's epoch, by default
// the machine's) and a quoted reason.
//
// go test ./scatter/commit -rewrite rewrites the expected outputs from what the code does, and docs/commit.md's
// tables.

var rewrite = flag.Bool("rewrite", false, "rewrite the expected outputs of testdata/*.txt and docs/commit.md's tables")

const testEpoch = 7

// canonical is the path of events that brings a fresh machine (epoch 7, VM running) to each phase.
var canonical = map[string]map[Phase][]string{
	"source": {
		Begin:       nil,
		Prepare:     {"Connected"},
		Perform:     {"Connected", "READY"},
		Loaded:      {"Connected", "READY", "SrcCompleted", "LOADED"},
		Finish:      {"Connected", "READY", "SrcCompleted", "LOADED", "SrcPaused"},
		Confirm:     {"Connected", "READY", "SrcCompleted", "LOADED", "SrcPaused", "RUNNING"},
		Committed:   {"Connected", "READY", "SrcCompleted", "LOADED", "SrcPaused", "RUNNING", "SrcExited", "DONE"},
		RollingBack: {"Connected", "READY", "StreamFailed"},
		RolledBack:  {"Connected", "READY", "StreamFailed", "SrcCancelled", "SrcRunning", "ABORTED"},
		Unresolved:  {"Connected", "READY", "SrcCompleted", "LOADED", "SrcPaused", "Timeout"},
	},
	"dest": {
		Begin:       nil,
		Prepare:     {"OPEN"},
		Perform:     {"OPEN", "DestReady"},
		Loaded:      {"OPEN", "DestReady", "DestLoaded"},
		Finish:      {"OPEN", "DestReady", "DestLoaded", "START"},
		Confirm:     {"OPEN", "DestReady", "DestLoaded", "START", "DestStarted"},
		Committed:   {"OPEN", "DestReady", "DestLoaded", "START", "DestStarted", "COMMIT"},
		RollingBack: {"OPEN", "DestReady", "ABORT"},
		RolledBack:  {"OPEN", "DestReady", "ABORT", "DestExited"},
		Unresolved:  {"OPEN", "DestReady", "DestLoaded", "Timeout"},
	},
}

type stepper interface {
	Step(Event) []Action
	Phase() Phase
	Epoch() uint64
}

func newMachine(side string, epoch uint64, wasRunning bool) stepper {
	if side == "source" {
		return NewSource(epoch, wasRunning)
	}
	return NewDest(epoch)
}

// atPhase returns a fresh machine of side brought to p by its canonical path.
func atPhase(t testing.TB, side string, p Phase) stepper {
	t.Helper()
	m := newMachine(side, testEpoch, true)
	for _, line := range canonical[side][p] {
		m.Step(parseEvent(t, line, testEpoch))
	}
	if m.Phase() != p {
		t.Fatalf("%s: the canonical path to %v ends in %v", side, p, m.Phase())
	}
	return m
}

var frameByName = map[string]Frame{}

func init() {
	for f := FrameOpen; f <= FrameError; f++ {
		frameByName[f.String()] = f
	}
}

func parseEvent(t testing.TB, line string, epoch uint64) Event {
	t.Helper()
	name, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
	var ev Event
	if f, ok := frameByName[name]; ok {
		ev = Event{Kind: Recv, Frame: f, Epoch: epoch}
	} else {
		for k := Recv + 1; int(k) < len(eventNames); k++ {
			if k.String() == name {
				ev.Kind = k
			}
		}
		if ev.Kind == 0 {
			t.Fatalf("unknown event %q", name)
		}
	}
	rest = strings.TrimSpace(rest)
	if strings.HasPrefix(rest, "e=") {
		n, r, _ := strings.Cut(rest[2:], " ")
		e, err := strconv.ParseUint(n, 10, 64)
		if err != nil || ev.Kind != Recv {
			t.Fatalf("bad epoch in %q", line)
		}
		ev.Epoch, rest = e, strings.TrimSpace(r)
	}
	if rest != "" {
		r, err := strconv.Unquote(rest)
		if err != nil {
			t.Fatalf("bad reason in %q: %v", line, err)
		}
		ev.Reason = r
	}
	return ev
}

func formatActions(acts []Action) string {
	if len(acts) == 0 {
		return "none"
	}
	s := make([]string, len(acts))
	for i, a := range acts {
		s[i] = a.String()
	}
	return strings.Join(s, "; ")
}

func stepLine(t testing.TB, m stepper, line string) string {
	acts := m.Step(parseEvent(t, line, m.Epoch()))
	return fmt.Sprintf("%s -> %s => %v", line, formatActions(acts), m.Phase())
}

type directive struct {
	comments []string
	line     string
	cmd      string
	pos      []string // positional arguments
	args     map[string]string
	input    []string
	expected []string
}

func parseDataFile(t *testing.T, text string) (ds []directive, trailer []string) {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	var pending []string
	for i := 0; i < len(lines); {
		l := lines[i]
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "#") {
			pending = append(pending, l)
			i++
			continue
		}
		fields := strings.Fields(l)
		d := directive{comments: pending, line: l, cmd: fields[0], args: map[string]string{}}
		pending = nil
		for _, f := range fields[1:] {
			if k, v, ok := strings.Cut(f, "="); ok {
				d.args[k] = v
			} else {
				d.pos = append(d.pos, f)
			}
		}
		i++
		for ; i < len(lines) && lines[i] != "----"; i++ {
			d.input = append(d.input, lines[i])
		}
		if i == len(lines) {
			t.Fatalf("directive %q has no ---- line", l)
		}
		for i++; i < len(lines) && strings.TrimSpace(lines[i]) != ""; i++ {
			d.expected = append(d.expected, lines[i])
		}
		ds = append(ds, d)
	}
	return ds, pending
}

func readDataFiles(t *testing.T) map[string][]directive {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	out := map[string][]directive{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[f], _ = parseDataFile(t, string(raw))
	}
	return out
}

func TestDataDriven(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.txt")
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			ds, trailer := parseDataFile(t, string(raw))
			var out strings.Builder
			var cur stepper
			for _, d := range ds {
				for _, c := range d.comments {
					out.WriteString(c + "\n")
				}
				got := runDirective(t, &cur, d)
				out.WriteString(d.line + "\n")
				for _, in := range d.input {
					out.WriteString(in + "\n")
				}
				out.WriteString("----\n")
				for _, g := range got {
					out.WriteString(g + "\n")
				}
				if !*rewrite && strings.Join(got, "\n") != strings.Join(d.expected, "\n") {
					t.Errorf("%s\n%s\ngot:\n%s\nwant:\n%s", d.line, strings.Join(d.input, "\n"),
						strings.Join(got, "\n"), strings.Join(d.expected, "\n"))
				}
			}
			for _, c := range trailer {
				out.WriteString(c + "\n")
			}
			if *rewrite {
				if err := os.WriteFile(file, []byte(out.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func mustPhase(t testing.TB, s string) Phase {
	p, ok := ParsePhase(s)
	if !ok {
		t.Fatalf("unknown phase %q", s)
	}
	return p
}

func epochArg(t testing.TB, d directive) uint64 {
	if s, ok := d.args["epoch"]; ok {
		e, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s: bad epoch", d.line)
		}
		return e
	}
	return testEpoch
}

func runDirective(t *testing.T, cur *stepper, d directive) []string {
	t.Helper()
	side := func() string {
		if len(d.pos) == 0 || (d.pos[0] != "source" && d.pos[0] != "dest") {
			t.Fatalf("%s: want source or dest", d.line)
		}
		return d.pos[0]
	}
	var got []string
	switch d.cmd {
	case "at":
		s := side()
		if len(d.pos) != 2 {
			t.Fatalf("%s: want at SIDE PHASE", d.line)
		}
		p := mustPhase(t, d.pos[1])
		for _, in := range d.input {
			got = append(got, stepLine(t, atPhase(t, s, p), in))
		}
	case "new":
		s := side()
		*cur = newMachine(s, epochArg(t, d), len(d.pos) < 2 || d.pos[1] != "paused")
		got = append(got, (*cur).Phase().String())
	case "restore":
		if side() != "dest" {
			t.Fatalf("%s: only a receiver restores", d.line)
		}
		m, acts := RestoreDest(Entry{mustPhase(t, d.args["phase"]), epochArg(t, d)})
		*cur = m
		got = append(got, fmt.Sprintf("%s => %v", formatActions(acts), m.Phase()))
	case "step":
		if *cur == nil {
			t.Fatalf("%s: no machine (use new)", d.line)
		}
		for _, in := range d.input {
			got = append(got, stepLine(t, *cur, in))
		}
	case "decide":
		got = append(got, Decide(parseSituation(t, d)).String())
	default:
		t.Fatalf("unknown command %q", d.cmd)
	}
	return got
}

func parseSituation(t *testing.T, d directive) Situation {
	entry := func(s string) Entry {
		p, e, ok := strings.Cut(s, "@")
		en := Entry{mustPhase(t, p), testEpoch}
		if ok {
			n, err := strconv.ParseUint(e, 10, 64)
			if err != nil {
				t.Fatalf("%s: bad epoch %q", d.line, e)
			}
			en.Epoch = n
		}
		return en
	}
	s := Situation{Source: entry(d.args["src"]), WasRunning: len(d.pos) > 0 && d.pos[0] == "ran"}
	if d.args["dst"] != "?" {
		s.DestKnown, s.Dest = true, entry(d.args["dst"])
	}
	srcFound, dstFound := false, false
	for i, n := range sourceStateNames {
		if n == d.args["source"] {
			s.SourceNow, srcFound = SourceState(i), true
		}
	}
	for i, n := range destStateNames {
		if n == d.args["dest"] {
			s.DestNow, dstFound = DestState(i), true
		}
	}
	if !srcFound || !dstFound {
		t.Fatalf("%s: want source=%v dest=%v", d.line, sourceStateNames, destStateNames)
	}
	return s
}

// TestEveryPairStated checks that the at directives of testdata state every (phase, event) pair of both sides.
func TestEveryPairStated(t *testing.T) {
	stated := map[string]bool{}
	for _, ds := range readDataFiles(t) {
		for _, d := range ds {
			if d.cmd != "at" || len(d.pos) != 2 {
				continue
			}
			for _, in := range d.input {
				name, _, _ := strings.Cut(in, " ")
				stated[d.pos[0]+" "+d.pos[1]+" "+name] = true
			}
		}
	}
	for side, events := range map[string][]Event{"source": SourceEvents(), "dest": DestEvents()} {
		for _, p := range Phases {
			for _, ev := range events {
				if !stated[side+" "+p.String()+" "+ev.Name()] {
					t.Errorf("testdata does not state what the %s does on %s in %v", side, ev.Name(), p)
				}
			}
		}
	}
}
