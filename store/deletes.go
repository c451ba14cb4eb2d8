package store

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/bbolt"
)

// Deferred deletes.
//
// A record the broker acknowledged is not deleted in a commit of its own
// (two fsyncs and a leaf and a meta page written, as much as its append):
// Delete notes its seq in memory and the deletion rides in the next commit
// that happens anyway, usually the next append. At a station where taps
// come seconds apart, a card record then costs one commit instead of two.
// Pending deletes are committed on their own when they are
// maxPendingDeletes, when the oldest has waited Options.DeleteDelay, by
// CompactIfWasteful and by Close.
//
// A record whose delete is pending is deleted for every reader of the
// Store (Read, Stats, the accounting of the cap) but still in the file: a
// crash or power cut before the commit loses at most maxPendingDeletes
// deletes, and those records, already acknowledged, are sent once more
// (delivery is at least once; consumers drop duplicates by id). Deletes of
// the Inbox stream are never deferred: a command read again would be
// handled again.

// maxPendingDeletes bounds the deletes waiting for a commit, all streams
// together, and so the duplicates a crash can cause.
const maxPendingDeletes = 64

// DefaultDeleteDelay is the longest a delete waits for a commit to ride in
// when Options.DeleteDelay is 0.
const DefaultDeleteDelay = 30 * time.Second

// pendingDeletes are the deletes not yet committed.
type pendingDeletes struct {
	mu    sync.Mutex
	n     int
	seqs  [len(streams)]map[uint64]int64 // seq -> accounted bytes
	timer *time.Timer
}

// has reports whether the delete of st's record seq is pending.
func (p *pendingDeletes) has(i int, seq uint64) bool {
	_, ok := p.seqs[i][seq]
	return ok
}

// snapshot returns a copy of the pending deletes.
func (p *pendingDeletes) snapshot() [len(streams)][]uint64 {
	var out [len(streams)][]uint64
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, m := range p.seqs {
		for seq := range m {
			out[i] = append(out[i], seq)
		}
	}
	return out
}

// done forgets the deletes of snap, now committed, and stops the timer
// when nothing is left.
func (p *pendingDeletes) done(snap [len(streams)][]uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, seqs := range snap {
		for _, seq := range seqs {
			if _, ok := p.seqs[i][seq]; ok {
				delete(p.seqs[i], seq)
				p.n--
			}
		}
	}
	if p.n == 0 && p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
}

// applyDeletes deletes the records of snap in tx and updates cs.
func applyDeletes(tx *bbolt.Tx, cs *counters, snap [len(streams)][]uint64) error {
	for i, seqs := range snap {
		if len(seqs) == 0 {
			continue
		}
		st := streams[i]
		if _, err := deleteTx(tx, cs, st, seqs); err != nil {
			return err
		}
	}
	return nil
}

// deleteTx deletes the records of st with the given seqs in tx (missing
// ones are ignored), updates cs and returns how many it deleted.
func deleteTx(tx *bbolt.Tx, cs *counters, st Stream, seqs []uint64) (int, error) {
	b, err := recordBucket(tx, st)
	if err != nil {
		return 0, err
	}
	c := cs.get(st)
	deleted := 0
	for _, seq := range seqs {
		k := seqKey(seq)
		v := b.Get(k)
		if v == nil {
			continue
		}
		if len(v) < headerLen {
			return 0, fmt.Errorf("record %d: %w", seq, errShortRecord)
		}
		if err := b.Delete(k); err != nil {
			return 0, err
		}
		c.depth--
		c.bytes -= accounted(len(v) - headerLen)
		deleted++
	}
	if deleted > 0 {
		cs.set(st, c)
	}
	return deleted, nil
}

// deferDelete notes the deletes of st's records in sizes (seq -> accounted
// bytes). It reports false when they must be committed now instead: the
// store does not defer, st is the Inbox, or there would be too many.
func (s *Store) deferDelete(st Stream, sizes map[uint64]int64) bool {
	if s.cfg.deleteDelay < 0 || st == Inbox {
		return false
	}
	p := &s.pending
	p.mu.Lock()
	defer p.mu.Unlock()
	i := streamIndex(st)
	add := 0
	for seq := range sizes {
		if !p.has(i, seq) {
			add++
		}
	}
	if p.n+add > maxPendingDeletes {
		return false
	}
	if p.seqs[i] == nil {
		p.seqs[i] = map[uint64]int64{}
	}
	for seq, n := range sizes {
		if !p.has(i, seq) {
			p.seqs[i][seq] = n
			p.n++
		}
	}
	if p.n > 0 && p.timer == nil {
		p.timer = time.AfterFunc(s.cfg.deleteDelay, s.flushDeletes)
	}
	return true
}

// flushDeletes commits the pending deletes in a transaction of their own
// (the timer's). An error leaves them pending, for the next commit.
func (s *Store) flushDeletes() {
	snap := s.pending.snapshot()
	if empty(snap) {
		return
	}
	err := s.withDB("delete", func(db *bbolt.DB) error {
		return commitDeletes(db, snap)
	})
	if errors.Is(err, ErrClosed) {
		return
	}
	if err != nil {
		s.cfg.warn("store: committing deletes; they are tried again with the next commit", "err", err)
		s.pending.mu.Lock()
		if s.pending.timer != nil {
			s.pending.timer.Reset(s.cfg.deleteDelay)
		}
		s.pending.mu.Unlock()
		return
	}
	s.pending.done(snap)
}

// flushDeletesLocked commits the pending deletes for a caller holding s.mu
// exclusively (Close, compaction).
func (s *Store) flushDeletesLocked() error {
	snap := s.pending.snapshot()
	if empty(snap) || s.db == nil {
		return nil
	}
	var err error
	if fault := guard(func() { err = commitDeletes(s.db, snap) }); fault != nil {
		return fmt.Errorf("store: delete: %v", fault)
	}
	if err != nil {
		return fmt.Errorf("store: delete: %w", err)
	}
	s.pending.done(snap)
	return nil
}

// commitDeletes deletes the records of snap in one transaction.
func commitDeletes(db *bbolt.DB, snap [len(streams)][]uint64) error {
	return db.Update(func(tx *bbolt.Tx) error {
		cs, err := loadCounters(tx)
		if err != nil {
			return err
		}
		if err := applyDeletes(tx, &cs, snap); err != nil {
			return err
		}
		return cs.save(tx)
	})
}

func empty(snap [len(streams)][]uint64) bool {
	for _, s := range snap {
		if len(s) > 0 {
			return false
		}
	}
	return true
}

// pendingOf returns, for Stats, the count and accounted bytes of st's
// pending deletes.
func (s *Store) pendingOf(st Stream) (n int, bytes int64) {
	p := &s.pending
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.seqs[streamIndex(st)] {
		n++
		bytes += b
	}
	return n, bytes
}

// pendingSet returns the seqs of st whose deletes are pending, or nil.
func (s *Store) pendingSet(st Stream) map[uint64]bool {
	p := &s.pending
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.seqs[streamIndex(st)]
	if len(m) == 0 {
		return nil
	}
	out := make(map[uint64]bool, len(m))
	for seq := range m {
		out[seq] = true
	}
	return out
}
