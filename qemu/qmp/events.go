package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

// QMP event names this package waits on.
const (
	EventStop      = "STOP"      // the vCPUs stopped (stop, a migration's switch-over, an I/O error, ...)
	EventResume    = "RESUME"    // the vCPUs run again
	EventMigration = "MIGRATION" // the migration changed status; sent only with the "events" capability on
)

// maxQueuedEvents bounds one Subscription's queue. A subscriber that falls this far behind loses the oldest events
// and is told so (ErrEventsLost); it never makes the reader wait.
const maxQueuedEvents = 256

// ErrEventsLost is returned once by Subscription.Next when the subscription's queue overflowed and its oldest events
// were dropped: the next events follow a gap. A state-based waiter re-reads the state.
var ErrEventsLost = errors.New("qmp: events lost: the subscriber fell behind")

// Subscription receives the events that arrive after it was made, in order. Make one with Client.Subscribe and
// Close it when done.
//
// Events are kept only for subscriptions: one that arrived before any subscription asked for it is gone. To wait
// for a state without missing the change to it, subscribe first, then read the current state (a query command),
// then wait for events: a change after the query is in the subscription, and one before it is in the query's
// answer. WaitStop, WaitResume and WaitMigration do exactly that.
type Subscription struct {
	q      *Client
	names  []string // none: every event
	queue  []Event  // guarded by q.mu
	lost   bool     // guarded by q.mu
	closed bool     // guarded by q.mu
}

// Subscribe starts receiving the events with these names (every event if none are given).
func (q *Client) Subscribe(names ...string) *Subscription {
	s := &Subscription{q: q, names: slices.Clone(names)}
	q.mu.Lock()
	q.subs[s] = struct{}{}
	q.mu.Unlock()
	return s
}

// deliver queues an event for every subscription that wants it. It runs on the reader goroutine.
func (q *Client) deliver(ev Event) {
	q.mu.Lock()
	defer q.mu.Unlock()
	queued := false
	for s := range q.subs {
		if len(s.names) > 0 && !slices.Contains(s.names, ev.Name) {
			continue
		}
		if len(s.queue) >= maxQueuedEvents {
			s.queue = slices.Delete(s.queue, 0, 1)
			s.lost = true
		}
		s.queue = append(s.queue, ev)
		queued = true
	}
	if queued {
		close(q.evSig)
		q.evSig = make(chan struct{})
	}
}

// Next returns the subscription's next event, waiting for one if none is queued. Events queued before the
// connection ended are still returned; after them, Next returns an error wrapping ErrClosed. After an overflow it
// returns ErrEventsLost once, then the events that followed the gap. Next is for one goroutine at a time.
func (s *Subscription) Next(ctx context.Context) (Event, error) {
	q := s.q
	for {
		q.mu.Lock()
		if s.closed {
			q.mu.Unlock()
			return Event{}, errSubscriptionClosed
		}
		if s.lost {
			s.lost = false
			q.mu.Unlock()
			return Event{}, ErrEventsLost
		}
		if len(s.queue) > 0 {
			ev := s.queue[0]
			s.queue = slices.Delete(s.queue, 0, 1)
			q.mu.Unlock()
			return ev, nil
		}
		sig, err := q.evSig, q.err
		q.mu.Unlock()
		if err != nil {
			return Event{}, err
		}
		select {
		case <-sig:
		case <-ctx.Done():
			return Event{}, ctx.Err()
		}
	}
}

var errSubscriptionClosed = errors.New("qmp: Next on a closed subscription")

// Close ends the subscription and forgets its queued events; Next then fails. It is idempotent.
func (s *Subscription) Close() {
	s.q.mu.Lock()
	delete(s.q.subs, s)
	s.queue, s.lost, s.closed = nil, false, true
	s.q.mu.Unlock()
}

// WaitStop returns once the VM's vCPUs are stopped. If they already are when it is called, it returns at once with
// the zero time; otherwise at the first STOP event after the call, with that event's QEMU timestamp (the moment the
// vCPUs stopped, on this host's clock when QEMU runs here). A STOP that arrived before the call, e.g. the one a
// Stop or a migration's switch-over sent, is not missed: the state query sees it.
func (q *Client) WaitStop(ctx context.Context) (time.Time, error) {
	return q.waitRunState(ctx, EventStop, false)
}

// WaitResume returns once the VM's vCPUs run: at once with the zero time if they already do, otherwise at the first
// RESUME event after the call, with its QEMU timestamp.
func (q *Client) WaitResume(ctx context.Context) (time.Time, error) {
	return q.waitRunState(ctx, EventResume, true)
}

func (q *Client) waitRunState(ctx context.Context, event string, running bool) (time.Time, error) {
	sub := q.Subscribe(event)
	defer sub.Close()
	for {
		st, err := q.Status(ctx)
		if err != nil {
			return time.Time{}, err
		}
		if st.Running() == running {
			return time.Time{}, nil
		}
		ev, err := sub.Next(ctx)
		if errors.Is(err, ErrEventsLost) {
			continue // read the state again
		}
		if err != nil {
			return time.Time{}, fmt.Errorf("qmp: waiting for %s: %w", event, err)
		}
		return ev.Time(), nil
	}
}

// ErrMigrationEventsOff is returned by WaitMigration when it would have to wait but the "events" migration
// capability is off, so that QEMU sends no MIGRATION events.
var ErrMigrationEventsOff = errors.New(`qmp: waiting for a migration needs the "events" migration capability (SetCapabilities before Migrate or MigrateIncoming)`)

// WaitMigration returns the migration's status once done(status) holds. It reads the status first
// (query-migrate) and returns it if done already holds; otherwise it follows the MIGRATION events and returns the
// first status of theirs for which done holds, so that it sees every status the migration passes through, even
// one that lasts a moment. MigrationStatus.Finished is the usual done; a caller waiting for one status should also
// stop on the failures (Finished does).
//
// MIGRATION events need the "events" migration capability, which this method does not turn on: capabilities are
// part of the migration stream's configuration and can only be changed while no migration runs, so the caller sets
// them with the rest, before Migrate (and before MigrateIncoming on the destination). When WaitMigration has to
// wait and the capability is off, it returns ErrMigrationEventsOff at once instead of waiting forever.
func (q *Client) WaitMigration(ctx context.Context, done func(MigrationStatus) bool) (MigrationStatus, error) {
	sub := q.Subscribe(EventMigration)
	defer sub.Close()
	checked := false
	for {
		mi, err := q.QueryMigrate(ctx)
		if err != nil {
			return mi.Status, err
		}
		if done(mi.Status) {
			return mi.Status, nil
		}
		if !checked {
			caps, err := q.Capabilities(ctx)
			if err != nil {
				return mi.Status, err
			}
			if !caps[CapEvents] {
				return mi.Status, ErrMigrationEventsOff
			}
			checked = true
		}
		for {
			ev, err := sub.Next(ctx)
			if errors.Is(err, ErrEventsLost) {
				break // query the status again
			}
			if err != nil {
				return mi.Status, fmt.Errorf("qmp: waiting for the migration (status %s): %w", mi.Status, err)
			}
			var data struct {
				Status MigrationStatus `json:"status"`
			}
			if err := ev.decode(&data); err != nil {
				return mi.Status, err
			}
			mi.Status = data.Status
			if done(data.Status) {
				return data.Status, nil
			}
		}
	}
}

// decode unmarshals the event's data.
func (e Event) decode(v any) error {
	if len(e.Data) == 0 {
		return nil
	}
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("qmp: decoding %s event: %w", e.Name, err)
	}
	return nil
}
