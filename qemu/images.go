package qemu

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// ChainImage is one image to check: a disk of the command line, or a backing file behind one.
type ChainImage struct {
	Path     string
	Format   string // what QEMU is told; "" when it probes
	ReadOnly bool
	// BackingOf is the image whose qcow2 header names this one as its backing file; "" for a disk of the command
	// line.
	BackingOf string
	Option    string // the command-line option of the disk at the top of the chain
}

// maxChainImages bounds the images WalkImages visits: no VM has more, and a loop of backing files ends.
const maxChainImages = 256

// WalkImages calls visit for every checked disk of disks (Disk.Checked) and, where QEMU follows the qcow2 header's
// backing file (Disk.HeaderBacking), for each backing file behind it, each path once. visit returns the identity of
// the image it was given (read at the source, or checked on the target), whose BackingFile names the next one. The
// sender and the receiver walk the same chains this way. Backing files on network protocols are not visited.
func WalkImages(disks []Disk, visit func(ChainImage) (ImageIdentity, error)) error {
	seen := map[string]bool{}
	for _, d := range disks {
		if !d.Checked() {
			continue
		}
		img := ChainImage{Path: d.Path, Format: d.Format, ReadOnly: d.ReadOnly, Option: d.Option}
		for {
			if seen[img.Path] {
				break
			}
			if len(seen) == maxChainImages {
				return fmt.Errorf("more than %d disk images (a loop of backing files?)", maxChainImages)
			}
			seen[img.Path] = true
			id, err := visit(img)
			if err != nil {
				return err
			}
			if !d.HeaderBacking || id.BackingFile == "" {
				break
			}
			next, ok := BackingPath(img.Path, id.BackingFile)
			if !ok {
				break
			}
			img = ChainImage{Path: next, Format: id.BackingFormat, ReadOnly: true, BackingOf: img.Path, Option: d.Option}
		}
	}
	return nil
}

// BackingPath resolves a backing file name from an image's qcow2 header as QEMU does: relative to the image's
// directory. ok is false for a name QEMU opens through a protocol (nbd:..., json:{...}), which is not checked.
func BackingPath(image, backing string) (path string, ok bool) {
	if proto, rest, has := protocolPrefix(backing); has {
		if proto != "file" {
			return "", false
		}
		backing = rest
	}
	if !filepath.IsAbs(backing) {
		backing = filepath.Join(filepath.Dir(image), backing)
	}
	return filepath.Clean(backing), true
}

// OpenImage opens a disk image for reading and returns its size: a regular file, or a block device (whose size is
// its end).
func OpenImage(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	switch {
	case st.Mode().IsRegular():
		return f, st.Size(), nil
	case st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0:
		size, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			f.Close()
			return nil, 0, err
		}
		return f, size, nil
	}
	f.Close()
	return nil, 0, fmt.Errorf("%s is neither a regular file nor a block device", path)
}

// IdentifyDisks reads the identity of every image a source QEMU's command line opens that vmscatter checks
// (DiskImages, then WalkImages): the sender's half of the shared-storage check, sent in OPEN. It fails as
// DiskImages does on a command line vmscatter refuses to migrate.
func IdentifyDisks(argv []string) ([]ImageIdentity, error) {
	disks, err := DiskImages(argv)
	if err != nil {
		return nil, err
	}
	var out []ImageIdentity
	err = WalkImages(disks, func(img ChainImage) (ImageIdentity, error) {
		f, size, err := OpenImage(img.Path)
		if err != nil {
			return ImageIdentity{}, fmt.Errorf("disk image %s: %w", img.Path, err)
		}
		defer f.Close()
		id, err := IdentifyImage(f, size, img.Format)
		if err != nil {
			return ImageIdentity{}, fmt.Errorf("disk image %s: %w", img.Path, err)
		}
		id.Path = img.Path
		out = append(out, id)
		return id, nil
	})
	return out, err
}
