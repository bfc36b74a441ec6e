package scatter_test

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const module = "github.com/vmscatter/vmscatter/"

// deps lists what a package imports, directly or not (go list -deps).
func deps(t *testing.T, pkg string) map[string]bool {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", module+pkg).Output()
	if err != nil {
		t.Skipf("go list: %v (the go command is needed for this test)", err)
	}
	m := map[string]bool{}
	for _, l := range strings.Fields(string(out)) {
		m[l] = true
	}
	return m
}

// TestLayout holds the shape of the house: the sender and the receiver never import each other, the pure cores
// import no I/O, and the operator's binary carries no lab.
func TestLayout(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("the go command is not on PATH")
	}
	for _, c := range []struct{ pkg, forbidden string }{
		{"scatter/source", module + "scatter/dest"},
		{"scatter/dest", module + "scatter/source"},
		{"cmd/vmscatter", module + "bench"},
	} {
		if deps(t, c.pkg)[c.forbidden] {
			t.Errorf("%s imports %s", c.pkg, c.forbidden)
		}
	}
	io := []string{"net", "os", "os/exec", "syscall", "golang.org/x/sys/unix"}
	for _, pure := range []string{"scatter/commit", "scatter/converge", "grouping", "multicast/reliable"} {
		if _, err := os.Stat(filepath.Join("..", pure)); err != nil {
			t.Errorf("package %s is missing", pure)
			continue
		}
		// The package and every package of the project it depends on import no I/O package directly (the standard
		// library's own, fmt's os for one, do not count).
		out, err := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}} {{join .Imports " "}}`, module+pure).Output()
		if err != nil {
			t.Fatalf("go list: %v", err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || !strings.HasPrefix(f[0], module) {
				continue
			}
			for _, imp := range f[1:] {
				for _, p := range io {
					if imp == p {
						t.Errorf("%s, a pure core, depends on %s, which imports %s", pure, f[0], p)
					}
				}
			}
		}
	}
}

// TestQMPNamesInOnePlace: QMP command names appear in qemu/qmp only (tests aside), so that the rest of the
// project speaks its typed API. scatter/virt is the one place that knows virsh's commands, some of which share QMP's
// names (migrate, migrate-setmaxdowntime).
func TestQMPNamesInOnePlace(t *testing.T) {
	names := regexp.MustCompile(`"(query-[a-z-]+|migrate(-[a-z-]+|_cancel)?|cont|stop|quit|pmemsave|human-monitor-command|qmp_capabilities)"`)
	rawString := regexp.MustCompile("`[^`]*`")
	root := ".."
	out, err := exec.Command("git", "-C", root, "ls-files", "*.go").Output()
	if err != nil {
		t.Skipf("git ls-files: %v", err)
	}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasSuffix(f, "_test.go") || strings.HasPrefix(f, "qemu/qmp/") || strings.Contains(f, "/qemutest/") ||
			strings.HasPrefix(f, "scatter/virt/") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			continue // removed in the work tree
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for n := 1; sc.Scan(); n++ {
			line := sc.Text()
			if strings.HasPrefix(strings.TrimSpace(line), "//") {
				continue
			}
			line = rawString.ReplaceAllString(line, "") // struct tags and other raw strings name no command
			if m := names.FindString(line); m != "" {
				t.Errorf("%s:%d issues QMP command %s outside qemu/qmp", f, n, m)
			}
		}
	}
}
