package store

import (
	"encoding/binary"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// benchPayload is the size of a card tap record as the agent writes it.
var benchPayload = func() []byte {
	p := []byte(`{"id":"01J9Z3W6ZK4V1ZQ8N2R7C5T0XY","seq":0,"type":"card.tap","ts":"2025-01-01T08:00:00.123456789Z",` +
		`"clock_synced":true,"boot_id":"6f1c2a9e-3b7d-4e11-9a55-0c8d7e2f4b10","uptime_ms":123456789,` +
		`"card":{"kind":"emv","token":"q3ZC8vJ6yQk1lWb4n0tX2sR9pM7eH5aD","masked":"622848******1234",` + // synthetic
		`"scheme":"unionpay","aid":"A000000333010101"}}`)
	for len(p) < 300 {
		p = append(p, ' ')
	}
	return p[:300]
}()

func openBench(b *testing.B, noSync bool) *Store {
	b.Helper()
	s, err := Open(filepath.Join(b.TempDir(), "bench.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	s.db.NoSync = noSync
	b.Cleanup(func() { s.Close() })
	return s
}

// BenchmarkAppend measures one durable append of a 300-byte card record.
func BenchmarkAppend(b *testing.B) { benchAppend(b, false) }

// BenchmarkAppendNoSync is BenchmarkAppend without fsync: the CPU cost of
// the store, which the noise of fsync hides.
func BenchmarkAppendNoSync(b *testing.B) { benchAppend(b, true) }

func benchAppend(b *testing.B, noSync bool) {
	s := openBench(b, noSync)
	build := func(uint64) ([]byte, error) { return benchPayload, nil }
	b.SetBytes(int64(len(benchPayload)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.Append(Events, Normal, build); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBareBoltUpdate is the baseline for BenchmarkAppend: a bare bbolt
// Update with one Put of the same payload, in the same kind of directory.
func BenchmarkBareBoltUpdate(b *testing.B) { benchBareUpdate(b, false) }

// BenchmarkBareBoltUpdateNoSync is the baseline for BenchmarkAppendNoSync.
func BenchmarkBareBoltUpdateNoSync(b *testing.B) { benchBareUpdate(b, true) }

func benchBareUpdate(b *testing.B, noSync bool) {
	update := openBare(b, filepath.Join(b.TempDir(), "bare.db"), noSync)
	b.SetBytes(int64(len(benchPayload)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := update(uint64(i + 1)); err != nil {
			b.Fatal(err)
		}
	}
}

// openBare opens a bare bbolt file and returns a function that stores
// benchPayload under a key in one Update.
func openBare(b *testing.B, path string, noSync bool) func(key uint64) error {
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	db.NoSync = noSync
	name := []byte("bench")
	if err := db.Update(func(tx *bbolt.Tx) error { _, err := tx.CreateBucket(name); return err }); err != nil {
		b.Fatal(err)
	}
	return func(key uint64) error {
		return db.Update(func(tx *bbolt.Tx) error {
			var k [8]byte
			binary.BigEndian.PutUint64(k[:], key)
			return tx.Bucket(name).Put(k[:], benchPayload)
		})
	}
}

// BenchmarkAppendVsBare alternates a durable Append and a bare bbolt Update
// (files in the same directory) and reports the ratio of their times, which
// is steadier than comparing two benchmarks when fsync times drift.
func BenchmarkAppendVsBare(b *testing.B) {
	s := openBench(b, false)
	update := openBare(b, filepath.Join(filepath.Dir(s.Path()), "bare.db"), false)
	build := func(uint64) ([]byte, error) { return benchPayload, nil }
	var tAppend, tBare time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := s.Append(Events, Normal, build); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := update(uint64(i + 1)); err != nil {
			b.Fatal(err)
		}
		tAppend += t1.Sub(t0)
		tBare += time.Since(t1)
	}
	b.ReportMetric(float64(tAppend)/float64(tBare), "append/bare")
	b.ReportMetric(float64(tAppend.Nanoseconds())/float64(b.N), "append-ns/op")
	b.ReportMetric(float64(tBare.Nanoseconds())/float64(b.N), "bare-ns/op")
}

// BenchmarkAppendParallel measures appends from concurrent goroutines,
// which share commits.
func BenchmarkAppendParallel(b *testing.B) {
	s := openBench(b, false)
	build := func(uint64) ([]byte, error) { return benchPayload, nil }
	b.SetBytes(int64(len(benchPayload)))
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Append(Events, Normal, build); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkReadDelete measures the drain pattern of the link: read 64
// records, delete them. Each op handles 64 records.
func BenchmarkReadDelete(b *testing.B) {
	s := openBench(b, false)
	const page = 64
	// Fill with concurrent appends (group commits) to keep set-up short.
	total := b.N * page
	fill(b, s, Events, total, benchPayload)
	seqs := make([]uint64, 0, page)
	b.SetBytes(int64(page * len(benchPayload)))
	b.ResetTimer()
	var after uint64
	for i := 0; i < b.N; i++ {
		recs, err := s.Read(Events, after, page)
		if err != nil {
			b.Fatal(err)
		}
		if len(recs) != page {
			b.Fatalf("read %d records, want %d", len(recs), page)
		}
		seqs = seqs[:0]
		for _, r := range recs {
			seqs = append(seqs, r.Seq)
		}
		if err := s.Delete(Events, seqs...); err != nil {
			b.Fatal(err)
		}
		after = seqs[len(seqs)-1]
	}
}
