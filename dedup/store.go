package dedup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"
)

// ContentStore is a receiver's store of primed contents for one session: ContentID to the
// exact PageSize bytes received under it. It never hands out bytes other than those first
// stored under an id, and it frees a content once no local VM needs it any more.
//
// It keeps the pages in one of two places:
//
//   - in memory (NewContentStore), bounded to limit bytes of pages: for tests and small runs;
//   - in a slot file (NewSlotStore): each page at slot×PageSize of a file the caller opened on
//     the receiver's data dir, freed slots reused. Memory then holds only the index, a fixed
//     cost per content (StoreIndexBytesPerContent), so the store's memory is bounded by its
//     budget whatever the size of the prime; the file is bounded by a disk budget.
//
// Either way the store holds at most Capacity contents (stored, plus retained and not
// stored yet), and says so up front (Capacity), so that a sender can plan within it.
//
// Reference counting: Put and Retain name the local VMs that will need a content;
// ReleaseVM(vm) drops all of vm's references, and frees each content that thereby loses
// its last one. A freed id is released for good: a later Put of it is refused and a Get of
// it fails at once, so a late retransmission can never bring back content that a VM no
// longer expects. A content stored without any VM stays until Close.
//
// A ContentStore is safe for concurrent use. Get returns a copy of the page; GetInto reads
// it into the caller's buffer.
type ContentStore struct {
	d        *Digester // nil: PutVerified is refused
	limit    int64     // the memory budget in bytes
	capacity int       // contents it may hold
	slots    SlotFile  // nil: pages in memory

	mu       sync.Mutex
	used     int64 // bytes of stored pages
	pending  int   // entries retained but not yet stored
	entries  map[ContentID]*storeEntry
	byVM     map[int][]ContentID
	released map[ContentID]struct{}
	waiting  map[ContentID]*storeWait
	free     []int32 // slot file: freed slots, reused before the file grows
	next     int32   // slot file: the first slot never used
	closed   bool
}

type storeEntry struct {
	page    []byte // in memory: the bytes; nil while retained but not stored yet
	slot    int32  // slot file: the page's slot; -1 while retained but not stored yet
	readers int32  // slot file: Gets reading the slot now; a freed slot is reused only after them
	dead    bool   // freed while read: the last reader frees the slot
	vms     []int32
}

func (e *storeEntry) stored() bool { return e.page != nil || e.slot >= 0 }

type storeWait struct {
	ch chan struct{} // closed when the id is stored, released, or the store closes
	n  int           // waiters
}

// SlotFile is where a slot store keeps its pages: a file the receiver opened read-write
// on its data dir (an *os.File). The store reads and writes whole pages at multiples of
// PageSize, from several goroutines at once.
type SlotFile interface {
	io.ReaderAt
	io.WriterAt
}

// StoreIndexBytesPerContent is the memory a slot store's index takes per content, at most:
// the entry, its map slot, the VMs that need it (up to two) and its place in their lists,
// and the released id it leaves behind. TestStoreIndexBytesPerContent measures it (about 100
// bytes with one VM per content); docs/store.md has the figures. A receiver's memory budget
// divided by it is the number of contents it can hold.
const StoreIndexBytesPerContent = 160

// Errors of the ContentStore. The *Error types below match them with errors.Is.
var (
	ErrStoreFull       = errors.New("dedup: content store full")
	ErrContentMissing  = errors.New("dedup: content not in store")
	ErrContentConflict = errors.New("dedup: content id stored with different bytes")
	ErrDigestMismatch  = errors.New("dedup: content does not match its digest")
	ErrContentReleased = errors.New("dedup: content released")
	ErrStoreClosed     = errors.New("dedup: content store closed")
)

// StoreFullError reports a Put or Retain that would exceed the store's bound, or a slot
// file that could not take the page (Cause: the disk is full).
type StoreFullError struct {
	ID       ContentID
	Limit    int64 // the memory budget in bytes
	Capacity int   // contents the store may hold
	Used     int64 // bytes of pages held when the Put came
	Contents int   // contents held
	Pending  int   // ids retained but not stored yet
	Cause    error // the slot file's write error, if that was the cause
}

func (e *StoreFullError) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("dedup: content store full: content %d could not be written to the store's file (%v), %d contents held; free disk space on the data dir or lower receive --store-disk",
			e.ID, e.Cause, e.Contents)
	}
	return fmt.Sprintf("dedup: content store full: content %d: %d of %d contents held (%d more expected), %d bytes; the sender should plan within it, or raise receive --store-limit / --store-disk",
		e.ID, e.Contents, e.Capacity, e.Pending, e.Used)
}

func (e *StoreFullError) Is(target error) bool { return target == ErrStoreFull }

func (e *StoreFullError) Unwrap() error { return e.Cause }

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

// NewContentStore returns a store that keeps its pages in memory, bounded to limit bytes
// of page content (it holds limit/PageSize pages). d checks digests in PutVerified; it may
// be nil when the receiver does not re-check them.
func NewContentStore(limit int64, d *Digester) *ContentStore {
	s := newStore(limit, d)
	s.capacity = int(max(limit, 0) / PageSize)
	return s
}

// NewSlotStore returns a store that keeps its pages in f, at most diskLimit bytes of it,
// and its index in memory, at most memLimit bytes (StoreIndexBytesPerContent per content).
// The caller opened f (read-write, empty) and closes and removes it after Close.
func NewSlotStore(f SlotFile, memLimit, diskLimit int64, d *Digester) *ContentStore {
	s := newStore(memLimit, d)
	s.slots = f
	s.capacity = StoreCapacity(memLimit, diskLimit)
	return s
}

// StoreCapacity is the number of contents a slot store with these budgets holds, as
// NewSlotStore computes it.
func StoreCapacity(memLimit, diskLimit int64) int {
	return int(min(max(memLimit, 0)/StoreIndexBytesPerContent, max(diskLimit, 0)/PageSize, 1<<31-1))
}

func newStore(limit int64, d *Digester) *ContentStore {
	return &ContentStore{
		d:        d,
		limit:    limit,
		entries:  map[ContentID]*storeEntry{},
		byVM:     map[int][]ContentID{},
		released: map[ContentID]struct{}{},
		waiting:  map[ContentID]*storeWait{},
	}
}

// Capacity returns the number of contents the store may hold at once.
func (s *ContentStore) Capacity() int { return s.capacity }

// Put stores a copy of page under id, needed by vms. A Put of an id already stored with
// the same bytes only adds vms (retransmissions are harmless); with different bytes it
// fails with ErrContentConflict and changes nothing. A store at its capacity, or whose
// slot file cannot take the page, fails with ErrStoreFull (a *StoreFullError) and changes
// nothing.
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
	case e != nil && e.stored():
		same, err := s.sameBytes(e, page)
		if err != nil {
			return fmt.Errorf("dedup: content %d: reading the store's file: %w", id, err)
		}
		if !same {
			return fmt.Errorf("%w: content %d", ErrContentConflict, id)
		}
	case e == nil && s.held()+1 > s.capacity:
		return s.fullError(id, nil) // a retained id was counted when it was retained
	default:
		if err := s.store(e, id, page); err != nil {
			return err
		}
		if e == nil {
			e = s.entries[id]
		}
	}
	s.retain(id, e, vms)
	return nil
}

// store writes page for id into e (nil: a new entry). s.mu is held.
func (s *ContentStore) store(e *storeEntry, id ContentID, page []byte) error {
	stored := storeEntry{slot: -1}
	if s.slots == nil {
		stored.page = bytes.Clone(page)
	} else {
		slot := s.next
		if n := len(s.free); n > 0 {
			slot = s.free[n-1]
		}
		if _, err := s.slots.WriteAt(page, int64(slot)*PageSize); err != nil {
			return s.fullError(id, err)
		}
		if n := len(s.free); n > 0 && s.free[n-1] == slot {
			s.free = s.free[:n-1]
		} else {
			s.next++
		}
		stored.slot = slot
	}
	if e == nil {
		e = &storeEntry{slot: -1}
		s.entries[id] = e
	} else {
		s.pending--
	}
	e.page, e.slot = stored.page, stored.slot
	s.used += PageSize
	s.wake(id)
	return nil
}

// sameBytes reports whether e's stored page equals page. s.mu is held: the slot is not
// reused meanwhile.
func (s *ContentStore) sameBytes(e *storeEntry, page []byte) (bool, error) {
	if s.slots == nil {
		return bytes.Equal(e.page, page), nil
	}
	var buf [PageSize]byte
	if _, err := s.slots.ReadAt(buf[:], int64(e.slot)*PageSize); err != nil {
		return false, err
	}
	return bytes.Equal(buf[:], page), nil
}

// held is the contents stored or promised. s.mu is held.
func (s *ContentStore) held() int { return int(s.used/PageSize) + s.pending }

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
		if s.held()+1 > s.capacity {
			return s.fullError(id, nil)
		}
		e = &storeEntry{slot: -1}
		s.entries[id] = e
		s.pending++
	}
	s.retain(id, e, vms)
	return nil
}

func (s *ContentStore) fullError(id ContentID, cause error) error {
	return &StoreFullError{ID: id, Limit: s.limit, Capacity: s.capacity, Used: s.used, Contents: len(s.entries) - s.pending,
		Pending: s.pending, Cause: cause}
}

// retain adds vms to e's holders. s.mu is held.
func (s *ContentStore) retain(id ContentID, e *storeEntry, vms []int) {
	for _, vm := range vms {
		i, found := slices.BinarySearch(e.vms, int32(vm))
		if found {
			continue
		}
		e.vms = slices.Insert(e.vms, i, int32(vm))
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
		if i, found := slices.BinarySearch(e.vms, int32(vm)); found {
			e.vms = slices.Delete(e.vms, i, i+1)
		}
		if len(e.vms) > 0 {
			continue
		}
		if e.stored() {
			s.used -= PageSize
			freed++
			s.freeSlot(e)
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

// freeSlot returns e's slot for reuse, or leaves that to the last Get still reading it.
// s.mu is held.
func (s *ContentStore) freeSlot(e *storeEntry) {
	e.page = nil
	if s.slots == nil || e.slot < 0 {
		return
	}
	if e.readers > 0 {
		e.dead = true
		return
	}
	s.free = append(s.free, e.slot)
	e.slot = -1
}

// wake releases the waiters on id. s.mu is held.
func (s *ContentStore) wake(id ContentID) {
	if w := s.waiting[id]; w != nil {
		close(w.ch)
		delete(s.waiting, id)
	}
}

// Has reports whether the store holds content id now.
func (s *ContentStore) Has(id ContentID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[id]
	return !s.closed && e != nil && e.stored()
}

// Get returns a copy of the page stored under id; GetInto tells how it waits and fails.
func (s *ContentStore) Get(ctx context.Context, id ContentID, wait time.Duration) ([]byte, error) {
	page := make([]byte, PageSize)
	if err := s.GetInto(ctx, id, wait, page); err != nil {
		return nil, err
	}
	return page, nil
}

// GetInto reads the page stored under id into dst (PageSize bytes). If it has not arrived,
// GetInto waits for it up to wait (0: not at all) or until ctx ends, then fails with a
// *MissingContentError (ErrContentMissing). It fails at once with ErrContentReleased for a
// freed id and with ErrStoreClosed once the store is closed.
func (s *ContentStore) GetInto(ctx context.Context, id ContentID, wait time.Duration, dst []byte) error {
	if len(dst) != PageSize {
		return fmt.Errorf("dedup: GetInto of content %d into %d bytes, want %d", id, len(dst), PageSize)
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	s.mu.Lock()
	for {
		if s.closed {
			s.mu.Unlock()
			return ErrStoreClosed
		}
		if e := s.entries[id]; e != nil && e.stored() {
			return s.read(id, e, dst) // unlocks s.mu
		}
		if _, ok := s.released[id]; ok {
			s.mu.Unlock()
			return fmt.Errorf("%w: Get of content %d", ErrContentReleased, id)
		}
		if wait <= 0 {
			s.mu.Unlock()
			return &MissingContentError{ID: id, Waited: wait}
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
			if e := s.entries[id]; e != nil && e.stored() && !s.closed {
				return s.read(id, e, dst) // arrived as the wait ended
			}
			s.mu.Unlock()
			return &MissingContentError{ID: id, Waited: wait, Cause: cause}
		}
	}
}

// read copies stored entry e of id into dst. s.mu is held on entry and unlocked on return.
// A slot is read without the lock, pinned by e.readers: ReleaseVM leaves a slot being read
// to its last reader, so no Put can write other bytes into it meanwhile.
func (s *ContentStore) read(id ContentID, e *storeEntry, dst []byte) error {
	if s.slots == nil {
		copy(dst, e.page)
		s.mu.Unlock()
		return nil
	}
	e.readers++
	slot := e.slot
	s.mu.Unlock()
	_, err := s.slots.ReadAt(dst, int64(slot)*PageSize)
	s.mu.Lock()
	defer s.mu.Unlock()
	e.readers--
	if e.dead && e.readers == 0 {
		e.dead = false
		if !s.closed {
			s.free = append(s.free, e.slot)
		}
		e.slot = -1
	}
	switch {
	case s.closed:
		return ErrStoreClosed
	case err != nil:
		return fmt.Errorf("dedup: content %d: reading the store's file: %w", id, err)
	}
	return nil
}

// Close frees every content and wakes every waiter with ErrStoreClosed. The caller may
// close and remove a slot file once Close returns: Gets still reading it fail with
// ErrStoreClosed.
func (s *ContentStore) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for id := range s.waiting {
		s.wake(id)
	}
	s.entries, s.byVM, s.released, s.free = nil, nil, nil, nil
	s.used, s.pending = 0, 0
}

// StoreStats is a snapshot of a ContentStore.
type StoreStats struct {
	Contents int   // contents stored
	Pending  int   // ids retained but not stored yet
	Released int   // ids freed by ReleaseVM
	Used     int64 // bytes of stored pages
	Limit    int64 // the memory budget in bytes
	Capacity int   // contents the store may hold
	FileSize int64 // slot file: bytes the file spans (slots ever used × PageSize)
}

// Stats returns a snapshot of the store's counters.
func (s *ContentStore) Stats() StoreStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return StoreStats{Contents: len(s.entries) - s.pending, Pending: s.pending, Released: len(s.released), Used: s.used,
		Limit: s.limit, Capacity: s.capacity, FileSize: int64(s.next) * PageSize}
}
