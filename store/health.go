package store

import (
	"bytes"
	"errors"
	"fmt"
	"syscall"

	"go.etcd.io/bbolt"
)

// Corruption met at run time, and writes whose fate is unknown.
//
// Every operation reads the file through bbolt's memory map with memory
// faults turned into panics (guard). A panic of bbolt (a page of the wrong
// type, an element out of bounds) or a memory fault means the file went bad
// after it was opened: the store closes it and opens it again as if it had
// found it broken at Open (it is salvaged record by record, the
// store.recovered alarm written in the new store), then runs the operation
// once more. A memory fault that is really the disk failing to read shows
// in the salvage as a read error: then the file is left alone and the store
// becomes unavailable (ErrUnavailable), for the process to end and be
// restarted.
//
// A write whose commit fails with an error of the system (an fsync or a
// write returning EIO) may or may not have reached the file: bbolt may have
// written the meta page before the error. The store is then unhealthy: it
// is closed and opened again with the full check, and each record of the
// failed commit is looked up by its seq and content. One that is there is
// written again in a new commit (every page of the failed commit is
// rewritten and synced) and reported stored; one that is not is reported
// not recorded. So an append's answer is what the file holds.

// ErrUnavailable is returned once the store's file cannot be used any more:
// it failed at run time and opening it again failed with an error of the
// system (a failing disk). The file is left as it is; the process should
// end and be restarted.
var ErrUnavailable = errors.New("store: unavailable")

// unsure reports whether err, returned by a commit, leaves it unknown
// whether the commit reached the file.
func unsure(err error) bool {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return false
	}
	switch errno {
	case syscall.ENOSPC, syscall.EDQUOT, syscall.ENOMEM, syscall.EFBIG:
		return false // refused before the meta page was written
	}
	return true
}

// withDB runs fn on the open db under the shared lock, contained: a bbolt
// panic or memory fault salvages the store and runs fn once more; a write
// whose commit fails with an unsure error reopens the store.
func (s *Store) withDB(op string, fn func(db *bbolt.DB) error) error {
	for attempt := 0; ; attempt++ {
		if err := s.acquire(); err != nil {
			return err
		}
		gen := s.gen
		var err error
		fault := guard(func() { err = fn(s.db) })
		s.mu.RUnlock()
		switch {
		case fault != nil && attempt == 0:
			if rerr := s.reopen(gen, fmt.Sprintf("corruption met at run time (%s): %v", op, fault)); rerr != nil {
				return rerr
			}
			continue
		case fault != nil:
			return fmt.Errorf("store: %s: %v", op, fault)
		case err != nil && unsure(err):
			if rerr := s.reopen(gen, ""); rerr != nil {
				return fmt.Errorf("%w (and reopening the store failed: %v)", err, rerr)
			}
		}
		return err
	}
}

// reopen closes the db and opens the file again, salvaging it first when
// force says why it is broken, unless another goroutine did so since gen.
func (s *Store) reopen(gen uint64, force string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.failed != nil {
		return s.failed
	}
	if s.gen != gen {
		return nil
	}
	return s.reopenLocked(force)
}

// reopenLocked is reopen for a caller holding s.mu exclusively.
func (s *Store) reopenLocked(force string) error {
	s.gen++
	if s.db != nil {
		if err := s.db.Close(); err != nil {
			s.cfg.warn("store: closing the file to reopen it", "err", err)
		}
		s.db = nil
	}
	if force != "" {
		s.cfg.warn("store: the file went bad at run time; salvaging it", "reason", force)
	}
	db, rec, err := openDB(s.path, &s.cfg, force)
	if err != nil {
		s.failed = fmt.Errorf("%w: %w", ErrUnavailable, err)
		return s.failed
	}
	s.db = db
	if rec != nil {
		s.recovered = rec
		s.recoveries.Add(1)
		s.signal()
	}
	return nil
}

// settle finds out, after an unsure commit, whether r's record is in the
// file, and makes it durable if it is.
func (s *Store) settle(gen uint64, r *appendReq) (Record, error) {
	cause := r.err
	if err := s.reopen(gen, ""); err != nil {
		return Record{}, fmt.Errorf("store: %s: not recorded: %w (and reopening the store failed: %w)", r.op(), cause, err)
	}
	want := r.rec
	found := false
	err := s.withDB(r.op(), func(db *bbolt.DB) error {
		found = false
		return db.Update(func(tx *bbolt.Tx) error {
			b, err := recordBucket(tx, want.Stream)
			if err != nil {
				return err
			}
			v := b.Get(seqKey(want.Seq))
			if v == nil || !bytes.Equal(v[min(len(v), headerLen):], want.Payload) {
				return errNothing
			}
			found = true
			// Write the record, its counters and (for a response) its
			// ledger entry again: the pages of the failed commit may be
			// lost however the file reads now.
			if err := b.Put(seqKey(want.Seq), bytes.Clone(v)); err != nil {
				return err
			}
			cs, err := loadCounters(tx)
			if err != nil {
				return err
			}
			for i := range cs.dirty {
				cs.dirty[i] = true
			}
			cs.ledgerDirty = true
			if r.respond != nil {
				if err := retouchLedger(tx, r.respond.id); err != nil {
					return err
				}
			}
			return cs.save(tx)
		})
	})
	switch {
	case err == errNothing || (err == nil && !found):
		return Record{}, fmt.Errorf("store: %s: not recorded: %w", r.op(), cause)
	case err != nil:
		return Record{}, fmt.Errorf("store: %s: the record may be stored, but the disk did not confirm it: %w (after %v)", r.op(), err, cause)
	}
	return want, nil
}

// retouchLedger writes the ledger entry of a command id again.
func retouchLedger(tx *bbolt.Tx, id []byte) error {
	ib, lb := tx.Bucket(bucketLedgerID), tx.Bucket(bucketLedger)
	if ib == nil || lb == nil {
		return nil
	}
	k := ib.Get(id)
	if k == nil {
		return nil
	}
	k = bytes.Clone(k)
	if err := ib.Put(bytes.Clone(id), k); err != nil {
		return err
	}
	if v := lb.Get(k); v != nil {
		return lb.Put(k, bytes.Clone(v))
	}
	return nil
}
