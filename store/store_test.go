package store

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

func TestSeqGapFreeAcrossReopenAndDeleteAll(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openStore(t, path, nil)
	for want := uint64(1); want <= 5; want++ {
		if r := mustAppend(t, s, Events, Normal, 40); r.Seq != want {
			t.Fatalf("seq %d, want %d", r.Seq, want)
		}
	}
	if r := mustAppend(t, s, Telemetry, Evictable, 40); r.Seq != 1 {
		t.Fatalf("telemetry has its own sequence: seq %d, want 1", r.Seq)
	}
	if err := s.Delete(Events, 1, 2, 3, 4, 5); err != nil {
		t.Fatal(err)
	}
	if r := mustAppend(t, s, Events, Normal, 40); r.Seq != 6 {
		t.Fatalf("after deleting everything: seq %d, want 6", r.Seq)
	}
	if err := s.Delete(Events, 6); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, path, nil)
	if r := mustAppend(t, s, Events, Normal, 40); r.Seq != 7 {
		t.Fatalf("after reopen of an empty stream: seq %d, want 7", r.Seq)
	}
	if r := mustAppend(t, s, Telemetry, Evictable, 40); r.Seq != 2 {
		t.Fatalf("telemetry after reopen: seq %d, want 2", r.Seq)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Streams[Events]; got.LastSeq != 7 || got.Depth != 1 {
		t.Fatalf("events stats %+v, want LastSeq 7 Depth 1", got)
	}
}

func TestReadOrderAndPaging(t *testing.T) {
	clock := newTestClock()
	path := filepath.Join(t.TempDir(), "store.db")
	s := openStore(t, path, &Options{Now: clock.Now})
	var appended []Record
	for range 25 {
		appended = append(appended, mustAppend(t, s, Events, Normal, 30))
		mustAppend(t, s, Responses, Critical, 30) // another stream, interleaved
	}
	// Reopen: what is read back comes from the file.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, path, &Options{Now: clock.Now})

	var got []Record
	var after uint64
	pages := 0
	for {
		recs, err := s.Read(Events, after, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			break
		}
		if len(recs) > 10 {
			t.Fatalf("page of %d records, max 10", len(recs))
		}
		pages++
		got = append(got, recs...)
		after = recs[len(recs)-1].Seq
	}
	if pages != 3 {
		t.Errorf("%d pages, want 3 (10+10+5)", pages)
	}
	if len(got) != len(appended) {
		t.Fatalf("read %d records, want %d", len(got), len(appended))
	}
	for i, r := range got {
		w := appended[i]
		if r.Stream != Events || r.Seq != w.Seq || !bytes.Equal(r.Payload, w.Payload) || !r.Added.Equal(w.Added) {
			t.Fatalf("record %d: got {%s %d %q %v}, want {%s %d %q %v}", i,
				r.Stream, r.Seq, r.Payload, r.Added, w.Stream, w.Seq, w.Payload, w.Added)
		}
		if !bytes.HasPrefix(r.Payload, fmt.Appendf(nil, "%s:%d:", Events, r.Seq)) {
			t.Fatalf("record %d holds payload %q", r.Seq, r.Payload)
		}
	}
	// Added comes from the injected clock, strictly increasing here.
	for i := 1; i < len(got); i++ {
		if !got[i].Added.After(got[i-1].Added) {
			t.Fatalf("Added not increasing at %d: %v then %v", i, got[i-1].Added, got[i].Added)
		}
	}

	// after in the middle, after past the end.
	recs, err := s.Read(Events, 20, 100)
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{21, 22, 23, 24, 25}; !slices.Equal(seqsOf(recs), want) {
		t.Fatalf("Read after 20: seqs %v, want %v", seqsOf(recs), want)
	}
	if recs, err := s.Read(Events, 25, 10); err != nil || len(recs) != 0 {
		t.Fatalf("Read past the end: %d records, %v", len(recs), err)
	}
	// The payload is a copy: changing it changes nothing stored.
	recs[0].Payload[0] = '#'
	again, err := s.Read(Events, 20, 1)
	if err != nil {
		t.Fatal(err)
	}
	if again[0].Payload[0] == '#' {
		t.Fatal("Read returned memory shared with the store")
	}
}

func TestDeleteBatch(t *testing.T) {
	s := openStore(t, "", nil)
	for range 10 {
		mustAppend(t, s, Events, Normal, 50)
	}
	before, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	// Out of order, with duplicates and seqs never assigned.
	if err := s.Delete(Events, 7, 1, 3, 3, 99, 0, 5); err != nil {
		t.Fatal(err)
	}
	recs, err := s.Read(Events, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{2, 4, 6, 8, 9, 10}; !slices.Equal(seqsOf(recs), want) {
		t.Fatalf("left %v, want %v", seqsOf(recs), want)
	}
	after, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	ev := after.Streams[Events]
	if ev.Depth != 6 || ev.Bytes != 6*accounted(50) || ev.LastSeq != 10 {
		t.Fatalf("events after delete %+v, want depth 6, bytes %d, last 10", ev, 6*accounted(50))
	}
	if after.Bytes != before.Bytes-4*accounted(50) {
		t.Fatalf("total bytes %d, want %d", after.Bytes, before.Bytes-4*accounted(50))
	}
	// Nothing to delete, and no seqs at all, are fine.
	if err := s.Delete(Events, 1, 3); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(Events); err != nil {
		t.Fatal(err)
	}
	// Deleting from one stream leaves the others alone.
	mustAppend(t, s, Responses, Critical, 10)
	if err := s.Delete(Responses, 2); err != nil {
		t.Fatal(err)
	}
	if recs, _ := s.Read(Responses, 0, 10); len(recs) != 1 {
		t.Fatalf("responses: %d records, want 1", len(recs))
	}
}

// capOpts gives a store whose cap holds exactly ten 100-byte payloads
// (132 accounted bytes each) and whose reserve is MinReserve.
func capOpts() *Options { return &Options{MaxBytes: 10 * accounted(100)} }

func TestCapTelemetryEvictedOldestFirst(t *testing.T) {
	s := openStore(t, "", capOpts())
	for range 10 {
		mustAppend(t, s, Telemetry, Evictable, 100)
	}
	for i := range 3 {
		r := mustAppend(t, s, Telemetry, Evictable, 100)
		if r.Seq != uint64(11+i) {
			t.Fatalf("seq %d, want %d", r.Seq, 11+i)
		}
	}
	recs, err := s.Read(Telemetry, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{4, 5, 6, 7, 8, 9, 10, 11, 12, 13}; !slices.Equal(seqsOf(recs), want) {
		t.Fatalf("telemetry left %v, want %v (oldest evicted first)", seqsOf(recs), want)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Evicted != 3 || st.Refused != 0 || st.Bytes != st.MaxBytes {
		t.Fatalf("stats: evicted %d refused %d bytes %d/%d, want 3, 0, full", st.Evicted, st.Refused, st.Bytes, st.MaxBytes)
	}
	// A bigger record evicts as many as it needs.
	mustAppend(t, s, Telemetry, Evictable, 250) // 282 bytes: three records of 132 go
	recs, _ = s.Read(Telemetry, 0, 100)
	if want := []uint64{7, 8, 9, 10, 11, 12, 13, 14}; !slices.Equal(seqsOf(recs), want) {
		t.Fatalf("telemetry left %v, want %v", seqsOf(recs), want)
	}
}

func TestCapNormalEvictsTelemetryFirst(t *testing.T) {
	s := openStore(t, "", capOpts())
	for range 6 {
		mustAppend(t, s, Events, Normal, 100)
	}
	for range 4 {
		mustAppend(t, s, Telemetry, Evictable, 100)
	}
	// Full: a card record evicts the oldest telemetry rather than being
	// refused.
	for range 4 {
		mustAppend(t, s, Events, Normal, 100)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Streams[Telemetry].Depth != 0 || st.Streams[Events].Depth != 10 || st.Evicted != 4 {
		t.Fatalf("telemetry %d, events %d, evicted %d; want 0, 10, 4",
			st.Streams[Telemetry].Depth, st.Streams[Events].Depth, st.Evicted)
	}
	// Now telemetry has no room of its own: it is refused like the rest.
	_, err = s.Append(Telemetry, Evictable, func(uint64) ([]byte, error) { return make([]byte, 10), nil })
	if !errors.Is(err, ErrFull) {
		t.Fatalf("telemetry on a store full of events: %v, want ErrFull", err)
	}
}

func TestCapNormalRefusedThenAcceptedAfterDelete(t *testing.T) {
	s := openStore(t, "", capOpts())
	for range 10 {
		mustAppend(t, s, Events, Normal, 100)
	}
	for i := range 3 {
		_, err := s.Append(Events, Normal, func(seq uint64) ([]byte, error) { return payloadFor(Events, seq, 100), nil })
		if !errors.Is(err, ErrFull) {
			t.Fatalf("append %d to a full store: %v, want ErrFull", i, err)
		}
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Refused != 3 || st.Streams[Events].Depth != 10 || st.Streams[Events].LastSeq != 10 {
		t.Fatalf("refused %d, depth %d, last seq %d; want 3, 10, 10",
			st.Refused, st.Streams[Events].Depth, st.Streams[Events].LastSeq)
	}
	// Nothing recorded was lost.
	if recs := readAll(t, s, Events); len(recs) != 10 {
		t.Fatalf("%d records after refusals, want 10", len(recs))
	}
	if err := s.Delete(Events, 1, 2); err != nil {
		t.Fatal(err)
	}
	for _, want := range []uint64{11, 12} {
		if r := mustAppend(t, s, Events, Normal, 100); r.Seq != want {
			t.Fatalf("seq %d after refusals, want %d (refusals use no seq)", r.Seq, want)
		}
	}
	if _, err := s.Append(Events, Normal, func(seq uint64) ([]byte, error) { return payloadFor(Events, seq, 100), nil }); !errors.Is(err, ErrFull) {
		t.Fatalf("full again: %v, want ErrFull", err)
	}
}

func TestCapCriticalUsesReserve(t *testing.T) {
	s := openStore(t, "", capOpts())
	for range 10 {
		mustAppend(t, s, Events, Normal, 100)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Reserve != MinReserve {
		t.Fatalf("reserve %d, want %d", st.Reserve, MinReserve)
	}
	// The reserve takes Critical records a Normal one could not follow.
	const payload = 1000
	n := int(st.Reserve / accounted(payload))
	for i := range n {
		if _, err := s.Append(Responses, Critical, func(uint64) ([]byte, error) { return make([]byte, payload), nil }); err != nil {
			t.Fatalf("critical append %d of %d: %v", i, n, err)
		}
	}
	if _, err := s.Append(Events, Normal, func(uint64) ([]byte, error) { return make([]byte, 1), nil }); !errors.Is(err, ErrFull) {
		t.Fatalf("normal append in the reserve: %v, want ErrFull", err)
	}
	if _, err := s.Append(Responses, Critical, func(uint64) ([]byte, error) { return make([]byte, payload), nil }); !errors.Is(err, ErrFull) {
		t.Fatalf("critical append past the reserve: %v, want ErrFull", err)
	}
	st, _ = s.Stats()
	if st.Bytes > st.MaxBytes+st.Reserve || st.Bytes <= st.MaxBytes {
		t.Fatalf("bytes %d, want in (%d, %d]", st.Bytes, st.MaxBytes, st.MaxBytes+st.Reserve)
	}
	if st.Refused != 2 {
		t.Fatalf("refused %d, want 2", st.Refused)
	}
}

func TestCapCriticalEvictsTelemetryBeforeReserve(t *testing.T) {
	s := openStore(t, "", capOpts())
	for range 9 {
		mustAppend(t, s, Events, Normal, 100)
	}
	mustAppend(t, s, Telemetry, Evictable, 100)
	mustAppend(t, s, Responses, Critical, 100)
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Streams[Telemetry].Depth != 0 || st.Bytes != st.MaxBytes {
		t.Fatalf("telemetry depth %d, bytes %d/%d: telemetry should make room before the reserve",
			st.Streams[Telemetry].Depth, st.Bytes, st.MaxBytes)
	}
}

func TestBuildErrorConsumesNoSeq(t *testing.T) {
	s := openStore(t, "", nil)
	mustAppend(t, s, Events, Normal, 10)
	var seen []uint64
	_, err := s.Append(Events, Normal, func(seq uint64) ([]byte, error) {
		seen = append(seen, seq)
		return nil, errBuild
	})
	if !errors.Is(err, errBuild) {
		t.Fatalf("Append: %v, want the build error", err)
	}
	if !slices.Equal(seen, []uint64{2}) {
		t.Fatalf("build saw seqs %v, want [2]", seen)
	}
	if r := mustAppend(t, s, Events, Normal, 10); r.Seq != 2 {
		t.Fatalf("seq %d after a failed build, want 2", r.Seq)
	}
	// Too large a payload is refused the same way.
	_, err = s.Append(Events, Normal, func(uint64) ([]byte, error) { return make([]byte, MaxPayload+1), nil })
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized payload: %v, want ErrTooLarge", err)
	}
	if r := mustAppend(t, s, Events, Normal, 10); r.Seq != 3 {
		t.Fatalf("seq %d after an oversized payload, want 3", r.Seq)
	}
	if recs := readAll(t, s, Events); !slices.Equal(seqsOf(recs), []uint64{1, 2, 3}) {
		t.Fatalf("stored %v, want [1 2 3]", seqsOf(recs))
	}
}

func TestBuildPanicReachesCaller(t *testing.T) {
	s := openStore(t, "", nil)
	func() {
		defer func() {
			if p := recover(); p != "boom" {
				t.Fatalf("recovered %v, want the build's panic", p)
			}
		}()
		s.Append(Events, Normal, func(uint64) ([]byte, error) { panic("boom") })
		t.Fatal("Append returned after its build panicked")
	}()
	if r := mustAppend(t, s, Events, Normal, 10); r.Seq != 1 {
		t.Fatalf("seq %d after a panicking build, want 1", r.Seq)
	}
}

func TestInvalidArguments(t *testing.T) {
	s := openStore(t, "", nil)
	build := func(uint64) ([]byte, error) { return []byte("x"), nil }
	cases := []struct {
		name string
		err  error
	}{
		{"unknown stream", func() error { _, err := s.Append("nope", Normal, build); return err }()},
		{"evictable event", func() error { _, err := s.Append(Events, Evictable, build); return err }()},
		{"unknown class", func() error { _, err := s.Append(Events, Class(7), build); return err }()},
		{"nil build", func() error { _, err := s.Append(Events, Normal, nil); return err }()},
		{"read max 0", func() error { _, err := s.Read(Events, 0, 0); return err }()},
		{"read unknown stream", func() error { _, err := s.Read("nope", 0, 1); return err }()},
		{"delete unknown stream", s.Delete("nope", 1)},
	}
	for _, c := range cases {
		if c.err == nil || !strings.HasPrefix(c.err.Error(), "store: ") {
			t.Errorf("%s: error %v, want a store: error", c.name, c.err)
		}
	}
	if st, _ := s.Stats(); st.Streams[Events].LastSeq != 0 {
		t.Fatalf("invalid appends used seqs: last %d", st.Streams[Events].LastSeq)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "x.db"), &Options{MaxBytes: -1}); err == nil {
		t.Error("Open with negative MaxBytes succeeded")
	}
}

func TestConcurrentAppendsUniqueGapFree(t *testing.T) {
	s := openStore(t, "", nil)
	const workers, per = 32, 40
	var mu sync.Mutex
	got := map[Stream][]uint64{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				st := streams[(w+i)%len(streams)]
				fail := (w*per+i)%7 == 0 // some builds fail: they must leave no gap
				r, err := s.Append(st, classOf(st), func(seq uint64) ([]byte, error) {
					if fail {
						return nil, errBuild
					}
					return payloadFor(st, seq, 64), nil
				})
				if fail {
					if !errors.Is(err, errBuild) {
						t.Errorf("failing build: %v", err)
					}
					continue
				}
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				got[st] = append(got[st], r.Seq)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	total := 0
	for _, st := range streams {
		seqs := got[st]
		slices.Sort(seqs)
		for i, seq := range seqs {
			if seq != uint64(i+1) {
				t.Fatalf("stream %s: seqs not 1..n without gaps or repeats: %v", st, seqs)
			}
		}
		stored := readAll(t, s, st)
		if !slices.Equal(seqsOf(stored), seqs) {
			t.Fatalf("stream %s: stored %v, appended %v", st, seqsOf(stored), seqs)
		}
		for _, r := range stored {
			if !bytes.HasPrefix(r.Payload, fmt.Appendf(nil, "%s:%d:", st, r.Seq)) {
				t.Fatalf("stream %s seq %d holds %q: built with another seq", st, r.Seq, r.Payload)
			}
		}
		total += len(seqs)
	}
	if want := workers*per - (workers*per+6)/7; total != want {
		t.Fatalf("%d records stored, want %d", total, want)
	}
}

func TestStatsAccurate(t *testing.T) {
	clock := newTestClock()
	path := filepath.Join(t.TempDir(), "store.db")
	s := openStore(t, path, &Options{MaxBytes: 1 << 20, Now: clock.Now})
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Bytes != 0 || st.MaxBytes != 1<<20 || st.Reserve != MinReserve || len(st.Streams) != len(streams) {
		t.Fatalf("empty store stats %+v", st)
	}
	for _, ss := range st.Streams {
		if ss != (StreamStats{}) {
			t.Fatalf("empty stream stats %+v", ss)
		}
	}
	first := mustAppend(t, s, Events, Normal, 100)
	mustAppend(t, s, Events, Normal, 200)
	mustAppend(t, s, Events, Normal, 300)
	mustAppend(t, s, Telemetry, Evictable, 50)
	if err := s.Delete(Events, first.Seq); err != nil {
		t.Fatal(err)
	}
	st, err = s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	ev := st.Streams[Events]
	recs, _ := s.Read(Events, 0, 1)
	if ev.Depth != 2 || ev.Bytes != accounted(200)+accounted(300) || ev.LastSeq != 3 || !ev.Oldest.Equal(recs[0].Added) {
		t.Fatalf("events %+v, want depth 2, bytes %d, last 3, oldest %v", ev, accounted(200)+accounted(300), recs[0].Added)
	}
	if te := st.Streams[Telemetry]; te.Depth != 1 || te.Bytes != accounted(50) || te.LastSeq != 1 {
		t.Fatalf("telemetry %+v", te)
	}
	if st.Bytes != accounted(200)+accounted(300)+accounted(50) {
		t.Fatalf("total %d", st.Bytes)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.FileBytes != fi.Size() || st.FileBytes == 0 {
		t.Fatalf("file bytes %d, file is %d", st.FileBytes, fi.Size())
	}
	// Counters persist; the since-Open counters restart.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, path, &Options{MaxBytes: 1 << 20, Now: clock.Now})
	st2, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if !streamStatsEqual(st.Streams, st2.Streams) || st2.Bytes != st.Bytes {
		t.Fatalf("after reopen %+v, before %+v", st2.Streams, st.Streams)
	}
}

func streamStatsEqual(a, b map[Stream]StreamStats) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || v.Depth != w.Depth || v.Bytes != w.Bytes || v.LastSeq != w.LastSeq || !v.Oldest.Equal(w.Oldest) {
			return false
		}
	}
	return true
}

func TestSettingsRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openStore(t, path, nil)
	if v, err := s.GetSetting("cmd/42"); v != nil || err != nil {
		t.Fatalf("absent setting: %q, %v; want nil, nil", v, err)
	}
	val := []byte(`{"ok":true}`)
	if err := s.PutSetting("cmd/42", val); err != nil {
		t.Fatal(err)
	}
	val[0] = '#' // the store keeps its own copy
	if err := s.PutSetting("empty", []byte{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, path, nil)
	if v, err := s.GetSetting("cmd/42"); err != nil || string(v) != `{"ok":true}` {
		t.Fatalf("after reopen: %q, %v", v, err)
	}
	if v, err := s.GetSetting("empty"); err != nil || v == nil || len(v) != 0 {
		t.Fatalf("empty value: %q (nil %t), %v; want an empty non-nil slice", v, v == nil, err)
	}
	if err := s.PutSetting("cmd/42", []byte("2")); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.GetSetting("cmd/42"); string(v) != "2" {
		t.Fatalf("overwritten value %q", v)
	}
	if err := s.DeleteSetting("cmd/42"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSetting("cmd/42"); err != nil {
		t.Fatalf("deleting a missing setting: %v", err)
	}
	if v, err := s.GetSetting("cmd/42"); v != nil || err != nil {
		t.Fatalf("deleted setting: %q, %v", v, err)
	}
	if err := s.PutSetting("", []byte("x")); err == nil {
		t.Error("empty key accepted")
	}
	if err := s.PutSetting(strings.Repeat("k", 256), nil); !errors.Is(err, ErrTooLarge) {
		t.Errorf("long key: %v, want ErrTooLarge", err)
	}
	if err := s.PutSetting("big", make([]byte, MaxPayload+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("big value: %v, want ErrTooLarge", err)
	}
	// Settings do not count against the cap.
	if st, _ := s.Stats(); st.Bytes != 0 {
		t.Errorf("settings counted in Bytes: %d", st.Bytes)
	}
}

func TestChangedSignalled(t *testing.T) {
	s := openStore(t, "", nil)
	select {
	case <-s.Changed():
		t.Fatal("signalled before any append")
	default:
	}
	mustAppend(t, s, Events, Normal, 10)
	mustAppend(t, s, Events, Normal, 10) // does not block on the full channel
	select {
	case <-s.Changed():
	default:
		t.Fatal("not signalled after an append")
	}
	select {
	case <-s.Changed():
		t.Fatal("more than one pending signal")
	default:
	}
	// A failed append does not signal.
	s.Append(Events, Normal, func(uint64) ([]byte, error) { return nil, errBuild })
	select {
	case <-s.Changed():
		t.Fatal("signalled after a failed append")
	default:
	}
}

func TestClosed(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "store.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := verifyFile(s.Path()); err != nil {
		t.Fatal(err)
	}
	build := func(uint64) ([]byte, error) { return []byte("x"), nil }
	checks := map[string]error{
		"Append":            func() error { _, err := s.Append(Events, Normal, build); return err }(),
		"Read":              func() error { _, err := s.Read(Events, 0, 1); return err }(),
		"Delete":            s.Delete(Events, 1),
		"Stats":             func() error { _, err := s.Stats(); return err }(),
		"Check":             s.Check(),
		"GetSetting":        func() error { _, err := s.GetSetting("k"); return err }(),
		"PutSetting":        s.PutSetting("k", nil),
		"DeleteSetting":     s.DeleteSetting("k"),
		"CompactIfWasteful": func() error { _, err := s.CompactIfWasteful(); return err }(),
	}
	for name, err := range checks {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
}

func TestLockedByAnotherOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openStore(t, path, nil)
	mustAppend(t, s, Events, Normal, 10)

	start := time.Now()
	s2, err := Open(path, &Options{Timeout: 100 * time.Millisecond})
	if err == nil {
		s2.Close()
		t.Fatal("second Open of a locked store succeeded")
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("second Open took %v with a 100ms timeout", elapsed)
	}
	if !errors.Is(err, ErrLocked) {
		t.Errorf("error %v, want ErrLocked", err)
	}
	if msg := err.Error(); !strings.Contains(msg, path) || !strings.Contains(msg, "another agent running") {
		t.Errorf("error %q does not name the file and the likely cause", msg)
	}
	// The locked file was not touched.
	if matches, _ := filepath.Glob(path + ".broken-*"); len(matches) != 0 {
		t.Errorf("locked file moved aside: %v", matches)
	}
	if recs, err := s.Read(Events, 0, 10); err != nil || len(recs) != 1 {
		t.Fatalf("first store after the failed open: %d records, %v", len(recs), err)
	}
}

func TestCheck(t *testing.T) {
	s := openStore(t, "", nil)
	fill(t, s, Events, 500, make([]byte, 200))
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestRecordOverheadAccounting(t *testing.T) {
	s := openStore(t, "", nil)
	r, err := s.Append(Events, Normal, func(uint64) ([]byte, error) { return nil, nil })
	if err != nil {
		t.Fatal(err)
	}
	if r.Payload == nil || len(r.Payload) != 0 {
		t.Fatalf("payload %q", r.Payload)
	}
	st, _ := s.Stats()
	if st.Bytes != RecordOverhead {
		t.Fatalf("an empty payload accounts %d bytes, want %d", st.Bytes, RecordOverhead)
	}
}

func TestFileLimitRefusesWithErrFull(t *testing.T) {
	s := openStore(t, "", &Options{MaxBytes: 64 << 20})
	// Shrink the file limit of the open database below what the cap allows,
	// as a store of large, badly packed records would meet it.
	s.db.MaxSize = 2 << 20
	var err error
	for i := 0; i < 1000 && err == nil; i++ {
		_, err = s.Append(Events, Critical, func(uint64) ([]byte, error) { return make([]byte, 64<<10), nil })
	}
	if !errors.Is(err, ErrFull) {
		t.Fatalf("append past the file limit: %v, want ErrFull", err)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Refused != 1 || st.Streams[Events].Depth == 0 {
		t.Fatalf("refused %d, depth %d", st.Refused, st.Streams[Events].Depth)
	}
	// The refused record used no seq and the store still works.
	if err := s.Delete(Events, 1, 2, 3, 4, 5, 6, 7, 8); err != nil {
		t.Fatal(err)
	}
	if r := mustAppend(t, s, Events, Normal, 10); r.Seq != st.Streams[Events].LastSeq+1 {
		t.Fatalf("seq %d, want %d", r.Seq, st.Streams[Events].LastSeq+1)
	}
}

func TestCapFor32Bit(t *testing.T) {
	if got := capFor(DefaultMaxBytes, false); got != DefaultMaxBytes {
		t.Errorf("64-bit cap %d, want %d", got, DefaultMaxBytes)
	}
	got := capFor(DefaultMaxBytes, true)
	if got >= DefaultMaxBytes || fileLimitFor(got) > maxFile32 {
		t.Errorf("32-bit cap %d with file limit %d, want below %d and %d", got, fileLimitFor(got), DefaultMaxBytes, maxFile32)
	}
	if got < 200<<20 {
		t.Errorf("32-bit cap %d MiB is needlessly small", got>>20)
	}
	if small := int64(64 << 20); capFor(small, true) != small {
		t.Errorf("32-bit cap of %d changed to %d", small, capFor(small, true))
	}
	c, err := resolve(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.maxFile > maxFile32 && is32bit {
		t.Errorf("file limit %d on a 32-bit platform", c.maxFile)
	}
	if opts := c.boltOptions(); int64(opts.MaxSize) != c.maxFile || opts.Timeout != DefaultTimeout {
		t.Errorf("bbolt options %+v", opts)
	}
}

// TestReadMemoryBounded appends 100k records and reads them all back a page
// at a time: the heap must not grow with the backlog.
func TestReadMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("appends 100k records")
	}
	s := openStore(t, "", nil)
	// Durability is not under test here: skip the fsyncs to keep the test
	// fast (it runs under emulation too).
	s.db.NoSync = true
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}
	base := heap()
	const n = 100_000
	payload := make([]byte, 100)
	fill(t, s, Events, n, payload)

	const bound = 8 << 20
	var after uint64
	read, peak := 0, uint64(0)
	for page := 0; ; page++ {
		recs, err := s.Read(Events, after, 64)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			break
		}
		if recs[0].Seq != after+1 {
			t.Fatalf("page starts at %d after %d", recs[0].Seq, after)
		}
		read += len(recs)
		after = recs[len(recs)-1].Seq
		if page%200 == 0 {
			peak = max(peak, heap())
		}
	}
	if read != n {
		t.Fatalf("read %d records, want %d", read, n)
	}
	peak = max(peak, heap())
	if peak > base+bound {
		t.Fatalf("heap in use grew from %d to %d bytes with a backlog of %d records (bound %d)", base, peak, n, bound)
	}
	t.Logf("heap in use: %d KiB before, peak %d KiB with %d records", base>>10, peak>>10, n)
}

// TestFileLimitHeadroom backs the file limit of Options.MaxBytes: filled to
// the cap, or churned by eviction, a store's pages stay within pagesFor of
// the most it may account (the worst cases are records that bbolt packs two
// or three to a leaf), so it is the cap that refuses records, not the file
// limit.
func TestFileLimitHeadroom(t *testing.T) {
	const maxBytes = 2 << 20
	for _, size := range []int{1000, 2100, 4100, 9000} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			s := openStore(t, "", &Options{MaxBytes: maxBytes})
			s.db.NoSync = true // sizes are under test, not durability
			build := func(uint64) ([]byte, error) { return make([]byte, size), nil }
			var err error
			for err == nil {
				_, err = s.Append(Events, Critical, build)
			}
			if !errors.Is(err, ErrFull) || errors.Is(err, berrors.ErrMaxSizeReached) {
				t.Fatalf("filling: %v, want ErrFull from the cap", err)
			}
			checkPages(t, s)
			// Make room, then churn telemetry through it.
			all := readAll(t, s, Events)
			if err := s.Delete(Events, seqsOf(all[:len(all)/2])...); err != nil {
				t.Fatal(err)
			}
			for range maxBytes / accounted(size) {
				if _, err := s.Append(Telemetry, Evictable, build); err != nil {
					t.Fatal(err)
				}
			}
			checkPages(t, s)
		})
	}
}

// checkPages fails if the pages in use exceed pagesFor the most the store
// may account.
func checkPages(t *testing.T, s *Store) {
	t.Helper()
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	var used int64
	s.db.View(func(tx *bbolt.Tx) error { used = tx.Size(); return nil })
	if limit := pagesFor(st.MaxBytes + st.Reserve); used > limit {
		t.Fatalf("%d bytes of pages for a store that accounts at most %d: more than %d", used, st.MaxBytes+st.Reserve, limit)
	}
	t.Logf("%d bytes of pages, %.2f times the most the store accounts", used, float64(used)/float64(st.MaxBytes+st.Reserve))
}

func TestCloseDuringAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	const workers = 16
	var mu sync.Mutex
	var ok []uint64
	started := make(chan struct{}, workers*4)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				r, err := s.Append(Events, Normal, func(seq uint64) ([]byte, error) { return payloadFor(Events, seq, 50), nil })
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				ok = append(ok, r.Seq)
				mu.Unlock()
				select {
				case started <- struct{}{}:
				default:
				}
			}
		}()
	}
	for range workers * 2 {
		<-started
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()

	// Every append that succeeded is in the file, and nothing else.
	s = openStore(t, path, nil)
	slices.Sort(ok)
	if got := seqsOf(readAll(t, s, Events)); !slices.Equal(got, ok) {
		t.Fatalf("stored %d records, %d appends succeeded", len(got), len(ok))
	}
	for i, seq := range ok {
		if seq != uint64(i+1) {
			t.Fatalf("succeeded seqs have a gap at %d", i)
		}
	}
}

func TestLoggerReportsRecovery(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	if err := os.WriteFile(path, bytes.Repeat([]byte{0x5A}, 10000), 0o600); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	s := openStore(t, path, &Options{Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	if s.Recovered() == nil || !strings.Contains(buf.String(), "salvaged") || !strings.Contains(buf.String(), s.Recovered().MovedTo) {
		t.Fatalf("log %q, recovered %+v", buf.String(), s.Recovered())
	}
}
