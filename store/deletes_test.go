package store

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// crashCopy copies the file of an open store as a crash would leave it
// (every commit is in the file, nothing of memory) and opens the copy.
func crashCopy(t *testing.T, s *Store) *Store {
	t.Helper()
	b, err := os.ReadFile(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "crash.db")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return openStore(t, p, &Options{DeleteDelay: -1})
}

// TestDeferredDeletes: a delete of an acknowledged record is seen at once
// by Read and Stats, rides in the next append's commit, and a crash before
// that commit brings back at most maxPendingDeletes records.
func TestDeferredDeletes(t *testing.T) {
	s := openStore(t, "", &Options{DeleteDelay: time.Hour})
	for range 5 {
		mustAppend(t, s, Events, Normal, 100)
	}
	if err := s.Delete(Events, 1, 2, 3); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, s, Events)
	if len(got) != 2 || got[0].Seq != 4 {
		t.Fatalf("read after delete: seqs %v, want [4 5]", seqsOf(got))
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if ev := st.Streams[Events]; ev.Depth != 2 || ev.Bytes != 2*accounted(100) || ev.LastSeq != 5 {
		t.Fatalf("stats after delete: %+v", ev)
	}
	// Not committed yet: a crash now sends 1..3 again.
	if c := crashCopy(t, s); len(readAll(t, c, Events)) != 5 {
		t.Fatalf("the deletes were committed on their own")
	}
	// The next append carries them.
	mustAppend(t, s, Events, Normal, 100)
	if c := crashCopy(t, s); len(readAll(t, c, Events)) != 3 {
		t.Fatalf("the deletes did not ride in the append's commit")
	}

	// Past the bound, a delete commits at once, with what is pending.
	for range maxPendingDeletes + 10 {
		mustAppend(t, s, Telemetry, Evictable, 10)
	}
	for seq := uint64(1); seq <= maxPendingDeletes; seq++ {
		if err := s.Delete(Telemetry, seq); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(readAll(t, crashCopy(t, s), Telemetry)); n != maxPendingDeletes+10 {
		t.Fatalf("%d telemetry records after a crash, want %d (deletes pending)", n, maxPendingDeletes+10)
	}
	if err := s.Delete(Telemetry, maxPendingDeletes+1); err != nil {
		t.Fatal(err)
	}
	if n := len(readAll(t, crashCopy(t, s), Telemetry)); n != 9 {
		t.Fatalf("%d telemetry records after a crash past the bound, want 9", n)
	}

	// Inbox deletes are never deferred.
	mustAppend(t, s, Inbox, Critical, 10)
	if err := s.Delete(Inbox, 1); err != nil {
		t.Fatal(err)
	}
	if n := len(readAll(t, crashCopy(t, s), Inbox)); n != 0 {
		t.Fatalf("an inbox delete was deferred")
	}

	// Close commits what is pending.
	if err := s.Delete(Events, 4, 5, 6); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openStore(t, s.Path(), nil)
	if got := readAll(t, s2, Events); len(got) != 0 {
		t.Fatalf("events after Close: %v, want none", seqsOf(got))
	}
}

// TestDeferredDeletesTimer: deletes with nothing to ride in are committed
// once the oldest has waited DeleteDelay.
func TestDeferredDeletesTimer(t *testing.T) {
	s := openStore(t, "", &Options{DeleteDelay: 20 * time.Millisecond})
	mustAppend(t, s, Events, Normal, 100)
	if err := s.Delete(Events, 1); err != nil {
		t.Fatal(err)
	}
	// The timer's commit is seen only in the file: poll it, bounded.
	deadline := time.Now().Add(10 * time.Second)
	for len(readAll(t, crashCopy(t, s), Events)) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the pending delete was not committed by the timer")
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.pending.mu.Lock()
	n, timer := s.pending.n, s.pending.timer
	s.pending.mu.Unlock()
	if n != 0 || timer != nil {
		t.Fatalf("after the timer's commit: %d pending, timer %v", n, timer)
	}
}
