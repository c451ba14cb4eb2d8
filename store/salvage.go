package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"go.etcd.io/bbolt"
)

// Salvage copies every record that can still be read from a broken file
// into a new store, with its seq, and so do its settings and command
// ledger. The broken file is read with pread (pagefile.go); a damaged page
// costs the records on it, not the rest. The new store is built in
// "<path>.new" and put in place with a rename, so a power cut at any
// moment leaves either the broken file (salvaged again at the next start)
// or the complete new store at path, never a store that forgot records.
//
// Each stream's seq continues after the highest the broken file knew (its
// counters, or the highest salvaged seq when the counters are unreadable),
// so a seq is never reused. The store.recovered alarm (Options.RecoveryAlarm)
// is appended in the new store's last transaction: once the new store is in
// place, the alarm is in it.

// salvageBatchBytes bounds the memory of one salvage transaction.
const salvageBatchBytes = 4 << 20

// Recovery describes a broken file that was salvaged into a new store.
type Recovery struct {
	MovedTo string // where the broken file is kept ("" if it was removed)
	Reason  string // why it was found broken (no record content)
	// Salvaged counts the records copied into the new store, all streams.
	Salvaged int
	// Lost counts the records the broken file's counters say it held but
	// that could not be read; -1 when its counters were unreadable too.
	Lost int
	// SeqRestarted is true when nothing of the broken file's sequences
	// could be read (not a bbolt file, or its metadata is gone): the
	// streams start again at seq 1.
	SeqRestarted bool
	// AlarmSeq is the seq of the store.recovered alarm in the Events
	// stream, 0 if no alarm was written (Options.RecoveryAlarm is nil).
	AlarmSeq uint64
	At       time.Time // when the new store was made (Options.Now)
}

// salvaged accumulates what a salvage found in the broken file.
type salvaged struct {
	counters    counters // the broken file's counters, if readable
	haveCounts  [len(streams)]bool
	ledgerCount bool
	highest     [len(streams)]uint64
	n           [len(streams)]int64
	bytes       [len(streams)]int64
	total       int
	formatOK    bool
	sawMeta     bool
}

// salvageInto builds a new store in the file dst (the caller created it and
// holds its lock) from the broken file f, appends the alarm, and fsyncs.
// f may be nil (nothing to read: a new store). It returns a *readError when
// reading f fails: a system error, no reason to give up on the file.
func salvageInto(dst *os.File, f *os.File, cfg *config, reason string) (*Recovery, error) {
	rec := &Recovery{Reason: reason, Lost: -1, SeqRestarted: true, At: cfg.now().UTC()}
	bo := cfg.boltOptions()
	bo.OpenFile = func(string, int, os.FileMode) (*os.File, error) { return dst, nil }
	db, err := bbolt.Open(dst.Name(), 0o600, bo)
	if err != nil {
		return nil, fmt.Errorf("creating the new store: %w", err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bbolt.Tx) error { return prepare(tx, cfg) }); err != nil {
		return nil, fmt.Errorf("creating the new store: %w", err)
	}
	var sv salvaged
	if f != nil {
		if err := copyReadable(db, f, &sv); err != nil {
			return nil, err
		}
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		cs, err := loadCounters(tx)
		if err != nil {
			return err
		}
		lost, lostKnown := 0, sv.sawMeta
		for i, st := range streams {
			c := streamCounters{last: sv.highest[i], depth: sv.n[i], bytes: sv.bytes[i]}
			if sv.haveCounts[i] {
				old := sv.counters.c[i]
				c.last = max(c.last, old.last)
				lost += int(max(old.depth-sv.n[i], 0))
			} else if sv.n[i] > 0 || !sv.sawMeta {
				lostKnown = false
			}
			if c.last > 0 {
				rec.SeqRestarted = false
			}
			cs.set(st, c)
		}
		if sv.sawMeta {
			rec.SeqRestarted = false
		}
		if lostKnown {
			rec.Lost = lost
		}
		rec.Salvaged = sv.total
		lc := cs.ledger
		if sv.ledgerCount {
			lc.last = max(lc.last, sv.counters.ledger.last)
		}
		if err := rebuildLedger(tx, &lc); err != nil {
			return err
		}
		cs.ledger, cs.ledgerDirty = lc, true
		if cfg.alarm != nil {
			ev := cs.get(Events)
			seq := ev.last + 1
			r := *rec
			r.AlarmSeq = seq
			payload, err := cfg.alarm(r, seq)
			if err != nil {
				return fmt.Errorf("building the store.recovered alarm: %w", err)
			}
			b, err := recordBucket(tx, Events)
			if err != nil {
				return err
			}
			if err := b.Put(seqKey(seq), encodeRecord(rec.At, payload)); err != nil {
				return err
			}
			ev.last, ev.depth, ev.bytes = seq, ev.depth+1, ev.bytes+accounted(len(payload))
			cs.set(Events, ev)
			rec.AlarmSeq = seq
		}
		return cs.save(tx)
	})
	if err != nil {
		return nil, fmt.Errorf("finishing the new store: %w", err)
	}
	return rec, nil
}

// copyReadable copies the records, settings and ledger entries of the best
// readable snapshot of f into db.
func copyReadable(db *bbolt.DB, f *os.File, sv *salvaged) error {
	size, err := fileSize(f)
	if err != nil {
		return &readError{err}
	}
	metas, err := readMetas(f, size)
	if errors.Is(err, errNoMeta) {
		return nil // nothing can be read: a new store
	}
	if err != nil {
		return &readError{err}
	}
	// The newest snapshot, unless its root cannot be read at all.
	var w *walker
	var tops []leafElem
	for _, m := range metas {
		w = newWalker(openPages(f, size, m))
		tops = tops[:0]
		w.tree(m.root, func(e leafElem) {
			if e.flags&leafBucket != 0 {
				tops = append(tops, e)
			}
		})
		if w.readErr != nil {
			return &readError{w.readErr}
		}
		if len(tops) > 0 {
			break
		}
	}
	// The meta bucket first: its format says whether the records can be
	// read, its counters how far each seq went.
	for _, e := range tops {
		if string(e.key) != string(bucketMeta) {
			continue
		}
		sv.sawMeta = true
		w.bucket(e.value, func(m leafElem) {
			switch {
			case bytes.Equal(m.key, keyFormat):
				sv.formatOK = len(m.value) == 1 && m.value[0] == formatVersion
			case bytes.Equal(m.key, keyLedger):
				if c, err := decodeCounters(m.value); err == nil {
					sv.counters.ledger, sv.ledgerCount = c, true
				}
			default:
				for i := range streams {
					if bytes.Equal(m.key, counterKeys[i]) {
						if c, err := decodeCounters(m.value); err == nil {
							sv.counters.c[i], sv.haveCounts[i] = c, true
						}
					}
				}
			}
		})
	}
	if sv.sawMeta && !sv.formatOK {
		// A format this agent does not know: its records cannot be
		// trusted to mean what they seem. Keep its sequences only.
		return nil
	}
	type kv struct{ bucket, k, v []byte }
	var batch []kv
	var batchBytes int
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := db.Update(func(tx *bbolt.Tx) error {
			for _, x := range batch {
				b := tx.Bucket(x.bucket)
				if b == nil {
					return fmt.Errorf("bucket %q: %w", x.bucket, errMissingBucket)
				}
				b.FillPercent = 1.0
				if err := b.Put(x.k, x.v); err != nil {
					return err
				}
			}
			return nil
		})
		batch, batchBytes = batch[:0], 0
		return err
	}
	var werr error
	add := func(bucket, k, v []byte) {
		batch = append(batch, kv{bucket, k, v})
		batchBytes += len(k) + len(v)
		if batchBytes >= salvageBatchBytes && werr == nil {
			werr = flush()
		}
	}
	for _, e := range tops {
		name := string(e.key)
		switch st, isRecords := streamOfBucket(name); {
		case isRecords:
			i := streamIndex(st)
			bn := recordBucketNames[i]
			w.bucket(e.value, func(r leafElem) {
				if r.flags&leafBucket != 0 || len(r.key) != 8 || len(r.value) < headerLen {
					return
				}
				seq := binary.BigEndian.Uint64(r.key)
				sv.highest[i] = max(sv.highest[i], seq)
				sv.n[i]++
				sv.bytes[i] += accounted(len(r.value) - headerLen)
				sv.total++
				add(bn, r.key, r.value)
			})
		case name == string(bucketSettings):
			w.bucket(e.value, func(r leafElem) {
				if r.flags&leafBucket == 0 {
					add(bucketSettings, r.key, r.value)
				}
			})
		case name == string(bucketLedger):
			// Copied as they are; the index by id is rebuilt from them.
			w.bucket(e.value, func(r leafElem) {
				if r.flags&leafBucket == 0 && len(r.key) == 8 {
					add(bucketLedger, r.key, r.value)
				}
			})
		}
		if w.readErr != nil {
			return &readError{w.readErr}
		}
	}
	if werr != nil {
		return fmt.Errorf("writing the new store: %w", werr)
	}
	if err := flush(); err != nil {
		return fmt.Errorf("writing the new store: %w", err)
	}
	return nil
}
