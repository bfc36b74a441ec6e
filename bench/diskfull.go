package bench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// smallFS is a small tmpfs mounted over a directory that vmscatter journals in (the sender's state dir, or one
// VM's directory in a receiver's data dir), so that a trial can fill it at a chosen moment: a real full disk,
// whose writes fail with ENOSPC, in milliseconds.
type smallFS struct {
	dir  string
	fill string // the file that fills it, while it is full
}

// smallFSBytes is the size of a trial's tmpfs: far more than the few journal records it holds.
const smallFSBytes = 4 << 20

// mountSmallFS creates dir and mounts a fresh tmpfs of smallFSBytes over it.
func mountSmallFS(dir string) (*smallFS, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0755", smallFSBytes)); err != nil {
		return nil, fmt.Errorf("mounting a tmpfs on %s: %w", dir, err)
	}
	return &smallFS{dir: dir}, nil
}

// Fill writes a file until the filesystem has no space left.
func (f *smallFS) Fill() error {
	f.fill = filepath.Join(f.dir, ".disk-full")
	fh, err := os.OpenFile(f.fill, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer fh.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := fh.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return nil
			}
			return err
		}
	}
}

// Free removes the fill: the operator made room.
func (f *smallFS) Free() error {
	if f.fill == "" {
		return nil
	}
	err := os.Remove(f.fill)
	f.fill = ""
	return err
}

// Unmount detaches the tmpfs (lazily: a process may still hold a file in it) and with it whatever it held.
func (f *smallFS) Unmount() error { return syscall.Unmount(f.dir, syscall.MNT_DETACH) }
