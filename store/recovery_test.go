package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// brokenFiles lists the files moved aside next to path.
func brokenFiles(t *testing.T, path string) []string {
	t.Helper()
	m, err := filepath.Glob(path + ".broken-*")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// openRecovered opens a broken file and checks that it was moved aside,
// intact, and that the new store works from seq 1 (nothing of the old
// sequence could be read).
func openRecovered(t *testing.T, path string, clock func() time.Time) *Store {
	return openSalvaged(t, path, clock, 1)
}

// openSalvaged opens a broken file and checks that it was kept, intact,
// and that the new store's next events seq is nextSeq.
func openSalvaged(t *testing.T, path string, clock func() time.Time, nextSeq uint64) *Store {
	t.Helper()
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := openStore(t, path, &Options{Now: clock})
	rec := s.Recovered()
	if rec == nil {
		t.Fatal("Recovered() is nil after opening a broken file")
	}
	if rec.Reason == "" {
		t.Error("empty recovery reason")
	}
	moved, err := os.ReadFile(rec.MovedTo)
	if err != nil {
		t.Fatalf("moved file: %v", err)
	}
	if !bytes.Equal(moved, orig) {
		t.Error("the moved file differs from the broken one")
	}
	if r := mustAppend(t, s, Events, Normal, 20); r.Seq != nextSeq {
		t.Fatalf("new store: seq %d, want %d", r.Seq, nextSeq)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
	return s
}

func fixedClock() time.Time { return time.Date(2025, 3, 1, 8, 9, 10, 0, time.UTC) }

func TestBrokenGarbageMovedAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	garbage := bytes.Repeat([]byte("not a database, just bytes "), 1000)
	if err := os.WriteFile(path, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	s := openRecovered(t, path, fixedClock)
	if want := path + ".broken-20250301T080910Z"; s.Recovered().MovedTo != want {
		t.Fatalf("moved to %s, want %s", s.Recovered().MovedTo, want)
	}
}

func TestBrokenShortFilesMovedAside(t *testing.T) {
	for _, size := range []int{1, 100, 4096} {
		path := filepath.Join(t.TempDir(), "store.db")
		if err := os.WriteFile(path, make([]byte, size), 0o600); err != nil {
			t.Fatal(err)
		}
		openRecovered(t, path, fixedClock)
	}
}

func TestEmptyFileIsMovedAside(t *testing.T) {
	// A power cut right after the file was created, or a truncation, leaves it empty: a new
	// store is made, and Recovered says so (the sequence numbers start again).
	path := filepath.Join(t.TempDir(), "store.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := openStore(t, path, nil)
	rec := s.Recovered()
	if rec == nil || !strings.Contains(rec.Reason, "empty") {
		t.Fatalf("empty file not reported as recovered: %+v", rec)
	}
	if fi, err := os.Stat(rec.MovedTo); err != nil || fi.Size() != 0 {
		t.Fatalf("empty file not kept aside: %v", err)
	}
	mustAppend(t, s, Events, Normal, 10)
}

func TestBrokenTruncatedMovedAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	fill(t, s, Events, 3000, make([]byte, 500))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, keep := range []int64{64 << 10, 16 << 10} {
		p := filepath.Join(t.TempDir(), "store.db")
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data[:keep], 0o600); err != nil {
			t.Fatal(err)
		}
		openRecovered(t, p, fixedClock)
	}
}

func TestBrokenPagesFailCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	fill(t, s, Events, 2000, make([]byte, 300))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Overwrite data pages (past the two meta pages and the freelist) with
	// a page-sized pattern of plausible but wrong page headers.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, 4096)
	for i := range junk {
		junk[i] = byte(i * 7)
	}
	junk[8], junk[9] = 0x02, 0x00 // leaf page flag
	junk[10], junk[11] = 0x01, 0x00
	for off := int64(8 << 10); off < 200<<10; off += 4096 {
		if _, err := f.WriteAt(junk, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	// The meta pages and the counters survive: the sequence continues.
	s = openSalvaged(t, path, fixedClock, 2001)
	if !strings.Contains(s.Recovered().Reason, "consistency check failed") {
		t.Errorf("reason %q, want a failed consistency check", s.Recovered().Reason)
	}
}

func TestBrokenNamesDoNotCollide(t *testing.T) {
	// Without an RTC the clock can read the same at every boot.
	path := filepath.Join(t.TempDir(), "store.db")
	var moved []string
	for range 3 {
		if err := os.WriteFile(path, bytes.Repeat([]byte{0xAB}, 8192), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(path, &Options{Now: fixedClock})
		if err != nil {
			t.Fatal(err)
		}
		if s.Recovered() == nil {
			t.Fatal("not recovered")
		}
		moved = append(moved, s.Recovered().MovedTo)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	base := path + ".broken-20250301T080910Z"
	want := []string{base, base + "-2", base + "-3"}
	for i := range want {
		if moved[i] != want[i] {
			t.Fatalf("moved to %v, want %v", moved, want)
		}
	}
	// At most MaxBrokenFiles are kept: the oldest went.
	if got := brokenFiles(t, path); !slices.Equal(got, want[1:]) {
		t.Fatalf("broken files kept: %v, want %v", got, want[1:])
	}
	if err := verifyFile(path); err != nil {
		t.Fatal(err)
	}
}

func TestForeignDatabaseMovedAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	putRaw(t, path, []byte("something-else"), []byte("k"), []byte("v"))
	s := openRecovered(t, path, fixedClock)
	if !strings.Contains(s.Recovered().Reason, "not a station store") {
		t.Errorf("reason %q", s.Recovered().Reason)
	}
}

func TestUnknownFormatMovedAside(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	putRaw(t, path, bucketMeta, keyFormat, []byte{formatVersion + 1})
	s = openRecovered(t, path, fixedClock)
	if !strings.Contains(s.Recovered().Reason, "format") {
		t.Errorf("reason %q", s.Recovered().Reason)
	}
}

func TestSystemErrorsAreNotRecovered(t *testing.T) {
	if os.Geteuid() == 0 {
		// root opens the file whatever its mode: use a directory instead.
		path := filepath.Join(t.TempDir(), "store.db")
		if err := os.Mkdir(path, 0o700); err != nil {
			t.Fatal(err)
		}
		_, err := Open(path, nil)
		if err == nil || !strings.HasPrefix(err.Error(), "store: ") {
			t.Fatalf("Open of a directory: %v", err)
		}
		if len(brokenFiles(t, path)) != 0 {
			t.Fatal("a directory was moved aside")
		}
		return
	}
	path := filepath.Join(t.TempDir(), "store.db")
	if err := os.WriteFile(path, []byte("x"), 0o000); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, nil); err == nil {
		t.Fatal("Open of an unreadable file succeeded")
	}
	if len(brokenFiles(t, path)) != 0 {
		t.Fatal("an unreadable file was moved aside")
	}
}

func TestCountersRepairedAtOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		mustAppend(t, s, Events, Normal, 10)
	}
	s.Close()
	// Counters that lag behind the records (as a bug might leave them).
	putRaw(t, path, bucketMeta, counterKey(Events), encodeCounters(streamCounters{last: 2, depth: 0, bytes: 0}))

	s = openStore(t, path, nil)
	if s.Recovered() != nil {
		t.Fatal("repairable counters moved the file aside")
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if ev := st.Streams[Events]; ev.Depth != 5 || ev.LastSeq != 5 || ev.Bytes != 5*accounted(10) {
		t.Fatalf("repaired counters %+v", ev)
	}
	if r := mustAppend(t, s, Events, Normal, 10); r.Seq != 6 {
		t.Fatalf("seq %d after repair, want 6", r.Seq)
	}
}

func TestQuickCheckForLargeFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openStore(t, path, nil)
	fill(t, s, Events, 200, make([]byte, 100))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A CheckMaxBytes below the file size takes the quick path.
	s = openStore(t, path, &Options{CheckMaxBytes: 1})
	if s.Recovered() != nil {
		t.Fatal("quick check rejected a good file")
	}
	if recs := readAll(t, s, Events); len(recs) != 200 {
		t.Fatalf("%d records, want 200", len(recs))
	}
}

func TestCompactionShrinksFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openStore(t, path, nil)
	s.db.NoSync = true // the fill is set-up; compaction below syncs its own file
	fill(t, s, Events, 40_000, make([]byte, 500))
	s.db.NoSync = false
	if err := s.PutSetting("cmd/1", []byte("done")); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Respond(0, LedgerEntry{ID: "cmd-1"}, func(uint64) ([]byte, error) { return []byte(`{"ok":true}`), nil })
	if err != nil {
		t.Fatal(err)
	}
	if did, err := s.CompactIfWasteful(); err != nil || did {
		t.Fatalf("compaction with a full backlog: %t, %v", did, err)
	}
	// Drain all but the last 10.
	for after := uint64(0); ; {
		recs, err := s.Read(Events, after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 || recs[0].Seq > 40_000-10 {
			break
		}
		var seqs []uint64
		for _, r := range recs {
			if r.Seq <= 40_000-10 {
				seqs = append(seqs, r.Seq)
			}
		}
		if err := s.Delete(Events, seqs...); err != nil {
			t.Fatal(err)
		}
		after = recs[len(recs)-1].Seq
	}
	before, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if before.FileBytes < 16<<20 {
		t.Fatalf("set-up: file of %d bytes is too small to show compaction", before.FileBytes)
	}
	did, err := s.CompactIfWasteful()
	if err != nil || !did {
		t.Fatalf("CompactIfWasteful: %t, %v; want true", did, err)
	}
	after, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if after.FileBytes*4 > before.FileBytes {
		t.Fatalf("file %d bytes after compaction, %d before", after.FileBytes, before.FileBytes)
	}
	if !streamStatsEqual(after.Streams, before.Streams) || after.Bytes != before.Bytes {
		t.Fatalf("stats changed: %+v, before %+v", after.Streams, before.Streams)
	}
	if _, err := os.Stat(compactTemp(path)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file left: %v", err)
	}
	// Everything is still there and the store goes on.
	recs := readAll(t, s, Events)
	if len(recs) != 10 || recs[0].Seq != 40_000-9 {
		t.Fatalf("after compaction: %d records from %d", len(recs), recs[0].Seq)
	}
	if v, _ := s.GetSetting("cmd/1"); string(v) != "done" {
		t.Fatalf("setting after compaction: %q", v)
	}
	if e, err := s.Ledger("cmd-1"); err != nil || e == nil || !bytes.Equal(e.Response, resp.Payload) {
		t.Fatalf("ledger entry after compaction: %+v, %v", e, err)
	}
	if r := mustAppend(t, s, Events, Normal, 10); r.Seq != 40_001 {
		t.Fatalf("seq %d after compaction, want 40001", r.Seq)
	}
	if did, err := s.CompactIfWasteful(); err != nil || did {
		t.Fatalf("second compaction: %t, %v; want false", did, err)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
	// The file on disk is the compacted store, under its own name, locked.
	if _, err := Open(path, &Options{Timeout: 50 * time.Millisecond}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open of the compacted file: %v, want ErrLocked", err)
	}
}

func TestCompactionAtOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.db.NoSync = true // set-up only
	fill(t, s, Telemetry, 30_000, make([]byte, 500))
	s.db.NoSync = false
	var seqs []uint64
	for seq := uint64(1); seq <= 30_000; seq++ {
		seqs = append(seqs, seq)
	}
	if err := s.Delete(Telemetry, seqs...); err != nil {
		t.Fatal(err)
	}
	big, _ := s.Stats()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A stale temporary file from an interrupted compaction is removed.
	if err := os.WriteFile(compactTemp(path), []byte("stale"), 0o600); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, path, nil)
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.FileBytes*4 > big.FileBytes {
		t.Fatalf("file %d bytes after open, %d before", st.FileBytes, big.FileBytes)
	}
	if _, err := os.Stat(compactTemp(path)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale temporary file left: %v", err)
	}
	if r := mustAppend(t, s, Telemetry, Evictable, 10); r.Seq != 30_001 {
		t.Fatalf("seq %d after compaction at open, want 30001", r.Seq)
	}
}

func TestFileMode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	path := filepath.Join(dir, "store.db")
	openStore(t, path, nil)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("file mode %v, want no group or other access", fi.Mode().Perm())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm()&0o077 != 0 {
		t.Errorf("directory mode %v, want 0700", di.Mode().Perm())
	}
}

// TestCheckRedactsValues makes sure check messages never carry values.
func TestCheckRedactsValues(t *testing.T) {
	var kv bbolt.KVStringer = redactedKV{}
	if got := kv.ValueToString([]byte("6228480000000000000")); strings.Contains(got, "622848") { // synthetic
		t.Fatalf("value printed: %q", got)
	}
}
