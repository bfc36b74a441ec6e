package qmp

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

func ev(name, data string, sec int64) string {
	if data == "" {
		data = "{}"
	}
	return fmt.Sprintf(`{"event": %q, "data": %s, "timestamp": {"seconds": %d, "microseconds": 0}}`, name, data, sec)
}

func migEv(status string, sec int64) string { return ev("MIGRATION", `{"status": "`+status+`"}`, sec) }

func waitCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestWaitStopResumeSeeEventsBeforeTheWait: the STOP that Stop causes arrives before Stop's answer, so before any
// wait can begin; WaitStop must not miss it (it reads the state after subscribing) and must not hang.
func TestWaitStopResumeSeeEventsBeforeTheWait(t *testing.T) {
	var mu sync.Mutex
	state := "running"
	path := fakeQMP(t, func(cmd map[string]any) []string {
		mu.Lock()
		defer mu.Unlock()
		switch cmd["execute"] {
		case "stop":
			state = "paused"
			return []string{ev("STOP", "", 5), reply(cmd, "{}")}
		case "cont":
			state = "running"
			return []string{ev("RESUME", "", 6), reply(cmd, "{}")}
		case "query-status":
			return []string{reply(cmd, fmt.Sprintf(`{"status": %q, "running": %v}`, state, state == "running"))}
		}
		return []string{reply(cmd, "{}")}
	})
	ctx := waitCtx(t)
	q, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if at, err := q.WaitStop(ctx); err != nil || !at.IsZero() {
		t.Fatalf("WaitStop after Stop = %v, %v; want at once", at, err)
	}
	if err := q.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if at, err := q.WaitResume(ctx); err != nil || !at.IsZero() {
		t.Fatalf("WaitResume after Cont = %v, %v", at, err)
	}
	q.mu.Lock()
	subs := len(q.subs)
	q.mu.Unlock()
	if subs != 0 {
		t.Fatalf("%d subscriptions left behind by the waits", subs)
	}
}

// TestWaitStopFollowsTheEvent: a VM that runs when the wait begins and stops later (a migration's switch-over);
// WaitStop returns with the STOP event's QEMU timestamp. The event comes in the same write as the status answer, so
// it may reach the client before WaitStop has read the answer: the subscription, made first, holds it.
func TestWaitStopFollowsTheEvent(t *testing.T) {
	path := fakeQMP(t, func(cmd map[string]any) []string {
		switch cmd["execute"] {
		case "query-status":
			return []string{reply(cmd, `{"status": "running", "running": true}`), ev("RESUME", "", 1), ev("STOP", "", 42)}
		}
		return []string{reply(cmd, "{}")}
	})
	ctx := waitCtx(t)
	q, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	at, err := q.WaitStop(ctx)
	if err != nil || at.Unix() != 42 {
		t.Fatalf("WaitStop = %v, %v; want the STOP event's time", at, err)
	}
}

// TestWaitResumeWakesOnPushedEvent: the client is already waiting, with nothing in flight, when the event arrives.
func TestWaitResumeWakesOnPushedEvent(t *testing.T) {
	statusAsked := make(chan struct{}, 1)
	path, push := fakeQMPPush(t, func(cmd map[string]any) []string {
		if cmd["execute"] == "query-status" {
			defer func() { statusAsked <- struct{}{} }()
			return []string{reply(cmd, `{"status": "inmigrate", "running": false}`)}
		}
		return []string{reply(cmd, "{}")}
	})
	ctx := waitCtx(t)
	q, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	type result struct {
		at  time.Time
		err error
	}
	done := make(chan result, 1)
	go func() {
		at, err := q.WaitResume(ctx)
		done <- result{at, err}
	}()
	<-statusAsked
	push(ev("STOP", "", 3)) // not the one it waits for
	push(ev("RESUME", "", 7))
	r := <-done
	if r.err != nil || r.at.Unix() != 7 {
		t.Fatalf("WaitResume = %v, %v", r.at, r.err)
	}
}

// fakeMigration is a fake QEMU with a migration whose status the test scripts, and events sent around the answers
// to query-migrate and query-migrate-capabilities (events racing the answers).
type fakeMigration struct {
	mu      sync.Mutex
	status  string
	events  bool     // the "events" capability
	before  []string // sent before the next query-migrate answer, then forgotten
	afterQ  []string // sent after the next query-migrate answer, then forgotten
	afterC  []string // sent after the next query-migrate-capabilities answer, then forgotten
	queries int
}

func (f *fakeMigration) handle(cmd map[string]any) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch cmd["execute"] {
	case "query-migrate":
		f.queries++
		out := append(f.before, reply(cmd, fmt.Sprintf(`{"status": %q}`, f.status)))
		out = append(out, f.afterQ...)
		f.before, f.afterQ = nil, nil
		return out
	case "query-migrate-capabilities":
		out := append([]string{reply(cmd, fmt.Sprintf(`[{"capability": "events", "state": %v}]`, f.events))}, f.afterC...)
		f.afterC = nil
		return out
	}
	return []string{reply(cmd, "{}")}
}

func dialFake(t *testing.T, handle func(map[string]any) []string) (*Client, func(string)) {
	t.Helper()
	path, push := fakeQMPPush(t, handle)
	q, err := Dial(waitCtx(t), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q, push
}

func TestWaitMigration(t *testing.T) {
	t.Run("already finished: no events needed", func(t *testing.T) {
		f := &fakeMigration{status: "completed"} // events off: it must not matter
		q, _ := dialFake(t, f.handle)
		if st, err := q.WaitMigration(waitCtx(t), MigrationStatus.Finished); err != nil || st != MigrationCompleted {
			t.Fatalf("got %q, %v", st, err)
		}
	})
	t.Run("event between subscribing and the status answer", func(t *testing.T) {
		// The migration completes while query-migrate's answer is on its way: the answer says active, the
		// completed event came just before it. Polling-style "query, then wait for the next event" would hang.
		f := &fakeMigration{status: "active", events: true, before: []string{migEv("completed", 9)}}
		q, _ := dialFake(t, f.handle)
		if st, err := q.WaitMigration(waitCtx(t), MigrationStatus.Finished); err != nil || st != MigrationCompleted {
			t.Fatalf("got %q, %v", st, err)
		}
	})
	t.Run("every status passed through is seen", func(t *testing.T) {
		// A wait for "device" sees it although the migration is past it by the time anyone could query.
		f := &fakeMigration{status: "setup", events: true,
			afterC: []string{migEv("active", 1), migEv("device", 2), migEv("completed", 3)}}
		q, _ := dialFake(t, f.handle)
		st, err := q.WaitMigration(waitCtx(t), func(s MigrationStatus) bool { return s == MigrationDevice })
		if err != nil || st != MigrationDevice {
			t.Fatalf("got %q, %v", st, err)
		}
		if st, err := q.QueryMigrate(waitCtx(t)); err != nil || st.Status != "setup" {
			t.Fatalf("fake status %v %v", st, err) // the fake's query answer does not move: only events did
		}
	})
	t.Run("pushed while waiting, other events ignored", func(t *testing.T) {
		f := &fakeMigration{status: "active", events: true}
		asked := make(chan struct{}, 1)
		q, push := dialFake(t, func(cmd map[string]any) []string {
			out := f.handle(cmd)
			if cmd["execute"] == "query-migrate-capabilities" {
				asked <- struct{}{}
			}
			return out
		})
		res := make(chan error, 1)
		go func() {
			st, err := q.WaitMigration(waitCtx(t), func(s MigrationStatus) bool { return !s.Active() })
			if err == nil && st != MigrationCancelled {
				err = fmt.Errorf("status %q", st)
			}
			res <- err
		}()
		<-asked
		push(ev("MIGRATION_PASS", `{"pass": 2}`, 1))
		push(ev("STOP", "", 2))
		push(migEv("cancelling", 3))
		push(migEv("cancelled", 4))
		if err := <-res; err != nil {
			t.Fatal(err)
		}
	})
	t.Run("events capability off", func(t *testing.T) {
		f := &fakeMigration{status: "active"}
		q, _ := dialFake(t, f.handle)
		if _, err := q.WaitMigration(waitCtx(t), MigrationStatus.Finished); !errors.Is(err, ErrMigrationEventsOff) {
			t.Fatalf("got %v, want ErrMigrationEventsOff", err)
		}
	})
	t.Run("QEMU exits while waiting", func(t *testing.T) {
		f := &fakeMigration{status: "active", events: true, afterC: []string{migEv("failed", 1), "CLOSE"}}
		q, _ := dialFake(t, f.handle)
		// The failure event is delivered before the close is seen.
		if st, err := q.WaitMigration(waitCtx(t), func(s MigrationStatus) bool { return s == MigrationCompleted }); !errors.Is(err, ErrClosed) || st != MigrationFailed {
			t.Fatalf("got %q, %v; want failed and ErrClosed", st, err)
		}
	})
	t.Run("context ends", func(t *testing.T) {
		f := &fakeMigration{status: "active", events: true}
		q, _ := dialFake(t, f.handle)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := q.WaitMigration(ctx, MigrationStatus.Finished); !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v", err)
		}
	})
}

func TestSubscriptionOrderOverflowAndClose(t *testing.T) {
	const n = maxQueuedEvents + 44
	path := fakeQMP(t, func(cmd map[string]any) []string {
		if cmd["execute"] == "flood" {
			var out []string
			for i := range n {
				out = append(out, ev("MIGRATION_PASS", fmt.Sprintf(`{"pass": %d}`, i), int64(i)))
			}
			return append(out, ev("STOP", "", 1000), reply(cmd, "{}"), "CLOSE")
		}
		return []string{reply(cmd, "{}")}
	})
	ctx := waitCtx(t)
	q, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	all := q.Subscribe()
	passes := q.Subscribe("MIGRATION_PASS")
	stops := q.Subscribe(EventStop)
	closed := q.Subscribe(EventStop)
	closed.Close()
	closed.Close()
	// The reader handles lines in order: once flood is answered, every event before the answer is queued.
	if err := q.Execute(ctx, "flood", nil, nil); err != nil {
		t.Fatal(err)
	}
	<-q.Done()
	// Overflow: the subscriber is told, then gets the newest maxQueuedEvents events in order.
	if _, err := passes.Next(ctx); !errors.Is(err, ErrEventsLost) {
		t.Fatalf("first Next after overflow = %v, want ErrEventsLost", err)
	}
	for i := n - maxQueuedEvents; i < n; i++ {
		e, err := passes.Next(ctx)
		var d struct {
			Pass int `json:"pass"`
		}
		if err != nil || e.decode(&d) != nil || d.Pass != i {
			t.Fatalf("event %d: %+v %v", i, e, err)
		}
	}
	// Queued events outlive the connection; then the close shows.
	if _, err := passes.Next(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next past the queue = %v", err)
	}
	if e, err := stops.Next(ctx); err != nil || e.Name != EventStop {
		t.Fatalf("STOP subscription: %+v, %v", e, err)
	}
	if _, err := all.Next(ctx); !errors.Is(err, ErrEventsLost) {
		t.Fatalf("all-events subscription: %v", err)
	}
	if e, err := closed.Next(ctx); err == nil || errors.Is(err, ErrEventsLost) {
		t.Fatalf("a closed subscription got %+v, %v", e, err)
	}
}
