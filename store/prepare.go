package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/debug"

	"go.etcd.io/bbolt"
)

// guard runs f and returns the value of a panic in it, memory faults (in the
// file's map) included.
func guard(f func()) (fault any) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() { fault = recover() }()
	f()
	return nil
}

// contentError marks an error about what a file holds.
type contentError struct{ err error }

func (e contentError) Error() string { return e.err.Error() }

// prepare creates the buckets of a new store, or checks those of an
// existing one: its format, and the first and last record of every stream
// against the stream counters (repaired by a scan if they disagree).
func prepare(tx *bbolt.Tx, cfg *config) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		foreign := false
		if err := tx.ForEach(func([]byte, *bbolt.Bucket) error { foreign = true; return nil }); err != nil {
			return err
		}
		if foreign {
			return errors.New("the file holds a database that is not a station store")
		}
		m, err := tx.CreateBucket(bucketMeta)
		if err != nil {
			return err
		}
		if err := m.Put(keyFormat, []byte{formatVersion}); err != nil {
			return err
		}
		if _, err := tx.CreateBucket(bucketSettings); err != nil {
			return err
		}
		for _, st := range streams {
			if _, err := tx.CreateBucket(recordBucketName(st)); err != nil {
				return err
			}
		}
		if _, err := tx.CreateBucket(bucketLedger); err != nil {
			return err
		}
		_, err = tx.CreateBucket(bucketLedgerID)
		return err
	}
	if f := meta.Get(keyFormat); len(f) != 1 || f[0] != formatVersion {
		return fmt.Errorf("unknown store format %x (this agent writes %d)", f, formatVersion)
	}
	if _, err := tx.CreateBucketIfNotExists(bucketSettings); err != nil {
		return err
	}
	cs, err := loadCounters(tx)
	if err != nil {
		return err
	}
	repaired := false
	for _, st := range streams {
		b, err := tx.CreateBucketIfNotExists(recordBucketName(st))
		if err != nil {
			return err
		}
		c := cs.get(st)
		cur := b.Cursor()
		fk, fv := cur.First()
		lk, lv := cur.Last()
		for _, kv := range [][2][]byte{{fk, fv}, {lk, lv}} {
			if kv[0] != nil {
				if _, err := decodeRecord(st, kv[0], kv[1]); err != nil {
					return err
				}
			}
		}
		ok := c.depth >= 0 && c.bytes >= 0 && (fk == nil) == (c.depth == 0) &&
			(lk == nil || binary.BigEndian.Uint64(lk) <= c.last)
		if ok {
			continue
		}
		n, err := recount(b, &c)
		if err != nil {
			return err
		}
		cfg.warn("store: stream counters disagreed with the records; recounted",
			"stream", string(st), "depth", n, "last_seq", c.last)
		cs.set(st, c)
		repaired = true
	}
	ok, err := prepareLedger(tx, &cs, cfg)
	if err != nil {
		return err
	}
	if repaired || !ok {
		return cs.save(tx)
	}
	return nil
}

// prepareLedger creates the ledger buckets if missing (a file older than
// the ledger) and checks the first and last entries against the ledger
// counters. If they disagree, or an entry there is malformed, it rebuilds
// the counters and the index by id from a scan of the entries, dropping
// malformed ones, and reports ok false. Ledger damage never makes the file
// unusable: at worst a command is forgotten.
func prepareLedger(tx *bbolt.Tx, cs *counters, cfg *config) (ok bool, err error) {
	lb, err := tx.CreateBucketIfNotExists(bucketLedger)
	if err != nil {
		return false, err
	}
	ib, err := tx.CreateBucketIfNotExists(bucketLedgerID)
	if err != nil {
		return false, err
	}
	lc := cs.ledger
	cur := lb.Cursor()
	fk, fv := cur.First()
	lk, lv := cur.Last()
	ik, _ := ib.Cursor().First()
	ok = lc.depth >= 0 && lc.bytes >= 0 && (fk == nil) == (lc.depth == 0) && (fk == nil) == (ik == nil)
	for _, kv := range [][2][]byte{{fk, fv}, {lk, lv}} {
		if kv[0] != nil {
			if _, _, good := ledgerHead(kv[0], kv[1]); !good {
				ok = false
			}
		}
	}
	if ok && lk != nil && binary.BigEndian.Uint64(lk) > lc.last {
		ok = false
	}
	if ok {
		return true, nil
	}
	if err := rebuildLedger(tx, &lc); err != nil {
		return false, err
	}
	cfg.warn("store: command ledger disagreed with its counters; rebuilt",
		"entries", lc.depth, "last_seq", lc.last)
	cs.ledger, cs.ledgerDirty = lc, true
	return false, nil
}

// rebuildLedger sets lc from a scan of the ledger, keeping lc.last unless an
// entry has a higher seq, deletes malformed entries and rebuilds the index
// by id.
func rebuildLedger(tx *bbolt.Tx, lc *streamCounters) error {
	lb := tx.Bucket(bucketLedger)
	type entry struct{ key, id []byte }
	var good []entry
	var bad [][]byte
	lc.depth, lc.bytes = 0, 0
	err := lb.ForEach(func(k, v []byte) error {
		if _, id, ok := ledgerHead(k, v); ok {
			good = append(good, entry{bytes.Clone(k), bytes.Clone(id)})
			lc.depth++
			lc.bytes += ledgerBytes(v)
			lc.last = max(lc.last, binary.BigEndian.Uint64(k))
		} else {
			bad = append(bad, bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range bad {
		if err := lb.Delete(k); err != nil {
			return err
		}
	}
	if err := tx.DeleteBucket(bucketLedgerID); err != nil {
		return err
	}
	ib, err := tx.CreateBucket(bucketLedgerID)
	if err != nil {
		return err
	}
	// In seq order, so that the latest entry of an id wins; an earlier one
	// stays until pruned.
	for _, e := range good {
		if err := ib.Put(e.id, e.key); err != nil {
			return err
		}
	}
	return nil
}

// recount sets c from a scan of b, keeping c.last unless a stored record has
// a higher seq.
func recount(b *bbolt.Bucket, c *streamCounters) (int64, error) {
	c.depth, c.bytes = 0, 0
	err := b.ForEach(func(k, v []byte) error {
		if len(k) != 8 || len(v) < headerLen {
			return fmt.Errorf("record %x: %w", k, errShortRecord)
		}
		c.depth++
		c.bytes += accounted(len(v) - headerLen)
		c.last = max(c.last, binary.BigEndian.Uint64(k))
		return nil
	})
	return c.depth, err
}
