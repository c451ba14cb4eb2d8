package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Idempotency keys (see [Store.AppendKeyed]). Two buckets, created by the
// first keyed append (older files and agents do without them):
//
//	keys     <key>                 -> at (8 bytes BE, Unix ns) + seq (8 bytes BE) +
//	                                  stream index (1 byte) + digest length (1 byte) +
//	                                  digest + ref
//	keys-at  at (8 bytes BE) + key -> empty, the keys in the order they were recorded
//
// Key bytes are not accounted against MaxBytes, like the command ledger: a
// full store never forgets a key early, and keys never refuse a record.

// ErrKeyConflict is returned by AppendKeyed when a key is already recorded
// with a different digest: the caller reused a key for a different record.
// It stands beside the key API rather than in the sentinel block of
// store.go so that the key API is one file.
var ErrKeyConflict = errors.New("store: key already used for a different record")

// Limits and retention of idempotency keys.
const (
	// MaxKeyLen is the longest key AppendKeyed accepts.
	MaxKeyLen = 128
	// maxKeyDigest is the longest digest AppendKeyed accepts (a SHA-512).
	maxKeyDigest = 64
	// maxKeyRef is the longest ref AppendKeyed accepts.
	maxKeyRef = 255
	// KeyRetention is how long a key is remembered at least, by the wall
	// clock (Options.Now), and in any case until its record has left the
	// store (the broker acknowledged it).
	KeyRetention = 7 * 24 * time.Hour
	// keyPruneScan bounds the keys a keyed append examines for pruning, so
	// that its cost does not grow with the number of keys kept.
	keyPruneScan = 64
	// keyHeaderLen is the fixed part of a key value.
	keyHeaderLen = 8 + 8 + 1 + 1
)

var (
	bucketKeys   = []byte("keys")
	bucketKeysAt = []byte("keys-at")
)

// KeyEntry is what the store remembers of a keyed append.
type KeyEntry struct {
	Key    string
	Digest []byte    // the caller's digest of what was asked, to tell a retry from a reuse
	Ref    []byte    // the caller's reference to the record (the record id)
	Stream Stream    // where the record went
	Seq    uint64    // its seq there
	At     time.Time // when it was recorded (Options.Now, UTC)
}

// Keyed is one record of a keyed append.
type Keyed struct {
	Key    string                           // 1 to MaxKeyLen bytes
	Digest []byte                           // up to 64 bytes; same key and digest means the same record
	Ref    []byte                           // up to 255 bytes, kept with the key
	Build  func(seq uint64) ([]byte, error) // as for Append
}

// KeyedResult is the outcome of one record of a keyed append.
type KeyedResult struct {
	// Repeat is set when the key was already recorded with the same
	// digest: nothing was appended, and Entry is what was recorded then.
	Repeat bool
	// Record is the record appended; zero for a repeat.
	Record Record
	// Entry is the key's entry, new or remembered.
	Entry KeyEntry
}

// ItemError is the error of a keyed append that failed because of one of
// its records: Index is that record's position.
type ItemError struct {
	Index int
	Err   error
}

func (e *ItemError) Error() string { return fmt.Sprintf("record %d: %v", e.Index+1, e.Err) }
func (e *ItemError) Unwrap() error { return e.Err }

// AppendKeyed appends records of stream st with class c, each under a
// caller's key, all in one fsynced transaction: either every new record is
// stored with its key, or nothing is.
//
// A record whose key is already recorded with the same digest is not
// appended again: its result is a Repeat with the remembered entry (even
// when its record has left the store since). A key recorded with another
// digest fails the whole call with an *ItemError wrapping ErrKeyConflict. A
// key given twice in one call is treated the same way: the second is a
// repeat of the first, or a conflict.
//
// A record that is refused (ErrFull, ErrTooLarge) or whose build fails
// fails the whole call with an *ItemError naming it; errors.Is sees through
// it. A build that panics makes AppendKeyed panic, with nothing written.
// Keyed appends are not grouped with concurrent Appends: each call is one
// transaction of its own.
//
// Keys are remembered at least KeyRetention after they were recorded and
// at least as long as their record is stored; each keyed append prunes a
// few keys past both bounds, oldest first.
func (s *Store) AppendKeyed(st Stream, c Class, items []Keyed) ([]KeyedResult, error) {
	if !st.valid() {
		return nil, fmt.Errorf("store: append keyed: unknown stream %q", st)
	}
	if c != Normal && c != Critical {
		return nil, fmt.Errorf("store: append keyed: class %s: want normal or critical", c)
	}
	for i, it := range items {
		var err error
		switch {
		case it.Key == "":
			err = errors.New("store: append keyed: empty key")
		case len(it.Key) > MaxKeyLen:
			err = fmt.Errorf("%w: key of %d bytes, limit %d", ErrTooLarge, len(it.Key), MaxKeyLen)
		case len(it.Digest) > maxKeyDigest:
			err = fmt.Errorf("%w: digest of %d bytes, limit %d", ErrTooLarge, len(it.Digest), maxKeyDigest)
		case len(it.Ref) > maxKeyRef:
			err = fmt.Errorf("%w: ref of %d bytes, limit %d", ErrTooLarge, len(it.Ref), maxKeyRef)
		case it.Build == nil:
			err = errors.New("store: append keyed: nil build function")
		}
		if err != nil {
			return nil, &ItemError{Index: i, Err: err}
		}
	}
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()

	now := clampTime(s.cfg.now())
	var (
		results  []KeyedResult
		reqs     []*appendReq
		panicked *appendReq
	)
	snap := s.pending.snapshot() // pending deletes ride in this commit (deletes.go)
	err := s.db.Update(func(tx *bbolt.Tx) error {
		// The closure may not run again, but keep it free of effects outside
		// the transaction all the same: results are rebuilt each time.
		results, reqs, panicked = make([]KeyedResult, len(items)), reqs[:0], nil
		kb, err := tx.CreateBucketIfNotExists(bucketKeys)
		if err != nil {
			return err
		}
		ab, err := tx.CreateBucketIfNotExists(bucketKeysAt)
		if err != nil {
			return err
		}
		cs, err := loadCounters(tx)
		if err != nil {
			return err
		}
		if err := applyDeletes(tx, &cs, snap); err != nil {
			return err
		}
		changed := false
		for i, it := range items {
			if v := kb.Get([]byte(it.Key)); v != nil {
				e, err := decodeKey(it.Key, v)
				if err != nil {
					return err
				}
				if !bytes.Equal(e.Digest, it.Digest) {
					return &ItemError{Index: i, Err: fmt.Errorf("%w: key %q", ErrKeyConflict, it.Key)}
				}
				results[i] = KeyedResult{Repeat: true, Entry: e}
				continue
			}
			r := &appendReq{st: st, class: c, build: it.Build}
			if err := s.appendOne(tx, &cs, r); err != nil {
				return err
			}
			reqs = append(reqs, r)
			if r.panicked {
				panicked = r
				return errNothing
			}
			if r.err != nil {
				return &ItemError{Index: i, Err: r.err}
			}
			e := KeyEntry{Key: it.Key, Digest: bytes.Clone(it.Digest), Ref: bytes.Clone(it.Ref),
				Stream: st, Seq: r.rec.Seq, At: now}
			if err := kb.Put([]byte(it.Key), encodeKey(e)); err != nil {
				return err
			}
			if err := ab.Put(keyAtKey(now, it.Key), nil); err != nil {
				return err
			}
			results[i] = KeyedResult{Record: r.rec, Entry: e}
			changed = true
		}
		pruned, err := pruneKeys(tx, kb, ab, now)
		if err != nil {
			return err
		}
		if !changed && !pruned {
			return errNothing
		}
		return cs.save(tx)
	})
	if panicked != nil {
		panic(panicked.panicVal)
	}
	var ie *ItemError
	switch {
	case err == nil:
		s.pending.done(snap)
		for _, r := range reqs {
			s.evicted.Add(r.evicted)
		}
		if len(reqs) > 0 {
			s.signal()
		}
		return results, nil
	case err == errNothing:
		return results, nil
	case errors.As(err, &ie):
		if errors.Is(ie.Err, ErrFull) {
			s.refused.Add(1)
		}
		return nil, err
	case errors.Is(err, berrors.ErrMaxSizeReached):
		s.refused.Add(1)
		return nil, fmt.Errorf("%w: the file reached its size limit: %w", ErrFull, err)
	default:
		return nil, fmt.Errorf("store: append keyed %s: %w", st, err)
	}
}

// Key returns the entry of a key, or nil, nil if the key is not (or no
// longer) recorded. The entry is a copy.
func (s *Store) Key(key string) (*KeyEntry, error) {
	if key == "" || len(key) > MaxKeyLen {
		return nil, nil // AppendKeyed never records such a key
	}
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	var out *KeyEntry
	err := s.db.View(func(tx *bbolt.Tx) error {
		kb := tx.Bucket(bucketKeys)
		if kb == nil {
			return nil
		}
		v := kb.Get([]byte(key))
		if v == nil {
			return nil
		}
		e, err := decodeKey(key, v)
		out = &e
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("store: key: %w", err)
	}
	return out, nil
}

// pruneKeys deletes keys older than KeyRetention whose record has left the
// store, oldest first, examining at most keyPruneScan keys. A key whose
// record is still stored is kept and skipped. It reports whether it deleted
// any.
func pruneKeys(tx *bbolt.Tx, kb, ab *bbolt.Bucket, now time.Time) (bool, error) {
	cutoff := now.Add(-KeyRetention)
	var drop [][]byte // keys-at keys; deleted after the cursor is done
	c := ab.Cursor()
	n := 0
	for k, _ := c.First(); k != nil && n < keyPruneScan; k, _ = c.Next() {
		n++
		if len(k) < 8 {
			drop = append(drop, bytes.Clone(k)) // malformed: nothing to keep
			continue
		}
		if time.Unix(0, int64(binary.BigEndian.Uint64(k))).After(cutoff) {
			break
		}
		key := k[8:]
		if v := kb.Get(key); v != nil {
			e, err := decodeKey(string(key), v)
			if err == nil && !e.At.Equal(decodeAdded(k)) {
				// The key was recorded again since (after being pruned
				// from keys but not from keys-at): this index entry is stale.
				drop = append(drop, bytes.Clone(k))
				continue
			}
			if err == nil && e.Stream.valid() {
				rb, err := recordBucket(tx, e.Stream)
				if err != nil {
					return false, err
				}
				if rb.Get(seqKey(e.Seq)) != nil {
					continue // not yet acknowledged: keep
				}
			}
		}
		drop = append(drop, bytes.Clone(k))
	}
	for _, k := range drop {
		if len(k) >= 8 {
			if v := kb.Get(k[8:]); v != nil && len(v) >= 8 && bytes.Equal(v[:8], k[:8]) {
				if err := kb.Delete(k[8:]); err != nil {
					return false, err
				}
			}
		}
		if err := ab.Delete(k); err != nil {
			return false, err
		}
	}
	return len(drop) > 0, nil
}

func keyAtKey(at time.Time, key string) []byte {
	k := make([]byte, 8, 8+len(key))
	binary.BigEndian.PutUint64(k, uint64(at.UnixNano()))
	return append(k, key...)
}

func encodeKey(e KeyEntry) []byte {
	v := make([]byte, keyHeaderLen, keyHeaderLen+len(e.Digest)+len(e.Ref))
	binary.BigEndian.PutUint64(v, uint64(e.At.UnixNano()))
	binary.BigEndian.PutUint64(v[8:], e.Seq)
	v[16] = byte(streamIndex(e.Stream))
	v[17] = byte(len(e.Digest))
	v = append(v, e.Digest...)
	return append(v, e.Ref...)
}

var errBadKey = errors.New("malformed key entry")

// decodeKey copies a key entry out of a transaction.
func decodeKey(key string, v []byte) (KeyEntry, error) {
	if len(v) < keyHeaderLen || int(v[16]) >= len(streams) || len(v) < keyHeaderLen+int(v[17]) {
		return KeyEntry{}, fmt.Errorf("key %q: %w", key, errBadKey)
	}
	dl := int(v[17])
	return KeyEntry{
		Key:    key,
		At:     decodeAdded(v),
		Seq:    binary.BigEndian.Uint64(v[8:]),
		Stream: streams[v[16]],
		Digest: bytes.Clone(v[keyHeaderLen : keyHeaderLen+dl]),
		Ref:    bytes.Clone(v[keyHeaderLen+dl:]),
	}, nil
}
