package dest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// seedReadTimeout bounds one read of a seed file. A regular file answers in milliseconds; one on a hung network
// mount may never answer, and the control connection's goroutine must not wait for it.
const seedReadTimeout = 10 * time.Second

// seedFile is an open boot file: *os.File, or a test's stand-in.
type seedFile interface {
	io.ReaderAt
	io.Closer
}

// seedReader is a receiver's side of one seed, owned by the control connection's goroutine. Its reads go through
// one worker goroutine, so that each has a deadline: a read past it makes its file count as missing, and the worker
// that still waits on it is left to finish by itself (at most one per file) while a new one serves the other files.
type seedReader struct {
	store       *dedup.ContentStore
	d           *dedup.Digester
	files       []seedFile // nil where the file could not be used
	errs        []string
	held        int
	missing     []uint32
	readTimeout time.Duration
	w           *seedWorker
	abandoned   []seedFile // files given up while a read of theirs was still pending
}

// seedWorker reads pages for a seedReader, one at a time, into its own buffer.
type seedWorker struct {
	req  chan seedRead // closed when the worker is retired
	resp chan seedRead // buffered: a worker left behind never blocks on it
	page []byte
}

type seedRead struct {
	f   seedFile
	off int64
	n   int
}

func newSeedWorker() *seedWorker {
	w := &seedWorker{req: make(chan seedRead), resp: make(chan seedRead, 1), page: make([]byte, dedup.PageSize)}
	go func() {
		for rq := range w.req {
			rq.n, _ = rq.f.ReadAt(w.page, rq.off)
			w.resp <- rq
		}
	}()
	return w
}

// openSeed starts a seed. A file that cannot be used is reported in the answer, and its records count as missing.
func openSeed(store *dedup.ContentStore, m wire.SeedFilesMsg, open func(string) (*os.File, error)) (*seedReader, error) {
	if len(m.Salt) != 32 {
		return nil, fmt.Errorf("%w: seed salt of %d bytes", wire.ErrFrame, len(m.Salt))
	}
	if len(m.Files) > wire.MaxSeedFiles {
		return nil, fmt.Errorf("%w: %d seed files (at most %d)", wire.ErrFrame, len(m.Files), wire.MaxSeedFiles)
	}
	r := &seedReader{store: store, d: dedup.NewDigester([32]byte(m.Salt)), readTimeout: seedReadTimeout}
	for _, p := range m.Files {
		f, err := open(p)
		if err != nil {
			r.errs = append(r.errs, err.Error())
			r.files = append(r.files, nil)
			continue
		}
		r.files = append(r.files, f)
	}
	return r, nil
}

// allowedRoot is one directory the receiver reads guest files from: as configured, and with its links resolved.
type allowedRoot struct{ path, resolved string }

// resolveRoots checks and resolves the receiver's allowed directories.
func resolveRoots(dirs []string) ([]allowedRoot, error) {
	var roots []allowedRoot
	for _, d := range dirs {
		if !filepath.IsAbs(d) {
			return nil, fmt.Errorf("allowed path %q is not absolute", d)
		}
		d = filepath.Clean(d)
		r, err := filepath.EvalSymlinks(d)
		if err != nil {
			return nil, fmt.Errorf("allowed path: %w", err)
		}
		if st, err := os.Stat(r); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("allowed path %s is not a directory", d)
		}
		roots = append(roots, allowedRoot{path: d, resolved: r})
	}
	return roots, nil
}

// systemTree reports whether the clean absolute path p is /dev, /proc, /sys or under them: device files and kernel
// interfaces, where even opening a file can act (opening /dev/watchdog arms it).
func systemTree(p string) bool {
	for _, d := range []string{"/dev", "/proc", "/sys"} {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

// openBootFile opens one seed file for reading. The sender names the files its VMs boot from; the receiver opens
// only what lies under one of its allowed directories, and checks everything it can before it opens anything:
//
//   - a clean absolute path, not under /dev, /proc or /sys (nor under a root that resolves there);
//   - lexically under an allowed root, and its directory not resolving under /dev, /proc or /sys;
//   - a regular file by lstat (so a FIFO, a device, a socket or a symlink is never opened);
//
// then opens it with openat2 beneath the root's directory, following no symbolic link at all and never blocking
// (O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC|O_NOCTTY), and checks by fstat that it opened that same regular file.
func openBootFile(p string, roots []allowedRoot) (*os.File, error) {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return nil, fmt.Errorf("boot file %q: not a clean absolute path", p)
	}
	if systemTree(p) {
		return nil, fmt.Errorf("boot file %s: under /dev, /proc or /sys: never opened", p)
	}
	var root, rel string
	for _, r := range roots {
		for _, base := range []string{r.path, r.resolved} {
			if rest, ok := beneath(p, base); ok && root == "" {
				if systemTree(r.resolved) {
					return nil, fmt.Errorf("boot file %s: its allowed root resolves under %s: never opened", p, r.resolved)
				}
				root, rel = r.resolved, rest
			}
		}
	}
	if root == "" {
		var names []string
		for _, r := range roots {
			names = append(names, r.path)
		}
		return nil, fmt.Errorf("boot file %s: outside the allowed paths (%s; receive --allow-path adds one)", p, strings.Join(names, ", "))
	}
	if d, err := filepath.EvalSymlinks(filepath.Dir(p)); err == nil && systemTree(d) {
		return nil, fmt.Errorf("boot file %s: its directory resolves to %s: never opened", p, d)
	}
	var before unix.Stat_t
	if err := unix.Lstat(p, &before); err != nil {
		return nil, fmt.Errorf("boot file %s: %w", p, err)
	}
	if before.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("boot file %s: not a regular file (%s)", p, fileKind(before.Mode))
	}
	dirfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("boot file %s: allowed root %s: %w", p, root, err)
	}
	defer unix.Close(dirfd)
	flags := unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC | unix.O_NOCTTY
	fd, err := unix.Openat2(dirfd, rel, &unix.OpenHow{Flags: uint64(flags),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
	if errors.Is(err, unix.ENOSYS) { // kernels before 5.6: no symbolic link on the path, checked, then O_NOFOLLOW
		if resolved, rerr := filepath.EvalSymlinks(p); rerr != nil || resolved != p {
			return nil, fmt.Errorf("boot file %s: its path holds a symbolic link", p)
		}
		fd, err = unix.Open(p, flags, 0)
	}
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
			return nil, fmt.Errorf("boot file %s: its path holds a symbolic link or leaves the allowed root", p)
		}
		return nil, fmt.Errorf("boot file %s: %w", p, err)
	}
	var after unix.Stat_t
	if err := unix.Fstat(fd, &after); err != nil || after.Mode&unix.S_IFMT != unix.S_IFREG ||
		after.Dev != before.Dev || after.Ino != before.Ino {
		unix.Close(fd)
		return nil, fmt.Errorf("boot file %s: changed while being opened", p)
	}
	return os.NewFile(uintptr(fd), p), nil
}

// beneath returns p relative to the directory base, if p lies under it.
func beneath(p, base string) (string, bool) {
	if base == "/" {
		return p[1:], len(p) > 1
	}
	rest, ok := strings.CutPrefix(p, base+"/")
	return rest, ok && rest != ""
}

func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFLNK:
		return "a symbolic link"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFCHR, unix.S_IFBLK:
		return "a device"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFDIR:
		return "a directory"
	}
	return fmt.Sprintf("mode %#o", mode&unix.S_IFMT)
}

// readPage reads the page at off of file i within the read deadline. ok is false when the file is shorter there, or
// when the read timed out; then the file is given up for the rest of the seed.
func (r *seedReader) readPage(i int, off int64) (page []byte, ok bool) {
	if r.w == nil {
		r.w = newSeedWorker()
	}
	r.w.req <- seedRead{f: r.files[i], off: off}
	t := time.NewTimer(r.readTimeout)
	defer t.Stop()
	select {
	case rq := <-r.w.resp:
		return r.w.page, rq.n == len(r.w.page)
	case <-t.C:
		// The worker is stuck in the read: retire it (it ends when the read returns) and give the file up.
		close(r.w.req)
		r.w = nil
		r.errs = append(r.errs, fmt.Sprintf("boot file %d: a read did not finish within %v; its pages are primed instead", i, r.readTimeout))
		r.abandoned = append(r.abandoned, r.files[i])
		r.files[i] = nil
		return nil, false
	}
}

// records reads and stores the contents of one SEED frame.
func (r *seedReader) records(b []byte) error {
	return wire.ParseSeedRecords(b, func(rec wire.SeedRecord) error {
		if rec.File >= len(r.files) {
			return fmt.Errorf("%w: seed record names file %d of %d", wire.ErrFrame, rec.File, len(r.files))
		}
		if r.files[rec.File] == nil {
			r.missing = append(r.missing, uint32(rec.ID))
			return nil
		}
		page, ok := r.readPage(rec.File, rec.Offset)
		if !ok || r.d.Sum(page) != rec.Digest {
			// Shorter here, or other bytes than the sender read at the source: the prime brings it.
			r.missing = append(r.missing, uint32(rec.ID))
			return nil
		}
		err := r.store.Put(rec.ID, page, rec.Slots...)
		switch {
		case err == nil:
			r.held++
		case errors.Is(err, dedup.ErrStoreFull):
			r.missing = append(r.missing, uint32(rec.ID))
		default:
			return err
		}
		return nil
	})
}

func (r *seedReader) close() {
	if r.w != nil {
		close(r.w.req)
		r.w = nil
	}
	for _, f := range append(r.files, r.abandoned...) {
		if f != nil {
			f.Close()
		}
	}
}
