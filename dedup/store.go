package dedup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// ContentStore is a receiver's store of primed contents for one session: ContentID to the
// exact PageSize bytes received under it. It is bounded in bytes, it never hands out
// bytes other than those first stored under an id, and it frees a content once no local
// VM needs it any more.
//
// Reference counting: Put and Retain name the local VMs that will need a content;
// ReleaseVM(vm) drops all of vm's references, and frees each content that thereby loses
// its last one. A freed id is released for good: a later Put of it is refused and a Get of
// it fails at once, so a late retransmission can never bring back content that a VM no
// longer expects. A content stored without any VM stays until Close.
//
// A ContentStore is safe for concurrent use. Pages returned by Get are shared and must not
// be modified.
type ContentStore struct {
	d     *Digester // nil: PutVerified is refused
	limit int64

	mu       sync.Mutex
	used     int64 // bytes of stored pages
	pending  int   // entries retained but not yet stored
	entries  map[ContentID]*storeEntry
	byVM     map[int][]ContentID
	released map[ContentID]struct{}
	waiting  map[ContentID]*storeWait
	closed   bool
}

type storeEntry struct {
	page []byte // nil while retained but not stored yet
	vms  []int  // sorted, unique: local VMs that need it
}

type storeWait struct {
	ch chan struct{} // closed when the id is stored, released, or the store closes
	n  int           // waiters
}

// Errors of the ContentStore. The *Error types below match them with errors.Is.
var (
	ErrStoreFull       = errors.New("dedup: content store full")
	ErrContentMissing  = errors.New("dedup: content not in store")
	ErrContentConflict = errors.New("dedup: content id stored with different bytes")
	ErrDigestMismatch  = errors.New("dedup: content does not match its digest")
	ErrContentReleased = errors.New("dedup: content released")
	ErrStoreClosed     = errors.New("dedup: content store closed")
)

// StoreFullError reports a Put or Retain that would exceed the store's bound.
type StoreFullError struct {
	ID       ContentID
	Limit    int64 // bytes
	Used     int64 // bytes held when the Put came
	Contents int   // contents held
	Pending  int   // ids retained but not stored yet
}

func (e *StoreFullError) Error() string {
	return fmt.Sprintf("dedup: content store full: content %d needs %d bytes, %d of %d used by %d contents (%d more expected)",
		e.ID, PageSize, e.Used, e.Limit, e.Contents, e.Pending)
}

func (e *StoreFullError) Is(target error) bool { return target == ErrStoreFull }

// MissingContentError reports a Get that found no content under ID within its wait.
type MissingContentError struct {
	ID     ContentID
	Waited time.Duration // the bound the caller gave
	Cause  error         // the context's error, if it ended the wait
}

func (e *MissingContentError) Error() string {
	s := fmt.Sprintf("dedup: content %d not in store after waiting up to %v", e.ID, e.Waited)
	if e.Cause != nil {
		s += ": " + e.Cause.Error()
	}
	return s
}

func (e *MissingContentError) Is(target error) bool { return target == ErrContentMissing }

func (e *MissingContentError) Unwrap() error { return e.Cause }

// NewContentStore returns a store bounded to limit bytes of page content (a multiple of
// PageSize is sensible; it holds limit/PageSize pages). d checks digests in PutVerified;
// it may be nil when the receiver does not re-check them.
func NewContentStore(limit int64, d *Digester) *ContentStore {
	return &ContentStore{
		d:        d,
		limit:    limit,
		entries:  map[ContentID]*storeEntry{},
		byVM:     map[int][]ContentID{},
		released: map[ContentID]struct{}{},
		waiting:  map[ContentID]*storeWait{},
	}
}

// Put stores a copy of page under id, needed by vms. A Put of an id already stored with
// the same bytes only adds vms (retransmissions are harmless); with different bytes it
// fails with ErrContentConflict and changes nothing.
func (s *ContentStore) Put(id ContentID, page []byte, vms ...int) error {
	if len(page) != PageSize {
		return fmt.Errorf("dedup: Put of content %d with %d bytes, want %d", id, len(page), PageSize)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrStoreClosed
	}
	if _, ok := s.released[id]; ok {
		return fmt.Errorf("%w: Put of content %d", ErrContentReleased, id)
	}
	e := s.entries[id]
	switch {
	case e != nil && e.page != nil:
		if !bytes.Equal(e.page, page) {
			return fmt.Errorf("%w: content %d", ErrContentConflict, id)
		}
	case e == nil && s.used+int64(s.pending+1)*PageSize > s.limit:
		return s.fullError(id) // a retained id was counted when it was retained
	default:
		if e == nil {
			e = &storeEntry{}
			s.entries[id] = e
		} else {
			s.pending--
		}
		e.page = bytes.Clone(page)
		s.used += PageSize
		s.wake(id)
	}
	s.retain(id, e, vms)
	return nil
}

// PutVerified is Put after checking that page has digest dg under the session salt. A
// mismatch fails with ErrDigestMismatch and stores nothing.
func (s *ContentStore) PutVerified(id ContentID, page []byte, dg Digest, vms ...int) error {
	if s.d == nil {
		return errors.New("dedup: PutVerified on a store without a Digester")
	}
	if !s.d.Verify(page, dg) {
		return fmt.Errorf("%w: content %d", ErrDigestMismatch, id)
	}
	return s.Put(id, page, vms...)
}

// Retain records that vms need content id, which may not have arrived yet. Ids retained
// but not stored count against the bound as if stored, so that a store never promises
// more than it can hold.
func (s *ContentStore) Retain(id ContentID, vms ...int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrStoreClosed
	}
	if _, ok := s.released[id]; ok {
		return fmt.Errorf("%w: Retain of content %d", ErrContentReleased, id)
	}
	e := s.entries[id]
	if e == nil {
		if len(vms) == 0 {
			return nil
		}
		if s.used+int64(s.pending+1)*PageSize > s.limit {
			return s.fullError(id)
		}
		e = &storeEntry{}
		s.entries[id] = e
		s.pending++
	}
	s.retain(id, e, vms)
	return nil
}

func (s *ContentStore) fullError(id ContentID) error {
	return &StoreFullError{ID: id, Limit: s.limit, Used: s.used, Contents: len(s.entries) - s.pending, Pending: s.pending}
}

// retain adds vms to e's holders. s.mu is held.
func (s *ContentStore) retain(id ContentID, e *storeEntry, vms []int) {
	for _, vm := range vms {
		i, found := slices.BinarySearch(e.vms, vm)
		if found {
			continue
		}
		e.vms = slices.Insert(e.vms, i, vm)
		s.byVM[vm] = append(s.byVM[vm], id)
	}
}

// ReleaseVM drops vm's references and frees every content that no VM needs any more. It
// returns the number of contents freed.
func (s *ContentStore) ReleaseVM(vm int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	freed := 0
	for _, id := range s.byVM[vm] {
		e := s.entries[id]
		if e == nil {
			continue
		}
		if i, found := slices.BinarySearch(e.vms, vm); found {
			e.vms = slices.Delete(e.vms, i, i+1)
		}
		if len(e.vms) > 0 {
			continue
		}
		if e.page != nil {
			s.used -= PageSize
			freed++
		} else {
			s.pending--
		}
		delete(s.entries, id)
		s.released[id] = struct{}{}
		s.wake(id)
	}
	delete(s.byVM, vm)
	return freed
}

// wake releases the waiters on id. s.mu is held.
func (s *ContentStore) wake(id ContentID) {
	if w := s.waiting[id]; w != nil {
		close(w.ch)
		delete(s.waiting, id)
	}
}

// Get returns the page stored under id. If it has not arrived, Get waits for it up to
// wait (0: not at all) or until ctx ends, then fails with a *MissingContentError
// (ErrContentMissing). It fails at once with ErrContentReleased for a freed id and with
// ErrStoreClosed once the store is closed. The page must not be modified.
func (s *ContentStore) Get(ctx context.Context, id ContentID, wait time.Duration) ([]byte, error) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.closed {
			return nil, ErrStoreClosed
		}
		if e := s.entries[id]; e != nil && e.page != nil {
			return e.page, nil
		}
		if _, ok := s.released[id]; ok {
			return nil, fmt.Errorf("%w: Get of content %d", ErrContentReleased, id)
		}
		if wait <= 0 {
			return nil, &MissingContentError{ID: id, Waited: wait}
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		}
		w := s.waiting[id]
		if w == nil {
			w = &storeWait{ch: make(chan struct{})}
			s.waiting[id] = w
		}
		w.n++
		s.mu.Unlock()
		var cause error
		timedOut := false
		select {
		case <-w.ch:
		case <-timer.C:
			timedOut = true
		case <-ctx.Done():
			cause = ctx.Err()
		}
		s.mu.Lock()
		w.n--
		if w.n == 0 && s.waiting[id] == w {
			delete(s.waiting, id)
		}
		if timedOut || cause != nil {
			if e := s.entries[id]; e != nil && e.page != nil && !s.closed {
				return e.page, nil // arrived as the wait ended
			}
			return nil, &MissingContentError{ID: id, Waited: wait, Cause: cause}
		}
	}
}

// Close frees every content and wakes every waiter with ErrStoreClosed.
func (s *ContentStore) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for id := range s.waiting {
		s.wake(id)
	}
	s.entries, s.byVM, s.released = nil, nil, nil
	s.used, s.pending = 0, 0
}

// StoreStats is a snapshot of a ContentStore.
type StoreStats struct {
	Contents int   // contents stored
	Pending  int   // ids retained but not stored yet
	Released int   // ids freed by ReleaseVM
	Used     int64 // bytes of stored pages
	Limit    int64 // the bound in bytes
}

// Stats returns a snapshot of the store's counters.
func (s *ContentStore) Stats() StoreStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return StoreStats{Contents: len(s.entries) - s.pending, Pending: s.pending, Released: len(s.released), Used: s.used, Limit: s.limit}
}
