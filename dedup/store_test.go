package dedup

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func TestStorePutGet(t *testing.T) { storeModes(t, testStorePutGet) }

func testStorePutGet(t *testing.T, mk storeMaker) {
	s := mk(t, 4, nil)
	p := pageOf(1)
	if err := s.Put(7, p, 0); err != nil {
		t.Fatal(err)
	}
	p[0] ^= 0xFF // the store holds a copy
	got, err := s.Get(context.Background(), 7, 0)
	if err != nil || !bytes.Equal(got, pageOf(1)) {
		t.Fatalf("Get = %v", err)
	}
	if err := s.Put(7, pageOf(1), 1); err != nil {
		t.Fatalf("same bytes again: %v", err)
	}
	if err := s.Put(7, pageOf(2)); !errors.Is(err, ErrContentConflict) {
		t.Fatalf("different bytes: err = %v", err)
	}
	if got, _ := s.Get(context.Background(), 7, 0); !bytes.Equal(got, pageOf(1)) {
		t.Fatal("a conflicting Put changed the content")
	}
	if _, err := s.Get(context.Background(), 8, 0); !errors.Is(err, ErrContentMissing) {
		t.Fatalf("missing: err = %v", err)
	}
	if err := s.Put(9, make([]byte, 100)); err == nil {
		t.Fatal("short page accepted")
	}
	if st := s.Stats(); st.Contents != 1 || st.Used != PageSize || st.Capacity != 4 {
		t.Fatalf("stats %+v", st)
	}
}

func TestStoreFull(t *testing.T) { storeModes(t, testStoreFull) }

func testStoreFull(t *testing.T, mk storeMaker) {
	s := mk(t, 3, nil)
	for id := range ContentID(2) {
		if err := s.Put(id, pageOf(int(id)+1), 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Retain(10, 1); err != nil { // reserves the third page
		t.Fatal(err)
	}
	err := s.Put(3, pageOf(9), 0)
	var full *StoreFullError
	if !errors.Is(err, ErrStoreFull) || !errors.As(err, &full) {
		t.Fatalf("err = %v, want ErrStoreFull", err)
	}
	if full.ID != 3 || full.Capacity != 3 || full.Used != 2*PageSize || full.Contents != 2 || full.Pending != 1 {
		t.Fatalf("full error %+v", full)
	}
	if err := s.Retain(11, 1); !errors.Is(err, ErrStoreFull) {
		t.Fatalf("Retain beyond the bound: err = %v", err)
	}
	// The reserved id still fits, and same-bytes Puts of stored ids are fine when full.
	if err := s.Put(10, pageOf(10)); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(0, pageOf(1), 2); err != nil {
		t.Fatal(err)
	}
	// Releasing makes room.
	if n := s.ReleaseVM(1); n != 1 {
		t.Fatalf("ReleaseVM(1) freed %d", n)
	}
	if err := s.Put(3, pageOf(9), 0); err != nil {
		t.Fatal(err)
	}
}

func TestStoreVerified(t *testing.T) { storeModes(t, testStoreVerified) }

func testStoreVerified(t *testing.T, mk storeMaker) {
	d := testDigester()
	s := mk(t, 4, d)
	p := pageOf(3)
	if err := s.PutVerified(1, p, d.Sum(pageOf(4)), 0); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("err = %v", err)
	}
	if _, err := s.Get(context.Background(), 1, 0); !errors.Is(err, ErrContentMissing) {
		t.Fatal("a mismatching page was stored")
	}
	if err := s.PutVerified(1, p, d.Sum(p), 0); err != nil {
		t.Fatal(err)
	}
	if err := mk(t, 1, nil).PutVerified(1, p, d.Sum(p)); err == nil {
		t.Fatal("PutVerified without a Digester succeeded")
	}
}

func TestStoreRelease(t *testing.T) { storeModes(t, testStoreRelease) }

func testStoreRelease(t *testing.T, mk storeMaker) {
	s := mk(t, 8, nil)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.Put(1, pageOf(1), 0, 1))
	must(s.Put(2, pageOf(2), 1))
	must(s.Retain(2, 1, 1)) // duplicates are one reference
	must(s.Retain(3, 2))    // before the content arrives
	must(s.Put(4, pageOf(4)))
	if n := s.ReleaseVM(1); n != 1 {
		t.Fatalf("ReleaseVM(1) freed %d, want 1 (content 2)", n)
	}
	if _, err := s.Get(context.Background(), 2, time.Hour); !errors.Is(err, ErrContentReleased) {
		t.Fatalf("Get of a freed content: err = %v", err)
	}
	if err := s.Put(2, pageOf(2), 0); !errors.Is(err, ErrContentReleased) {
		t.Fatalf("Put of a freed content: err = %v", err)
	}
	if _, err := s.Get(context.Background(), 1, 0); err != nil {
		t.Fatalf("content 1 still needed by VM 0: %v", err)
	}
	must(s.Put(3, pageOf(3)))
	if n := s.ReleaseVM(2); n != 1 {
		t.Fatalf("ReleaseVM(2) freed %d", n)
	}
	if n := s.ReleaseVM(0); n != 1 {
		t.Fatalf("ReleaseVM(0) freed %d", n)
	}
	if n := s.ReleaseVM(0); n != 0 {
		t.Fatalf("second ReleaseVM(0) freed %d", n)
	}
	// Content 4 was stored for no VM: it stays until Close.
	if st := s.Stats(); st.Contents != 1 || st.Used != PageSize || st.Pending != 0 || st.Released != 3 {
		t.Fatalf("stats %+v", st)
	}
	s.Close()
	if _, err := s.Get(context.Background(), 4, 0); !errors.Is(err, ErrStoreClosed) {
		t.Fatalf("Get after Close: err = %v", err)
	}
}

func TestStoreWaitsForInFlight(t *testing.T) {
	storeModes(t, testStoreWaitsForInFlight)
}

func testStoreWaitsForInFlight(t *testing.T, mk storeMaker) {
	synctest.Test(t, func(t *testing.T) {
		s := mk(t, 8, nil)
		ctx := context.Background()

		// Arrives within the wait.
		done := make(chan error)
		go func() {
			got, err := s.Get(ctx, 5, 10*time.Second)
			if err == nil && !bytes.Equal(got, pageOf(5)) {
				err = errors.New("wrong bytes")
			}
			done <- err
		}()
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if err := s.Put(5, pageOf(5), 0); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}

		// Never arrives: the wait bound ends it.
		start := time.Now()
		_, err := s.Get(ctx, 6, 2*time.Second)
		var missing *MissingContentError
		if !errors.As(err, &missing) || missing.ID != 6 || missing.Waited != 2*time.Second || missing.Cause != nil {
			t.Fatalf("err = %v", err)
		}
		if waited := time.Since(start); waited != 2*time.Second {
			t.Fatalf("waited %v on the fake clock", waited)
		}

		// The context's deadline comes first.
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if _, err := s.Get(cctx, 6, time.Minute); !errors.Is(err, ErrContentMissing) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}

		// Released and closed wake waiters at once.
		if err := s.Retain(7, 3); err != nil {
			t.Fatal(err)
		}
		go func() { _, err := s.Get(ctx, 7, time.Hour); done <- err }()
		go func() { _, err := s.Get(ctx, 8, time.Hour); done <- err }()
		synctest.Wait()
		s.ReleaseVM(3)
		if err := <-done; !errors.Is(err, ErrContentReleased) {
			t.Fatalf("released: err = %v", err)
		}
		s.Close()
		if err := <-done; !errors.Is(err, ErrStoreClosed) {
			t.Fatalf("closed: err = %v", err)
		}
		if len(s.waiting) != 0 {
			t.Fatalf("%d waiters left behind", len(s.waiting))
		}
	})
}

// TestStoreNeverHandsOutWrongBytes races writers that store different bytes under the
// same ids against readers waiting for them: every id ends with exactly one winner, and
// every reader saw the winner's bytes.
func TestStoreNeverHandsOutWrongBytes(t *testing.T) { storeModes(t, testStoreNeverHandsOutWrongBytes) }

func testStoreNeverHandsOutWrongBytes(t *testing.T, mk storeMaker) {
	const ids = 200
	s := mk(t, ids, nil)
	version := func(w, id int) []byte { return pageOf(1 + id*2 + w) }
	var wins [2][ids]bool
	seen := make([][ids][]byte, 2)
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			for id := range ids {
				err := s.Put(ContentID(id), version(w, id), w)
				if err == nil {
					wins[w][id] = true
				} else if !errors.Is(err, ErrContentConflict) {
					t.Errorf("Put: %v", err)
				}
			}
		})
		wg.Go(func() {
			for id := ids - 1; id >= 0; id-- {
				got, err := s.Get(context.Background(), ContentID(id), time.Minute)
				if err != nil {
					t.Errorf("Get: %v", err)
					return
				}
				seen[w][id] = got
			}
		})
	}
	wg.Wait()
	for id := range ids {
		// Both may "win" only if they stored the same bytes, which they never do.
		if wins[0][id] == wins[1][id] {
			t.Fatalf("id %d: wins %v %v", id, wins[0][id], wins[1][id])
		}
		winner := 0
		if wins[1][id] {
			winner = 1
		}
		for r := range 2 {
			if !bytes.Equal(seen[r][id], version(winner, id)) {
				t.Fatalf("id %d: reader %d saw bytes other than the winner's", id, r)
			}
		}
	}
}
