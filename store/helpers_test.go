package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// testClock is an injected wall clock that advances one second per call.
type testClock struct{ ns atomic.Int64 }

func newTestClock() *testClock {
	c := &testClock{}
	c.ns.Store(time.Date(2025, 3, 1, 8, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *testClock) Now() time.Time { return time.Unix(0, c.ns.Add(int64(time.Second))).UTC() }

// openStore opens a store at path (a fresh temporary one if path is "")
// and, at cleanup, closes it and checks the file: bbolt's consistency
// check, and the stream counters against a scan of the records.
func openStore(t testing.TB, path string, opts *Options) *Store {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "store.db")
	}
	s, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := verifyFile(s.Path()); err != nil {
			t.Errorf("store file %s: %v", s.Path(), err)
		}
	})
	return s
}

// verifyFile opens a closed store file read-only, runs bbolt's check and
// compares every stream's counters with its records.
func verifyFile(path string) error {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	return db.View(func(tx *bbolt.Tx) error {
		if err := checkTx(tx); err != nil {
			return err
		}
		cs, err := loadCounters(tx)
		if err != nil {
			return err
		}
		for _, st := range streams {
			b, err := recordBucket(tx, st)
			if err != nil {
				return err
			}
			var got streamCounters
			got.last = cs.get(st).last
			if _, err := recount(b, &got); err != nil {
				return err
			}
			if got != cs.get(st) {
				return fmt.Errorf("stream %s: counters %+v, records say %+v", st, cs.get(st), got)
			}
		}
		return verifyLedger(tx, cs.ledger)
	})
}

// verifyLedger compares the ledger counters with its entries, and the index
// by id with the entries: one index entry per entry, pointing at it.
func verifyLedger(tx *bbolt.Tx, lc streamCounters) error {
	lb, ib, err := ledgerBuckets(tx)
	if err != nil {
		return err
	}
	got := streamCounters{last: lc.last}
	err = lb.ForEach(func(k, v []byte) error {
		_, id, ok := ledgerHead(k, v)
		if !ok {
			return fmt.Errorf("ledger entry %x: malformed", k)
		}
		if seq := binary.BigEndian.Uint64(k); seq > lc.last {
			return fmt.Errorf("ledger entry %d beyond the last seq %d", seq, lc.last)
		}
		if !bytes.Equal(ib.Get(id), k) {
			return fmt.Errorf("ledger entry %x: the index by id points at %x", k, ib.Get(id))
		}
		got.depth++
		got.bytes += ledgerBytes(v)
		return nil
	})
	if err != nil {
		return err
	}
	if got != lc {
		return fmt.Errorf("ledger: counters %+v, entries say %+v", lc, got)
	}
	if n := ib.Stats().KeyN; int64(n) != got.depth {
		return fmt.Errorf("ledger: %d index entries for %d entries", n, got.depth)
	}
	return nil
}

// classOf is the natural class of a stream's records.
func classOf(st Stream) Class {
	switch st {
	case Telemetry:
		return Evictable
	case Responses, Inbox:
		return Critical
	}
	return Normal
}

// payloadFor makes a payload that names its stream and seq, so tests can
// tell records apart.
func payloadFor(st Stream, seq uint64, size int) []byte {
	p := fmt.Appendf(nil, "%s:%d:", st, seq)
	for len(p) < size {
		p = append(p, 'x')
	}
	return p
}

func mustAppend(t testing.TB, s *Store, st Stream, c Class, size int) Record {
	t.Helper()
	r, err := s.Append(st, c, func(seq uint64) ([]byte, error) { return payloadFor(st, seq, size), nil })
	if err != nil {
		t.Fatalf("Append(%s, %s): %v", st, c, err)
	}
	return r
}

// fill appends n records of payload to st from many goroutines, so that
// appends share commits.
func fill(t testing.TB, s *Store, st Stream, n int, payload []byte) {
	t.Helper()
	const workers = 64
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	build := func(uint64) ([]byte, error) { return payload, nil }
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if _, err := s.Append(st, classOf(st), build); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		t.Fatalf("fill: %v", err)
	}
}

func seqsOf(recs []Record) []uint64 {
	out := make([]uint64, len(recs))
	for i, r := range recs {
		out[i] = r.Seq
	}
	return out
}

// readAll drains st's records in pages without deleting them.
func readAll(t testing.TB, s *Store, st Stream) []Record {
	t.Helper()
	var all []Record
	var after uint64
	for {
		recs, err := s.Read(st, after, 100)
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		if len(recs) == 0 {
			return all
		}
		all = append(all, recs...)
		after = recs[len(recs)-1].Seq
	}
}

// rawCounters reads a stream's counters straight from a closed file.
func rawCounters(t testing.TB, path string, st Stream) streamCounters {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var c streamCounters
	if err := db.View(func(tx *bbolt.Tx) error {
		cs, err := loadCounters(tx)
		c = cs.get(st)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return c
}

// putRaw writes a raw value into a closed store file.
func putRaw(t testing.TB, path string, bucket, key, value []byte) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucket)
		if err != nil {
			return err
		}
		return b.Put(key, value)
	}); err != nil {
		t.Fatal(err)
	}
}

func encodeCounters(c streamCounters) []byte {
	v := make([]byte, counterLen)
	binary.BigEndian.PutUint64(v[0:], c.last)
	binary.BigEndian.PutUint64(v[8:], uint64(c.depth))
	binary.BigEndian.PutUint64(v[16:], uint64(c.bytes))
	return v
}

var errBuild = errors.New("build failed")
