package qemu

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ImageIdentity is what the sender reads of a disk image so that a receiver can tell, by reading its own copy of
// the path, whether both hosts see the same file. Neither side writes to the image, and the source QEMU keeps
// writing to it while both read, so the identity holds only what a running QEMU does not change, or changes in one
// direction only:
//
//   - qcow2: the header fields a running image keeps (virtual size, cluster size, backing file and its format,
//     external data file) and up to MaxL1Sample allocated entries of the L1 table, each the host offset of an L2
//     table. QEMU allocates an L2 table once and never moves it (short of internal snapshots and image-editing jobs),
//     so the entries set at the source are set, to the same offsets, in the same file read later; two images with
//     different write histories place their L2 tables differently. The fields QEMU does rewrite while running
//     (refcount table offset and size when the refcount table grows, the dirty bit with lazy refcounts, snapshot
//     count and offset, autoclear bits) are left out. The file only grows while QEMU runs, so the size here must be at
//     least the size read at the source.
//   - raw and every other format, read as opaque bytes: the size (for raw, exactly: QEMU never grows a raw image),
//     and a SHA-256 of the first HeadBytes (the partition table and boot code of a raw disk). A guest that rewrites
//     that area between the two reads makes the check refuse: the operator retries.
//   - read-only images (backing files, CD images, firmware code) may be copies on each host, but must be identical in
//     everything above, the size included.
//
// What this cannot prove: that a copy of an image taken since its last change is not the file itself (it holds the
// same bytes until the source writes again), nor that a clone of an image that allocated no new L2 table since is
// another file. Only an identity of the file system's (same inode on a cluster file system) or a write would; the
// receiver does neither. What it catches is what goes wrong in practice: the image is missing on the target (storage
// not mounted, another path), or the path names another image there.
//
// Path and the JSON form of an identity are the wire's concern (scatter/wire.DiskMsg has the same fields).
type ImageIdentity struct {
	Path          string      // as QEMU opens it
	Format        string      // "qcow2"; "raw" or another format driver, read as opaque bytes; "" when probed and not qcow2
	Size          int64       // of the file or block device when read
	VirtualSize   uint64      // qcow2: the disk's size
	ClusterBits   uint32      // qcow2
	BackingFile   string      // qcow2: the backing file as the header names it
	BackingFormat string      // qcow2: the backing file's format, from the header extension
	DataFile      string      // qcow2: the external data file, from the header extension
	Head          []byte      // not qcow2: SHA-256 of the first HeadBytes (or of the whole image if shorter)
	L1            [][2]uint64 // qcow2: (index, L2 table offset) of up to MaxL1Sample allocated L1 entries, by index
}

const (
	// HeadBytes is how much of an opaque image's start its identity digests.
	HeadBytes = 64 << 10
	// MaxL1Sample bounds the L1 entries an identity carries.
	MaxL1Sample = 64
	// maxL1Scan bounds the L1 entries read looking for allocated ones: 8 MiB of table, 64 TiB of 64 KiB clusters.
	maxL1Scan = 1 << 20
)

// Typed failures of image identities.
var (
	// ErrBadImage: the image cannot be read as its format says (truncated, corrupt, or not that format).
	ErrBadImage = errors.New("bad image")
	// ErrImageDiffers: the image here is not the one the source described.
	ErrImageDiffers = errors.New("differs")
)

// qcow2 header layout (docs/interop/qcow2.txt in QEMU's source), big endian.
const (
	qcow2Magic         = 0x514649fb // "QFI\xfb"
	qcow2HeaderV2Len   = 72
	qcow2HeaderV3Len   = 104
	qcow2L1OffsetMask  = 0x00fffffffffffe00
	qcow2ExtBackingFmt = 0xe2792aca
	qcow2ExtDataFile   = 0x44415441
	qcow2MaxBackingLen = 1023
	qcow2MaxL1Size     = 32 << 20 / 8 // QCOW_MAX_L1_SIZE
)

// qcow2Header is what an identity reads of a qcow2 header.
type qcow2Header struct {
	version       uint32
	clusterBits   uint32
	virtualSize   uint64
	l1Size        uint32
	l1Offset      uint64
	backingFile   string
	backingFormat string
	dataFile      string
}

// IdentifyImage reads the identity of an image of size bytes through r. format is the format QEMU is told ("" when
// it probes): "qcow2" and a probed image with the qcow2 magic are read as qcow2, everything else as opaque bytes.
// Path is left to the caller.
func IdentifyImage(r io.ReaderAt, size int64, format string) (ImageIdentity, error) {
	id := ImageIdentity{Format: format, Size: size}
	isQcow2, err := hasQcow2Magic(r, size)
	if err != nil {
		return id, err
	}
	switch {
	case format == "qcow2" && !isQcow2:
		return id, fmt.Errorf("%w: QEMU opens it as qcow2, but it has no qcow2 header", ErrBadImage)
	case format == "" && isQcow2:
		id.Format = "qcow2"
	}
	if id.Format != "qcow2" {
		id.Head, err = headDigest(r, size)
		return id, err
	}
	h, err := readQcow2Header(r, size)
	if err != nil {
		return id, err
	}
	id.VirtualSize, id.ClusterBits = h.virtualSize, h.clusterBits
	id.BackingFile, id.BackingFormat, id.DataFile = h.backingFile, h.backingFormat, h.dataFile
	id.L1, err = sampleL1(r, h)
	return id, err
}

// Verify checks that the image of size bytes readable through r, the same path on this host, is the image id
// describes: see ImageIdentity for what is compared and why. readOnly says QEMU opens the image read-only, so that a
// copy with the same content is as good as the file itself. It returns an error wrapping ErrImageDiffers that says
// what differs, or one wrapping ErrBadImage.
func (id ImageIdentity) Verify(r io.ReaderAt, size int64, readOnly bool) error {
	var diffs []string
	differ := func(what string, src, local any) {
		diffs = append(diffs, fmt.Sprintf("%s %v at the source, %v here", what, src, local))
	}
	result := func() error {
		if len(diffs) == 0 {
			return nil
		}
		return fmt.Errorf("%w: %s", ErrImageDiffers, strings.Join(diffs, "; "))
	}
	isQcow2, err := hasQcow2Magic(r, size)
	if err != nil {
		return err
	}
	switch {
	case id.Format == "qcow2" && !isQcow2:
		differ("format", "qcow2", "not qcow2")
		return result()
	case id.Format == "" && isQcow2: // probed: QEMU would open this one as qcow2
		differ("format", "probed, not qcow2,", "qcow2")
		return result()
	}
	grows := id.Format != "raw" && !readOnly // a qcow2 (or other growing format) written since the source read it
	switch {
	case grows && size < id.Size:
		differ("size (bytes; it only grows)", id.Size, size)
	case !grows && size != id.Size:
		differ("size (bytes)", id.Size, size)
	}
	if id.Format != "qcow2" {
		head, err := headDigest(r, size)
		if err != nil {
			return err
		}
		if !bytes.Equal(head, id.Head) {
			differ(fmt.Sprintf("SHA-256 of the first %d KiB", HeadBytes>>10), fmt.Sprintf("%x", id.Head), fmt.Sprintf("%x", head))
		}
		return result()
	}
	h, err := readQcow2Header(r, size)
	if err != nil {
		return err
	}
	if h.virtualSize != id.VirtualSize {
		differ("virtual size", id.VirtualSize, h.virtualSize)
	}
	if h.clusterBits != id.ClusterBits {
		differ("cluster size", uint64(1)<<id.ClusterBits, uint64(1)<<h.clusterBits)
	}
	if h.backingFile != id.BackingFile {
		differ("backing file", orNone(id.BackingFile), orNone(h.backingFile))
	}
	if h.backingFormat != id.BackingFormat {
		differ("backing format", orNone(id.BackingFormat), orNone(h.backingFormat))
	}
	if h.dataFile != id.DataFile {
		differ("data file", orNone(id.DataFile), orNone(h.dataFile))
	}
	if len(diffs) == 0 {
		d, err := compareL1(r, h, id.L1)
		if err != nil {
			return err
		}
		diffs = append(diffs, d...)
	}
	return result()
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func hasQcow2Magic(r io.ReaderAt, size int64) (bool, error) {
	if size < 4 {
		return false, nil
	}
	var b [4]byte
	if _, err := r.ReadAt(b[:], 0); err != nil {
		return false, fmt.Errorf("reading the image: %w", err)
	}
	return binary.BigEndian.Uint32(b[:]) == qcow2Magic, nil
}

func headDigest(r io.ReaderAt, size int64) ([]byte, error) {
	n := min(size, HeadBytes)
	buf := make([]byte, n)
	if _, err := r.ReadAt(buf, 0); err != nil && !(errors.Is(err, io.EOF) && n == 0) {
		return nil, fmt.Errorf("reading the image: %w", err)
	}
	sum := sha256.Sum256(buf)
	return sum[:], nil
}

// readQcow2Header reads and checks a qcow2 header, all of it within the first cluster and the file.
func readQcow2Header(r io.ReaderAt, size int64) (qcow2Header, error) {
	var h qcow2Header
	bad := func(format string, args ...any) (qcow2Header, error) {
		return h, fmt.Errorf("%w: qcow2 header: %s", ErrBadImage, fmt.Sprintf(format, args...))
	}
	if size < qcow2HeaderV2Len {
		return bad("the image is %d bytes long", size)
	}
	fixed := make([]byte, min(size, qcow2HeaderV3Len))
	if _, err := r.ReadAt(fixed, 0); err != nil {
		return h, fmt.Errorf("reading the qcow2 header: %w", err)
	}
	be := binary.BigEndian
	h.version = be.Uint32(fixed[4:])
	backingOff, backingLen := be.Uint64(fixed[8:]), be.Uint32(fixed[16:])
	h.clusterBits = be.Uint32(fixed[20:])
	h.virtualSize = be.Uint64(fixed[24:])
	h.l1Size = be.Uint32(fixed[36:])
	h.l1Offset = be.Uint64(fixed[40:])
	headerLen := uint64(qcow2HeaderV2Len)
	switch {
	case h.version != 2 && h.version != 3:
		return bad("version %d", h.version)
	case h.clusterBits < 9 || h.clusterBits > 21:
		return bad("cluster bits %d", h.clusterBits)
	case h.l1Size > qcow2MaxL1Size:
		return bad("L1 table of %d entries", h.l1Size)
	case h.l1Offset%(1<<h.clusterBits) != 0 || h.l1Offset > uint64(size) || uint64(h.l1Size)*8 > uint64(size)-h.l1Offset:
		return bad("L1 table of %d entries at %#x in an image of %d bytes", h.l1Size, h.l1Offset, size)
	}
	clusterSize := uint64(1) << h.clusterBits
	limit := min(clusterSize, uint64(size)) // the header, extensions and backing file name live in the first cluster
	if h.version == 3 {
		if len(fixed) < qcow2HeaderV3Len {
			return bad("a version 3 header in %d bytes", size)
		}
		headerLen = uint64(be.Uint32(fixed[100:]))
		if headerLen < qcow2HeaderV3Len || headerLen > limit {
			return bad("header length %d", headerLen)
		}
	}
	if backingOff != 0 {
		if backingLen > qcow2MaxBackingLen || backingOff > limit || uint64(backingLen) > limit-backingOff {
			return bad("backing file name of %d bytes at %d", backingLen, backingOff)
		}
		name := make([]byte, backingLen)
		if _, err := r.ReadAt(name, int64(backingOff)); err != nil {
			return h, fmt.Errorf("reading the backing file name: %w", err)
		}
		h.backingFile = string(name)
	}
	// Header extensions: be32 type, be32 length, data padded to 8 bytes, up to type 0.
	ext := make([]byte, limit-headerLen)
	if _, err := r.ReadAt(ext, int64(headerLen)); err != nil && !errors.Is(err, io.EOF) {
		return h, fmt.Errorf("reading the qcow2 header extensions: %w", err)
	}
	for len(ext) >= 8 {
		typ, n := be.Uint32(ext), uint64(be.Uint32(ext[4:]))
		if typ == 0 {
			break
		}
		if n > uint64(len(ext)-8) {
			return bad("header extension %#x of %d bytes", typ, n)
		}
		data := ext[8 : 8+n]
		switch typ {
		case qcow2ExtBackingFmt:
			h.backingFormat = string(data)
		case qcow2ExtDataFile:
			h.dataFile = string(data)
		}
		ext = ext[min(uint64(len(ext)), 8+(n+7)&^7):]
	}
	return h, nil
}

// sampleL1 returns up to MaxL1Sample allocated L1 entries, the first by index.
func sampleL1(r io.ReaderAt, h qcow2Header) ([][2]uint64, error) {
	var out [][2]uint64
	buf := make([]byte, 64<<10)
	n := min(uint64(h.l1Size), maxL1Scan)
	for i := uint64(0); i < n && len(out) < MaxL1Sample; {
		chunk := buf[:min(uint64(len(buf)), (n-i)*8)]
		if _, err := r.ReadAt(chunk, int64(h.l1Offset+i*8)); err != nil {
			return nil, fmt.Errorf("reading the L1 table: %w", err)
		}
		for j := 0; j+8 <= len(chunk) && len(out) < MaxL1Sample; j += 8 {
			if off := binary.BigEndian.Uint64(chunk[j:]) & qcow2L1OffsetMask; off != 0 {
				out = append(out, [2]uint64{i + uint64(j/8), off})
			}
		}
		i += uint64(len(chunk) / 8)
	}
	return out, nil
}

// compareL1 checks that every L1 entry the source saw allocated points to the same L2 table here.
func compareL1(r io.ReaderAt, h qcow2Header, want [][2]uint64) ([]string, error) {
	var diffs []string
	var b [8]byte
	for _, e := range want {
		idx, off := e[0], e[1]
		if idx >= uint64(h.l1Size) {
			return []string{fmt.Sprintf("L1 table of %d entries here, the source's has entry %d", h.l1Size, idx)}, nil
		}
		if _, err := r.ReadAt(b[:], int64(h.l1Offset+idx*8)); err != nil {
			return nil, fmt.Errorf("reading the L1 table: %w", err)
		}
		if got := binary.BigEndian.Uint64(b[:]) & qcow2L1OffsetMask; got != off {
			diffs = append(diffs, fmt.Sprintf("L1 entry %d points to an L2 table at %#x at the source, %#x here: another image", idx, off, got))
			break // one is proof enough
		}
	}
	return diffs, nil
}
