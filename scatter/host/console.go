package host

import (
	"context"
	"io"
	"os"
	"sync"
	"time"
)

// ConsoleWatch follows a guest's serial log file and remembers, in host time, when the newest line arrived. The
// guest-observed downtime of a switch-over is the gap between the last line the guest wrote at the source and the
// first it wrote at the destination: the guest's own clock stops while it is paused, so only the host sees the gap.
// It is safe for concurrent use.
type ConsoleWatch struct {
	path string

	mu    sync.Mutex
	last  time.Time // arrival of the newest complete line
	first time.Time // arrival of the first complete line after start
	done  chan struct{}
}

// WatchConsole follows path from its current end (lines already there do not count) until ctx ends.
func WatchConsole(ctx context.Context, path string) *ConsoleWatch {
	w := &ConsoleWatch{path: path, done: make(chan struct{})}
	var off int64
	if st, err := os.Stat(path); err == nil {
		off = st.Size()
	}
	go func() {
		defer close(w.done)
		buf := make([]byte, 64<<10)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			f, err := os.Open(path)
			if err != nil {
				continue
			}
			for {
				n, err := f.ReadAt(buf, off)
				for _, b := range buf[:n] {
					off++
					if b == '\n' {
						now := time.Now()
						w.mu.Lock()
						if w.first.IsZero() {
							w.first = now
						}
						w.last = now
						w.mu.Unlock()
					}
				}
				if n < len(buf) || err == io.EOF || err != nil {
					break
				}
			}
			f.Close()
		}
	}()
	return w
}

// LastLine returns the arrival time of the newest line so far (zero if none).
func (w *ConsoleWatch) LastLine() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

// FirstLine waits up to max for a first line and returns its arrival time (zero if none came).
func (w *ConsoleWatch) FirstLine(max time.Duration) time.Time {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		f := w.first
		w.mu.Unlock()
		if !f.IsZero() {
			return f
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Time{}
}
