package grouping

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The cases in testdata/*.txt, in the style of etcd raft's datadriven tests. A file is a sequence of
// directives separated by blank lines; lines starting with # are comments. A directive is
//
//	command [key=value ...]
//	input lines
//	----
//	expected output lines
//
// Commands:
//
//	problem [contents=N]   input: "target NAME mem=8G [slots=N] [maxvms=N]" and
//	                       "vm NAME mem=2G [vcpus=N] [pin=TARGET] [only=TARGET+TARGET...] pages=1-100,200,...";
//	                       output: source and private page counts. NumContents defaults to the largest page id + 1.
//	place alg=A            output: the fabric and source pages, then each target's VMs; or "error: ...".
//	compare                output: the fabric pages of every algorithm.
//	evaluate               input: "TARGET: VM VM ..." lines; output: the fabric pages of that assignment.
//	schedule alg=A         output: the batches of A's placement in order, then joins and leaves.
//
// go test ./grouping -run TestDataDriven -rewrite rewrites the expected outputs from what the code does.

var rewrite = flag.Bool("rewrite", false, "rewrite the expected outputs of testdata/*.txt")

type directive struct {
	comments []string // lines (comments, blanks) before the directive
	line     string   // the command line as written
	cmd      string
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
			k, v, _ := strings.Cut(f, "=")
			d.args[k] = v
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

func TestDataDriven(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			ds, trailer := parseDataFile(t, string(raw))
			var out strings.Builder
			var p Problem
			for _, d := range ds {
				for _, c := range d.comments {
					out.WriteString(c + "\n")
				}
				got := runDirective(t, &p, d)
				out.WriteString(d.line + "\n")
				for _, in := range d.input {
					out.WriteString(in + "\n")
				}
				out.WriteString("----\n")
				for _, g := range got {
					out.WriteString(g + "\n")
				}
				if !*rewrite && strings.Join(got, "\n") != strings.Join(d.expected, "\n") {
					t.Errorf("%s:\ngot:\n%s\nwant:\n%s", d.line, strings.Join(got, "\n"), strings.Join(d.expected, "\n"))
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

func runDirective(t *testing.T, p *Problem, d directive) []string {
	t.Helper()
	switch d.cmd {
	case "problem":
		*p = parseProblem(t, d)
		m := newModel(*p)
		return []string{fmt.Sprintf("vms=%d targets=%d source=%d private=%d classes=%d", len(p.VMs), len(p.Targets), m.source, m.private, len(m.weight))}
	case "place":
		pl, err := Place(*p, Algorithm(d.args["alg"]))
		if err != nil {
			return []string{errorLine(err)}
		}
		checkPlacement(t, *p, pl)
		return append([]string{fmt.Sprintf("fabric=%d source=%d", pl.FabricPages, pl.SourcePages)}, layout(*p, pl.Assign)...)
	case "compare":
		var parts []string
		for _, alg := range Algorithms {
			pl, err := Place(*p, alg)
			if err != nil {
				parts = append(parts, fmt.Sprintf("%s=%s", alg, errorLine(err)))
				continue
			}
			checkPlacement(t, *p, pl)
			parts = append(parts, fmt.Sprintf("%s=%d", alg, pl.FabricPages))
		}
		return []string{strings.Join(parts, " ")}
	case "evaluate":
		assign := make([]int, len(p.VMs))
		for i := range assign {
			assign[i] = -1
		}
		for _, l := range d.input {
			tn, vms, _ := strings.Cut(l, ":")
			ti := targetIndex(t, *p, strings.TrimSpace(tn))
			for _, vn := range strings.Fields(vms) {
				assign[vmIndex(t, *p, vn)] = ti
			}
		}
		return []string{fmt.Sprintf("fabric=%d", Evaluate(*p, assign))}
	case "schedule":
		pl, err := Place(*p, Algorithm(d.args["alg"]))
		if err != nil {
			return []string{errorLine(err)}
		}
		s := BuildSchedule(*p, pl.Assign)
		checkSchedule(t, *p, pl.Assign, s)
		var out []string
		for _, b := range s.Batches {
			var names []string
			for _, ti := range b.Targets {
				names = append(names, p.Targets[ti].Name)
			}
			out = append(out, fmt.Sprintf("{%s} %s", strings.Join(names, ","), formatRanges(b.Contents)))
		}
		return append(out, fmt.Sprintf("joins=%d leaves=%d changes=%d ideal=%d", s.Joins, s.Leaves, s.MembershipChanges, 2*s.TargetsUsed))
	}
	t.Fatalf("unknown command %q", d.cmd)
	return nil
}

func errorLine(err error) string {
	var ce *CapacityError
	if errors.As(err, &ce) {
		return fmt.Sprintf("error: %s %s short by %d: %s", ce.Failure, ce.Capacity, ce.Shortfall(), err)
	}
	return "error: " + err.Error()
}

func layout(p Problem, assign []int) []string {
	var out []string
	for ti, tg := range p.Targets {
		var names []string
		for v, a := range assign {
			if a == ti {
				names = append(names, p.VMs[v].Name)
			}
		}
		if len(names) == 0 {
			names = []string{"-"}
		}
		out = append(out, tg.Name+": "+strings.Join(names, " "))
	}
	return out
}

func targetIndex(t *testing.T, p Problem, name string) int {
	for i, tg := range p.Targets {
		if tg.Name == name {
			return i
		}
	}
	t.Fatalf("no target %q", name)
	return -1
}

func vmIndex(t *testing.T, p Problem, name string) int {
	for i, vm := range p.VMs {
		if vm.Name == name {
			return i
		}
	}
	t.Fatalf("no VM %q", name)
	return -1
}

func parseProblem(t *testing.T, d directive) Problem {
	var p Problem
	maxID := -1
	for _, l := range d.input {
		f := strings.Fields(l)
		if len(f) < 2 {
			t.Fatalf("bad problem line %q", l)
		}
		kv := map[string]string{}
		for _, x := range f[2:] {
			k, v, ok := strings.Cut(x, "=")
			if !ok {
				t.Fatalf("bad field %q in %q", x, l)
			}
			kv[k] = v
		}
		switch f[0] {
		case "target":
			p.Targets = append(p.Targets, Target{Name: f[1], MemBytes: parseSize(t, kv["mem"]), VCPUSlots: atoi(t, kv["slots"]), MaxVMs: atoi(t, kv["maxvms"])})
		case "vm":
			ids := parseRanges(t, kv["pages"])
			if len(ids) > 0 {
				maxID = max(maxID, int(ids[len(ids)-1]))
			}
			vm := VM{Name: f[1], MemBytes: parseSize(t, kv["mem"]), VCPUs: atoi(t, kv["vcpus"]), Pinned: kv["pin"]}
			if only := kv["only"]; only != "" {
				vm.Allowed = strings.Split(only, "+")
			}
			p.VMs = append(p.VMs, vm)
			p.Contents = append(p.Contents, ids)
		default:
			t.Fatalf("bad problem line %q", l)
		}
	}
	p.NumContents = maxID + 1
	if n, ok := d.args["contents"]; ok {
		p.NumContents = atoi(t, n)
	}
	return p
}

func atoi(t *testing.T, s string) int {
	if s == "" {
		return 0
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func parseSize(t *testing.T, s string) uint64 {
	mult := uint64(1)
	for suffix, m := range map[string]uint64{"K": 1 << 10, "M": 1 << 20, "G": 1 << 30} {
		if strings.HasSuffix(s, suffix) {
			s, mult = strings.TrimSuffix(s, suffix), m
		}
	}
	return uint64(atoi(t, s)) * mult
}

// parseRanges reads "1-5,9,12-13" into sorted ids (the order written, which must be ascending).
func parseRanges(t *testing.T, s string) []uint32 {
	var out []uint32
	if s == "" {
		return out
	}
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a := atoi(t, lo)
		b := a
		if isRange {
			b = atoi(t, hi)
		}
		for i := a; i <= b; i++ {
			out = append(out, uint32(i))
		}
	}
	return out
}

func formatRanges(ids []uint32) string {
	var parts []string
	for i := 0; i < len(ids); {
		j := i
		for j+1 < len(ids) && ids[j+1] == ids[j]+1 {
			j++
		}
		if i == j {
			parts = append(parts, fmt.Sprint(ids[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", ids[i], ids[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}
