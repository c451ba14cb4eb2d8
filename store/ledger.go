package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"go.etcd.io/bbolt"
)

// LedgerEntry is what the store remembers of an executed command.
type LedgerEntry struct {
	ID       string    // the command id
	Digest   []byte    // SHA-256 of the command's bytes, to tell a redelivery from a different command reusing the id
	At       time.Time // when it was executed, by the caller's trusted clock
	Response []byte    // the response payload (filled in by Respond from build's result)
	// Keep protects the entry until that time: while Keep is after the At of the newest entry
	// recorded, the entry is not pruned, whatever the count, bytes or age of the ledger, and
	// entries without protection never push it out. Zero means no protection. A signed
	// command's entry is kept until its expires_at, so its captured bytes cannot run again.
	Keep time.Time
}

// Limits of ledger entries, and their size in the ledger's byte bound.
const (
	// maxLedgerID is the longest command id Respond accepts.
	maxLedgerID = 255
	// maxLedgerDigest is the longest digest Respond accepts (a SHA-512).
	maxLedgerDigest = 64
	// ledgerKeepFlag, set in the digest length byte, says that 8 bytes of Keep (Unix
	// nanoseconds) follow the digest. Entries written before Keep existed never have it.
	ledgerKeepFlag = 0x80
	// ledgerHeaderLen is the fixed part of a ledger value: at, id length
	// and digest length.
	ledgerHeaderLen = 8 + 1 + 1
	// ledgerOverhead is added to the value and id lengths of an entry
	// when bounding the ledger's bytes: the 8-byte ledger key, the 8-byte
	// ledger-id value and two 16-byte bbolt leaf elements.
	ledgerOverhead = 8 + 8 + 16 + 16
)

// respondReq is what Respond adds to an append of the Responses stream.
type respondReq struct {
	inboxSeq uint64
	id       []byte
	digest   []byte
	at       time.Time
	keep     time.Time
	noLedger bool // Answer: no ledger entry
}

// Answer records the response to a command that was not executed (refused, or unreadable) and
// forgets the command, in one transaction, durably, as Respond does but without a ledger
// entry: what a station refuses never takes a place in the ledger, so refused input cannot push
// out the entry of an executed command.
func (s *Store) Answer(inboxSeq uint64, build func(seq uint64) ([]byte, error)) (Record, error) {
	if build == nil {
		return Record{}, errors.New("store: answer: nil build function")
	}
	if err := s.acquire(); err != nil {
		return Record{}, err
	}
	defer s.mu.RUnlock()
	r := &appendReq{
		st:      Responses,
		class:   Critical,
		build:   build,
		respond: &respondReq{inboxSeq: inboxSeq, noLedger: true},
		wake:    make(chan bool, 1),
	}
	s.submit(r)
	if r.panicked {
		panic(r.panicVal)
	}
	return r.rec, r.err
}

// MarkStarted records e, with e.Response as its response, in the ledger, durably, before a
// command with side effects runs: if the process dies before Respond replaces the entry, the
// command is found in the ledger and answered with e.Response (a "failed: interrupted"
// response) instead of running again. It touches no stream. The limits are those of Respond.
func (s *Store) MarkStarted(e LedgerEntry) error {
	switch {
	case e.ID == "":
		return errors.New("store: mark started: empty command id")
	case len(e.ID) > maxLedgerID:
		return fmt.Errorf("%w: command id of %d bytes, limit %d", ErrTooLarge, len(e.ID), maxLedgerID)
	case len(e.Digest) > maxLedgerDigest:
		return fmt.Errorf("%w: command digest of %d bytes, limit %d", ErrTooLarge, len(e.Digest), maxLedgerDigest)
	case len(e.Response) > MaxPayload:
		return fmt.Errorf("%w: response of %d bytes, limit %d", ErrTooLarge, len(e.Response), MaxPayload)
	}
	if err := s.acquire(); err != nil {
		return err
	}
	defer s.mu.RUnlock()
	at := e.At
	if at.IsZero() {
		at = s.cfg.now()
	}
	q := &respondReq{id: []byte(e.ID), digest: bytes.Clone(e.Digest), at: clampTime(at), keep: keepTime(e.Keep)}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		cs, err := loadCounters(tx)
		if err != nil {
			return err
		}
		if err := s.respondTx(tx, &cs, q, e.Response); err != nil {
			return err
		}
		return cs.save(tx)
	})
	if err != nil {
		return fmt.Errorf("store: mark started: %w", err)
	}
	return nil
}

// keepTime is t clamped as At is; the zero time stays zero.
func keepTime(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return clampTime(t)
}

// Respond records the response to a fleet command and forgets the command,
// in one transaction, durably (fsynced) before it returns:
//
//   - it appends the response built by build to the Responses stream, with
//     class Critical and its seq assigned as for [Store.Append];
//   - it records e, with Response set to the built payload, in the command
//     ledger under e.ID, replacing any entry of that id;
//   - if inboxSeq is not 0, it deletes that record of the Inbox stream (a
//     record that is not there is not an error).
//
// If build fails or panics, or the response is refused, nothing changes, as
// for Append. The bytes of the inbox record count as free when deciding
// whether the response fits, so the response to a stored command fits if it
// is no larger than the command.
//
// e.ID must not be empty; an ID longer than 255 bytes, a Digest longer than
// 64 bytes or a response longer than MaxPayload is refused with
// ErrTooLarge. A zero e.At means now (Options.Now); e.At is kept in UTC to
// the nanosecond, clamped to the years 1678 to 2262. e.Response is ignored.
//
// After recording the entry, Respond prunes the ledger, oldest (first
// recorded) first: the entries beyond Options.LedgerMaxEntries or beyond the ledger's byte bound
// (see Options.LedgerMaxEntries), and those whose At is older than
// Options.LedgerMaxAge. The entry just recorded is never pruned, nor is an entry whose Keep is
// after e.At (protected entries count toward the bounds, so they may exceed them; only the
// caller's trusted commands make protected entries). Age pruning stops at the first
// unprotected entry young enough: an entry stamped by a clock that ran ahead may keep later
// ones a while longer, within the count and byte bounds.
//
// build is called as by Append: once, inside the write transaction, possibly
// on another goroutine; it must be quick, must not call the Store and
// should have no side effects.
func (s *Store) Respond(inboxSeq uint64, e LedgerEntry, build func(seq uint64) ([]byte, error)) (Record, error) {
	switch {
	case e.ID == "":
		return Record{}, errors.New("store: respond: empty command id")
	case len(e.ID) > maxLedgerID:
		return Record{}, fmt.Errorf("%w: command id of %d bytes, limit %d", ErrTooLarge, len(e.ID), maxLedgerID)
	case len(e.Digest) > maxLedgerDigest:
		return Record{}, fmt.Errorf("%w: command digest of %d bytes, limit %d", ErrTooLarge, len(e.Digest), maxLedgerDigest)
	case build == nil:
		return Record{}, errors.New("store: respond: nil build function")
	}
	at := e.At
	if at.IsZero() {
		at = s.cfg.now()
	}
	r := &appendReq{
		st:    Responses,
		class: Critical,
		build: build,
		respond: &respondReq{
			inboxSeq: inboxSeq,
			id:       []byte(e.ID),
			digest:   bytes.Clone(e.Digest),
			at:       clampTime(at),
			keep:     keepTime(e.Keep),
		},
		wake: make(chan bool, 1),
	}
	return s.do(r)
}

// Ledger returns the entry for a command id, or nil, nil if there is none.
// The entry is a copy. An entry stays until Respond prunes it, so one older
// than Options.LedgerMaxAge may still be returned.
func (s *Store) Ledger(id string) (*LedgerEntry, error) {
	if id == "" || len(id) > maxLedgerID {
		return nil, nil // Respond never records such an id
	}
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	var out *LedgerEntry
	err := s.db.View(func(tx *bbolt.Tx) error {
		lb, ib, err := ledgerBuckets(tx)
		if err != nil {
			return err
		}
		k := ib.Get([]byte(id))
		if k == nil {
			return nil
		}
		v := lb.Get(k)
		if v == nil {
			return nil // an index entry left behind: no entry
		}
		e, err := decodeLedger(v)
		if err != nil {
			return err
		}
		if e.ID != id {
			return nil
		}
		out = &e
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: ledger: %w", err)
	}
	return out, nil
}

// DropInbox deletes an inbox record that gets no response (unreadable
// input); it is Delete(Inbox, seq).
func (s *Store) DropInbox(seq uint64) error { return s.Delete(Inbox, seq) }

// inboxCredit checks the inbox record a Respond deletes and returns its
// accounted bytes, or 0 if there is none.
func inboxCredit(tx *bbolt.Tx, seq uint64) (int64, error) {
	if seq == 0 {
		return 0, nil
	}
	b, err := recordBucket(tx, Inbox)
	if err != nil {
		return 0, err
	}
	v := b.Get(seqKey(seq))
	if v == nil {
		return 0, nil
	}
	if len(v) < headerLen {
		return 0, fmt.Errorf("inbox record %d: %w", seq, errShortRecord)
	}
	return accounted(len(v) - headerLen), nil
}

// respondTx does the part of a Respond that follows the append of the
// response: it deletes the inbox record, records the ledger entry and
// prunes the ledger. It fails only when bbolt does.
func (s *Store) respondTx(tx *bbolt.Tx, cs *counters, q *respondReq, response []byte) error {
	if q.inboxSeq != 0 {
		b, err := recordBucket(tx, Inbox)
		if err != nil {
			return err
		}
		k := seqKey(q.inboxSeq)
		if v := b.Get(k); v != nil {
			n := accounted(len(v) - headerLen) // checked by inboxCredit
			if err := b.Delete(k); err != nil {
				return err
			}
			c := cs.get(Inbox)
			c.depth--
			c.bytes -= n
			cs.set(Inbox, c)
		}
	}
	if q.noLedger {
		return nil
	}

	lb, ib, err := ledgerBuckets(tx)
	if err != nil {
		return err
	}
	lc := cs.ledger
	if old := ib.Get(q.id); old != nil {
		old = bytes.Clone(old) // the slice is invalid once the bucket changes
		if v := lb.Get(old); v != nil {
			n := ledgerBytes(v)
			if err := lb.Delete(old); err != nil {
				return err
			}
			lc.depth--
			lc.bytes -= n
		}
	}
	seq := lc.last + 1
	v := encodeLedger(q.at, q.id, q.digest, q.keep, response)
	// Keys only ever grow, as for records.
	lb.FillPercent = 1.0
	if err := lb.Put(seqKey(seq), v); err != nil {
		return err
	}
	if err := ib.Put(q.id, seqKey(seq)); err != nil {
		return err
	}
	lc.last = seq
	lc.depth++
	lc.bytes += ledgerBytes(v)
	if err := s.pruneLedger(lb, ib, &lc, seq, q.at); err != nil {
		return err
	}
	cs.ledger, cs.ledgerDirty = lc, true
	return nil
}

// pruneLedger deletes the oldest ledger entries that are beyond the count
// or byte bound or older than the maximum age, never the entry keep nor a
// later one nor one protected at now (its Keep after now), and updates lc.
func (s *Store) pruneLedger(lb, ib *bbolt.Bucket, lc *streamCounters, keep uint64, now time.Time) error {
	cutoff := s.cfg.now().Add(-s.cfg.ledgerMaxAge)
	type victim struct{ key, id []byte }
	var victims []victim
	depth, size := lc.depth, lc.bytes
	// Collect first: deleting while a cursor iterates skips keys.
	c := lb.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) == 8 && binary.BigEndian.Uint64(k) >= keep {
			break
		}
		at, id, ok := ledgerHead(k, v)
		if ok && ledgerKeep(v).After(now) {
			continue // protected: it stays, and counts
		}
		if ok && depth <= s.cfg.ledgerMaxEntries && size <= s.cfg.ledgerMaxBytes && !at.Before(cutoff) {
			break
		}
		// Beyond a bound, too old, or unreadable.
		victims = append(victims, victim{key: bytes.Clone(k), id: bytes.Clone(id)})
		depth--
		size -= ledgerBytes(v)
	}
	for _, vi := range victims {
		if err := lb.Delete(vi.key); err != nil {
			return err
		}
		if vi.id != nil && bytes.Equal(ib.Get(vi.id), vi.key) {
			if err := ib.Delete(vi.id); err != nil {
				return err
			}
		}
	}
	lc.depth, lc.bytes = max(depth, 0), max(size, 0)
	return nil
}

// ledgerBuckets returns the ledger and its index by command id.
func ledgerBuckets(tx *bbolt.Tx) (ledger, byID *bbolt.Bucket, err error) {
	ledger, byID = tx.Bucket(bucketLedger), tx.Bucket(bucketLedgerID)
	if ledger == nil || byID == nil {
		return nil, nil, fmt.Errorf("ledger: %w", errMissingBucket)
	}
	return ledger, byID, nil
}

// clampTime returns t, or the nearest time whose Unix nanoseconds fit in
// an int64.
func clampTime(t time.Time) time.Time {
	lo, hi := time.Unix(0, math.MinInt64), time.Unix(0, math.MaxInt64)
	switch {
	case t.Before(lo):
		return lo.UTC()
	case t.After(hi):
		return hi.UTC()
	}
	return t.UTC()
}

func encodeLedger(at time.Time, id, digest []byte, keep time.Time, response []byte) []byte {
	v := make([]byte, 0, ledgerHeaderLen+len(id)+len(digest)+8+len(response))
	v = binary.BigEndian.AppendUint64(v, uint64(at.UnixNano()))
	v = append(v, byte(len(id)))
	v = append(v, id...)
	if keep.IsZero() {
		v = append(v, byte(len(digest)))
		v = append(v, digest...)
	} else {
		v = append(v, byte(len(digest))|ledgerKeepFlag)
		v = append(v, digest...)
		v = binary.BigEndian.AppendUint64(v, uint64(keep.UnixNano()))
	}
	return append(v, response...)
}

// ledgerTail returns the digest length and the length of what follows the digest before the
// response (8 with Keep, else 0) of a value whose header ledgerHead accepted.
func ledgerTail(v []byte) (digest, keep int) {
	b := v[9+int(v[8])]
	if b&ledgerKeepFlag != 0 {
		return int(b &^ ledgerKeepFlag), 8
	}
	return int(b), 0
}

// ledgerKeep returns the Keep of a value ledgerHead accepted, or the zero time.
func ledgerKeep(v []byte) time.Time {
	d, k := ledgerTail(v)
	if k == 0 {
		return time.Time{}
	}
	off := 10 + int(v[8]) + d
	return time.Unix(0, int64(binary.BigEndian.Uint64(v[off:off+8]))).UTC()
}

// errBadLedger marks a ledger value that cannot be decoded.
var errBadLedger = errors.New("malformed ledger entry")

// ledgerHead returns the time and command id of a ledger entry, without
// copying; ok is false if the key or value is malformed.
func ledgerHead(k, v []byte) (at time.Time, id []byte, ok bool) {
	if len(k) != 8 || len(v) < ledgerHeaderLen {
		return time.Time{}, nil, false
	}
	n := int(v[8])
	if n == 0 || len(v) < ledgerHeaderLen+n {
		return time.Time{}, nil, false
	}
	d, kl := ledgerTail(v)
	if d > maxLedgerDigest || len(v) < ledgerHeaderLen+n+d+kl {
		return time.Time{}, nil, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(v))).UTC(), v[9 : 9+n], true
}

// decodeLedger copies an entry out of a transaction.
func decodeLedger(v []byte) (LedgerEntry, error) {
	at, id, ok := ledgerHead(make([]byte, 8), v)
	if !ok {
		return LedgerEntry{}, errBadLedger
	}
	rest := v[9+len(id):]
	d, k := ledgerTail(v)
	return LedgerEntry{
		ID:       string(id),
		Digest:   bytes.Clone(rest[1 : 1+d]),
		At:       at,
		Keep:     ledgerKeep(v),
		Response: bytes.Clone(rest[1+d+k:]),
	}, nil
}

// ledgerBytes is what a ledger entry with value v counts against the
// ledger's byte bound: the value, the id again as the key of ledger-id, and
// ledgerOverhead. A malformed value counts its own length and the overhead.
func ledgerBytes(v []byte) int64 {
	n := len(v) + ledgerOverhead
	if len(v) > 8 && len(v) >= ledgerHeaderLen+int(v[8]) {
		n += int(v[8])
	}
	return int64(n)
}
