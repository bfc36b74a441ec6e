package scale

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vmscatter/vmscatter/bench/fixture"
	"github.com/vmscatter/vmscatter/qemu/qmp"
)

// CaptureOptions say which base images Capture takes.
type CaptureOptions struct {
	Dir       string           // where the guests' files and the images go; required
	Images    int              // K guests; default 4
	MemoryMiB int              // per guest; default fixture.DefaultMemoryMiB
	Settle    time.Duration    // from boot to capture; default 8 s
	Workload  fixture.Workload // image k runs it with Seed + k (a distinct family) unless SameSeed
	SameSeed  bool             // every image runs Workload as given (same family, different salts)
}

// Capture boots K fixture guests at once, waits Settle, then for each stops its vCPUs, saves its RAM with QMP
// pmemsave into Dir/imgK.ram, and kills its QEMU by PID. It returns the image paths in order. It is I/O at the
// edge of the package: everything else works on the images it leaves.
func Capture(ctx context.Context, o CaptureOptions) (paths []string, err error) {
	if o.Dir == "" {
		return nil, errors.New("scale: capture needs a directory")
	}
	if o.Images <= 0 {
		o.Images = 4
	}
	if o.MemoryMiB <= 0 {
		o.MemoryMiB = fixture.DefaultMemoryMiB
	}
	if o.Settle <= 0 {
		o.Settle = 8 * time.Second
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	guests := make([]*fixture.Guest, o.Images)
	defer func() {
		for _, g := range guests {
			if g != nil {
				g.Kill()
			}
		}
	}()
	errs := make(chan error, o.Images)
	for k := range o.Images {
		go func() {
			w := o.Workload
			if !o.SameSeed {
				w.Seed += uint64(k)
			}
			g, err := fixture.StartGuest(ctx, dir, fmt.Sprintf("img%d", k), fixture.GuestOptions{MemoryMiB: o.MemoryMiB, Workload: w})
			guests[k] = g
			errs <- err
		}()
	}
	for range o.Images {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		return nil, err
	}
	select {
	case <-time.After(o.Settle):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for k, g := range guests {
		path := filepath.Join(dir, fmt.Sprintf("img%d.ram", k))
		if err := saveRAM(ctx, g.QMPPath, path, fixture.GuestOptions{MemoryMiB: o.MemoryMiB}.RAMBytes()); err != nil {
			return nil, fmt.Errorf("scale: capturing %s: %w", g.Name, err)
		}
		g.Kill()
		paths = append(paths, path)
	}
	return paths, nil
}

// saveRAM stops the guest and writes its first size bytes of guest-physical memory to path.
func saveRAM(ctx context.Context, qmpPath, path string, size int64) error {
	q, err := qmp.Dial(ctx, qmpPath)
	if err != nil {
		return err
	}
	defer q.Close()
	if err := q.Stop(ctx); err != nil {
		return err
	}
	return q.Pmemsave(ctx, 0, size, path)
}
