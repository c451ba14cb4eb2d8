package store

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

func keyed(key, digest string, size int) Keyed {
	return Keyed{Key: key, Digest: []byte(digest), Ref: []byte("ref-" + key), Build: func(seq uint64) ([]byte, error) {
		return bytes.Repeat([]byte{'k'}, size), nil
	}}
}

func TestAppendKeyedRepeatAndConflict(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openStore(t, path, nil)
	res, err := s.AppendKeyed(Events, Normal, []Keyed{keyed("a", "d1", 10), keyed("b", "d2", 10)})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Repeat || res[0].Record.Seq != 1 || res[1].Record.Seq != 2 || res[1].Entry.Seq != 2 {
		t.Fatalf("first append: %+v", res)
	}
	// A retry: the same key and digest answers the same record and appends nothing.
	res, err = s.AppendKeyed(Events, Normal, []Keyed{keyed("a", "d1", 10)})
	if err != nil {
		t.Fatal(err)
	}
	if !res[0].Repeat || res[0].Entry.Seq != 1 || string(res[0].Entry.Ref) != "ref-a" {
		t.Fatalf("retry: %+v", res[0])
	}
	// The same key for something else: refused, and nothing of the call is written.
	_, err = s.AppendKeyed(Events, Normal, []Keyed{keyed("c", "d3", 10), keyed("a", "other", 10)})
	var ie *ItemError
	if !errors.Is(err, ErrKeyConflict) || !errors.As(err, &ie) || ie.Index != 1 {
		t.Fatalf("reused key: err = %v, want ErrKeyConflict at record 2", err)
	}
	if e, _ := s.Key("c"); e != nil {
		t.Fatalf("key c recorded by a refused call: %+v", e)
	}
	// A key twice in one call: the second is a repeat of the first.
	res, err = s.AppendKeyed(Events, Normal, []Keyed{keyed("d", "d4", 10), keyed("d", "d4", 10)})
	if err != nil || res[0].Repeat || !res[1].Repeat || res[1].Entry.Seq != res[0].Record.Seq {
		t.Fatalf("key twice: %+v, %v", res, err)
	}
	if got := seqsOf(readAll(t, s, Events)); fmt.Sprint(got) != "[1 2 3]" {
		t.Fatalf("events %v, want [1 2 3]", got)
	}
	// Keys survive a restart.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, path, nil)
	res, err = s.AppendKeyed(Events, Normal, []Keyed{keyed("b", "d2", 10)})
	if err != nil || !res[0].Repeat || res[0].Entry.Seq != 2 {
		t.Fatalf("after reopen: %+v, %v", res, err)
	}
}

// A batch that does not fit is refused whole: none of its records, none of its keys, no seq used.
func TestAppendKeyedAllOrNothingWhenFull(t *testing.T) {
	s := openStore(t, "", &Options{MaxBytes: 64 << 10})
	var batch []Keyed
	for i := range 20 {
		batch = append(batch, keyed(fmt.Sprint("k", i), "d", 4000)) // 80 KB: the store fills at about the 16th
	}
	_, err := s.AppendKeyed(Events, Normal, batch)
	var ie *ItemError
	if !errors.Is(err, ErrFull) || !errors.As(err, &ie) || ie.Index < 10 {
		t.Fatalf("err = %v, want ErrFull well into the batch", err)
	}
	if recs := readAll(t, s, Events); len(recs) != 0 {
		t.Fatalf("%d records stored by a refused batch", len(recs))
	}
	for _, k := range batch {
		if e, _ := s.Key(k.Key); e != nil {
			t.Fatalf("key %s recorded by a refused batch", k.Key)
		}
	}
	if st, _ := s.Stats(); st.Refused != 1 || st.Streams[Events].LastSeq != 0 {
		t.Fatalf("stats after refusal: refused %d, last seq %d", st.Refused, st.Streams[Events].LastSeq)
	}
	// What fits goes through, numbered from 1.
	res, err := s.AppendKeyed(Events, Normal, batch[:5])
	if err != nil || res[0].Record.Seq != 1 || res[4].Record.Seq != 5 {
		t.Fatalf("smaller batch: %v", err)
	}
}

// A build that fails, or panics, leaves nothing behind.
func TestAppendKeyedBuildFailure(t *testing.T) {
	s := openStore(t, "", nil)
	bad := Keyed{Key: "bad", Build: func(uint64) ([]byte, error) { return nil, errors.New("no") }}
	if _, err := s.AppendKeyed(Events, Normal, []Keyed{keyed("a", "", 1), bad}); err == nil {
		t.Fatal("a failing build did not fail the call")
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("a panicking build did not panic")
			}
		}()
		boom := Keyed{Key: "boom", Build: func(uint64) ([]byte, error) { panic("boom") }}
		_, _ = s.AppendKeyed(Events, Normal, []Keyed{keyed("a", "", 1), boom})
	}()
	if recs := readAll(t, s, Events); len(recs) != 0 {
		t.Fatalf("%d records stored", len(recs))
	}
	for _, k := range []Keyed{{Key: ""}, {Key: string(bytes.Repeat([]byte{'x'}, MaxKeyLen+1))}} {
		k.Build = keyed("x", "", 1).Build
		if _, err := s.AppendKeyed(Events, Normal, []Keyed{k}); err == nil {
			t.Fatalf("key of %d bytes accepted", len(k.Key))
		}
	}
}

// Keys are kept KeyRetention and until their record left the store, whichever is later.
func TestKeysRetention(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Date(2025, 3, 1, 8, 0, 0, 0, time.UTC).UnixNano())
	s := openStore(t, "", &Options{Now: func() time.Time { return time.Unix(0, now.Load()).UTC() }})
	advance := func(d time.Duration) { now.Add(int64(d)) }
	if _, err := s.AppendKeyed(Events, Normal, []Keyed{keyed("acked", "d", 1), keyed("pending", "d", 1)}); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(Events, 1); err != nil { // the broker acknowledged "acked"'s record
		t.Fatal(err)
	}
	advance(KeyRetention - time.Minute)
	if _, err := s.AppendKeyed(Events, Normal, []Keyed{keyed("later", "d", 1)}); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Key("acked"); e == nil {
		t.Fatal("an acknowledged key was forgotten before KeyRetention")
	}
	advance(2 * time.Minute)
	if _, err := s.AppendKeyed(Events, Normal, []Keyed{keyed("later2", "d", 1)}); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Key("acked"); e != nil {
		t.Fatal("an acknowledged key older than KeyRetention was kept")
	}
	if e, _ := s.Key("pending"); e == nil {
		t.Fatal("the key of a record still in the store was forgotten")
	}
	// Once its record is acknowledged, the next keyed append forgets it.
	if err := s.Delete(Events, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendKeyed(Events, Normal, []Keyed{keyed("later3", "d", 1)}); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Key("pending"); e != nil {
		t.Fatal("an acknowledged key older than KeyRetention was kept")
	}
	if e, _ := s.Key("later"); e == nil {
		t.Fatal("a young key was forgotten")
	}
}
