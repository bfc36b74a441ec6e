package dest

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vmscatter/vmscatter/qemu"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// The identity of a disk image has the same fields on the wire as in package qemu: each side converts with a type
// conversion, which stops compiling the day the two drift apart.
var _ = qemu.ImageIdentity(wire.DiskMsg{})

// errNotShared marks a refusal of checkSharedStorage: an image is missing here, or another image.
var errNotShared = errors.New("not on shared storage")

// checkSharedStorage is the receiver's half of the shared-storage check, run on OPEN before the destination QEMU is
// launched: every disk image the source's command line (argv, OPEN's argv) opens, and every backing file behind one,
// must be on this host at the same path and be the image the sender identified at the source (sent, OPEN's disks).
// The receiver parses argv itself, so that no image the destination will open goes unchecked, and reads each image
// without writing to it (qemu.ImageIdentity says what is compared, and why that holds while the source QEMU keeps
// writing). It refuses what qemu.DiskImages refuses (-snapshot, snapshot=on, relative paths, ...). unchecked lists,
// for the log, the images on network protocols, which are the operator's to make reachable from every host.
//
// The error names every image that fails and what differs, e.g. "not on shared storage: /var/lib/images/a.qcow2
// does not exist here".
func checkSharedStorage(argv []string, sent []wire.DiskMsg) (unchecked []string, err error) {
	disks, err := qemu.DiskImages(argv)
	if err != nil {
		return nil, err
	}
	if len(sent) > wire.MaxDisks {
		return nil, fmt.Errorf("%w: OPEN identifies %d disk images (at most %d)", wire.ErrFrame, len(sent), wire.MaxDisks)
	}
	byPath := map[string]qemu.ImageIdentity{}
	for _, m := range sent {
		if !filepath.IsAbs(m.Path) || len(m.L1) > qemu.MaxL1Sample || (len(m.Head) != 0 && len(m.Head) != 32) {
			return nil, fmt.Errorf("%w: a malformed disk identity for %q", wire.ErrFrame, m.Path)
		}
		byPath[filepath.Clean(m.Path)] = qemu.ImageIdentity(m)
	}
	for _, d := range disks {
		if !d.Checked() {
			unchecked = append(unchecked, fmt.Sprintf("%s %s image %s (not checked: network storage every host must reach)",
				d.Option, d.Protocol, d.Path))
		}
	}
	var problems []string
	err = qemu.WalkImages(disks, func(img qemu.ChainImage) (qemu.ImageIdentity, error) {
		id, ok := byPath[img.Path]
		if !ok {
			return id, fmt.Errorf("the sender sent no identity of disk image %s (a sender older than this receiver?)", img.Path)
		}
		if p := checkImage(img, id); p != "" {
			problems = append(problems, p)
			id.BackingFile = "" // what is behind an image that failed is not worth a second message
		}
		return id, nil
	})
	if err != nil {
		return unchecked, err
	}
	if len(problems) > 0 {
		return unchecked, fmt.Errorf("%w: %s", errNotShared, strings.Join(problems, "; "))
	}
	return unchecked, nil
}

// checkImage checks one image here against its identity at the source and says what is wrong, or "".
func checkImage(img qemu.ChainImage, id qemu.ImageIdentity) string {
	what := img.Path
	if img.BackingOf != "" {
		what = fmt.Sprintf("%s (backing file of %s)", img.Path, img.BackingOf)
	}
	f, size, err := qemu.OpenImage(img.Path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return what + " does not exist here"
	case err != nil:
		return fmt.Sprintf("%s cannot be read here: %v", what, err)
	}
	defer f.Close()
	switch err := id.Verify(f, size, img.ReadOnly); {
	case errors.Is(err, qemu.ErrImageDiffers):
		return fmt.Sprintf("%s %v", what, err) // "PATH differs: virtual size ... at the source, ... here"
	case err != nil:
		return fmt.Sprintf("%s cannot be read here: %v", what, err)
	}
	if !img.ReadOnly {
		// QEMU opens it read-write: a read-only mount or a missing permission would fail the destination's launch,
		// or worse, its activation at `cont`. access(2) asks without opening it for writing.
		if err := unix.Access(img.Path, unix.W_OK); err != nil {
			return fmt.Sprintf("%s is not writable here: %v", what, err)
		}
	}
	return ""
}
