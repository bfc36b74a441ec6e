// Package journal keeps the commit protocol's records durably (docs/commit.md, "The journal"). Each record is one
// small JSON file, written whole to a temporary file, fsynced, renamed over the old record, and its directory
// fsynced: after a crash at any point a record is either the old one or the new one, never a mix, and a Put that
// returned is on disk. The sender keeps one directory per run under --state-dir; the receiver one record per VM
// in its data dir.
package journal

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Dir is a directory of records. Safe for concurrent use on distinct names; one writer per name.
type Dir struct{ path string }

// Open returns the directory at path, creating it (mode 0700: records name VMs and hosts) if needed.
func Open(path string) (*Dir, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	return &Dir{path: path}, nil
}

// Path is the directory's path.
func (d *Dir) Path() string { return d.path }

const suffix = ".json"

// Put writes record name durably.
func (d *Dir) Put(name string, v any) error {
	if err := checkName(name); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	final := filepath.Join(d.path, name+suffix)
	tmp, err := os.CreateTemp(d.path, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing left to remove
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("journal %s: %w", final, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("journal %s: %w", final, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("journal %s: %w", final, err)
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return fmt.Errorf("journal %s: %w", final, err)
	}
	return syncDir(d.path)
}

// Get reads record name into v. It reports false, with no error, when there is no such record.
func (d *Dir) Get(name string, v any) (bool, error) {
	if err := checkName(name); err != nil {
		return false, err
	}
	b, err := os.ReadFile(filepath.Join(d.path, name+suffix))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("journal: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("journal %s: %w", filepath.Join(d.path, name+suffix), err)
	}
	return true, nil
}

// Names lists the records, sorted.
func (d *Dir) Names() ([]string, error) {
	ents, err := os.ReadDir(d.path)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	var out []string
	for _, e := range ents {
		if n := e.Name(); !e.IsDir() && strings.HasSuffix(n, suffix) && !strings.HasPrefix(n, ".") {
			out = append(out, strings.TrimSuffix(n, suffix))
		}
	}
	sort.Strings(out)
	return out, nil
}

func checkName(name string) error {
	if name == "" || strings.ContainsAny(name, "/\\") || strings.HasPrefix(name, ".") {
		return fmt.Errorf("journal: bad record name %q", name)
	}
	return nil
}

func syncDir(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("journal %s: %w", path, err)
	}
	return nil
}
