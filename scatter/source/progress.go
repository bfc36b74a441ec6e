package source

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// progress prints one line per VM event to the operator (stderr): phase changes always, detail updates at most
// once a second per VM. It is safe for concurrent use.
type progress struct {
	w     io.Writer
	start time.Time

	mu    sync.Mutex
	phase map[string]string
	last  map[string]time.Time
}

func newProgress(w io.Writer) *progress {
	return &progress{w: w, start: time.Now(), phase: map[string]string{}, last: map[string]time.Time{}}
}

func (p *progress) set(vm, phase, detail string) {
	if p == nil || p.w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if p.phase[vm] == phase && now.Sub(p.last[vm]) < time.Second {
		return
	}
	p.phase[vm], p.last[vm] = phase, now
	line := fmt.Sprintf("[%6.1fs] %-12s %-11s", now.Sub(p.start).Seconds(), vm, phase)
	if detail != "" {
		line += " " + detail
	}
	fmt.Fprintln(p.w, line)
}

// fmtBytes renders a byte count for people.
func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
