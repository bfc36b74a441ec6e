package dedup

import (
	"errors"
	"fmt"
	"io"
)

// A guest's RAM often holds byte-for-byte copies of files its host gave QEMU: a directly booted kernel is loaded
// from the -kernel file at 1 MiB and then moved again by its own decompressor, and an initrd sits where QEMU put it.
// Such a file is on the target too (its destination QEMU is started with the same command line, so it must be),
// and the target can read those pages from it instead of over the network. The copies are not page-aligned in the
// file: a bzImage is loaded from the end of its real-mode setup, which is a whole number of 512-byte sectors. So a
// FileIndex fingerprints every PageSize window of a file that starts on a 512-byte boundary.

// FileWindowStep is the alignment of the windows a FileIndex fingerprints: the sector size of a bzImage's setup.
const FileWindowStep = 512

// MaxIndexedFile bounds the size of a file a FileIndex reads (larger files are indexed up to it).
const MaxIndexedFile = 1 << 30

// FileWindow is a PageSize window of an indexed file.
type FileWindow struct {
	File   int   // index of the file in the order given to IndexFiles
	Offset int64 // a multiple of FileWindowStep
}

// FileIndex maps fingerprints to windows of files. A fingerprint match is a candidate only: the bytes of the
// window are what a target stores, and they are verified by digest there (see docs/dedup.md).
type FileIndex struct {
	fp      FingerprintFunc
	windows map[Fingerprint]FileWindow // the first window with each fingerprint
}

// IndexFiles fingerprints the windows of each file. fp nil means XXHash. Zero windows are left out: zero pages
// never travel as content.
func IndexFiles(files []io.ReaderAt, sizes []int64, fp FingerprintFunc) (*FileIndex, error) {
	if len(files) != len(sizes) {
		return nil, errors.New("dedup: IndexFiles needs one size per file")
	}
	if fp == nil {
		fp = XXHash
	}
	x := &FileIndex{fp: fp, windows: map[Fingerprint]FileWindow{}}
	for i, f := range files {
		size := min(sizes[i], MaxIndexedFile)
		if size < PageSize {
			continue
		}
		// Read in chunks that overlap by a page, so that every window lies whole in one chunk.
		const chunk = 4 << 20
		buf := make([]byte, chunk+PageSize)
		for base := int64(0); base+PageSize <= size; base += chunk {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), size-base)], base)
			if err != nil && !errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("dedup: reading file %d at %d: %w", i, base, err)
			}
			for off := 0; off+PageSize <= n && off < chunk; off += FileWindowStep {
				w := buf[off : off+PageSize]
				if IsZero(w) {
					continue
				}
				k := x.fp(w)
				if _, ok := x.windows[k]; !ok {
					x.windows[k] = FileWindow{File: i, Offset: base + int64(off)}
				}
			}
		}
	}
	return x, nil
}

// Lookup returns a window whose fingerprint is fp.
func (x *FileIndex) Lookup(fp Fingerprint) (FileWindow, bool) {
	w, ok := x.windows[fp]
	return w, ok
}

// Len is the number of distinct fingerprints indexed.
func (x *FileIndex) Len() int { return len(x.windows) }
