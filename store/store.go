package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
)

// Errors returned by the store. Callers test for them with errors.Is; the
// returned errors usually wrap them with more detail.
var (
	// ErrFull is returned by Append when the record does not fit: the store
	// is at its cap for the record's class and telemetry eviction cannot make
	// enough room, or the file has reached its size limit.
	ErrFull = errors.New("store: full")
	// ErrClosed is returned by every method called after Close.
	ErrClosed = errors.New("store: closed")
	// ErrLocked is returned by Open when another process holds the file
	// lock, usually another agent running on the same data directory.
	ErrLocked = errors.New("store: locked by another process")
	// ErrTooLarge is returned by Append and Respond when a payload is
	// longer than MaxPayload, by Respond when a command id or digest is too
	// long, and by PutSetting when a key or value is too long.
	ErrTooLarge = errors.New("store: too large")
)

// Stream names a queue of records. Each stream has its own sequence.
type Stream string

// The streams of the station agent.
const (
	Events    Stream = "events"    // records of the events topic (card taps, door, boot, alarms…)
	Responses Stream = "resp"      // command responses
	Telemetry Stream = "telemetry" // telemetry; the only stream whose records are evicted
	// Inbox holds received fleet commands until they are executed. Append
	// to it with class Critical.
	Inbox Stream = "inbox"
)

// streams lists every stream the store accepts, in a fixed order.
var streams = [...]Stream{Events, Responses, Telemetry, Inbox}

// valid reports whether st is one of the known streams.
func (st Stream) valid() bool {
	for _, s := range streams {
		if st == s {
			return true
		}
	}
	return false
}

// Class says what happens to an append when the store is full.
//
// Whatever the class, the oldest Telemetry records are evicted first when an
// append would go over the cap; the class decides how far the new record may
// go once telemetry is gone.
type Class int

// The classes of records.
const (
	// Evictable is for Telemetry records, which may later be evicted to make
	// room for newer records. Up to MaxBytes, like Normal. Only the Telemetry
	// stream accepts it.
	Evictable Class = iota
	// Normal records (card records) are refused with ErrFull once stored
	// bytes would go over MaxBytes.
	Normal
	// Critical records (alarms, boot, command responses) may use a reserve
	// above MaxBytes; ErrFull only when the reserve is spent too.
	Critical
)

// String returns the class name.
func (c Class) String() string {
	switch c {
	case Evictable:
		return "evictable"
	case Normal:
		return "normal"
	case Critical:
		return "critical"
	}
	return fmt.Sprintf("Class(%d)", int(c))
}

// Sizes and limits.
const (
	// DefaultMaxBytes is the cap used when Options.MaxBytes is 0.
	DefaultMaxBytes = 256 << 20
	// MinReserve is the smallest reserve above MaxBytes for Critical records;
	// the reserve is MaxBytes/16 or MinReserve, whichever is larger.
	MinReserve = 64 << 10
	// RecordOverhead is added to the payload length of every record when
	// accounting stored bytes: the 8-byte key, the 8-byte record header and
	// bbolt's 16-byte leaf element.
	RecordOverhead = 32
	// MaxPayload is the longest payload Append accepts.
	MaxPayload = 256 << 10
	// DefaultCheckMaxBytes is the file size up to which Open runs the full
	// consistency check when Options.CheckMaxBytes is 0.
	DefaultCheckMaxBytes = 64 << 20
	// DefaultTimeout is the file lock wait used when Options.Timeout is 0.
	DefaultTimeout = 2 * time.Second
	// DefaultLedgerMaxEntries is the command ledger bound used when
	// Options.LedgerMaxEntries is 0.
	DefaultLedgerMaxEntries = 10000
	// DefaultLedgerMaxAge is the command ledger retention used when
	// Options.LedgerMaxAge is 0.
	DefaultLedgerMaxAge = 30 * 24 * time.Hour
)

// Options configure a Store. A nil *Options means all defaults.
type Options struct {
	// MaxBytes caps the accounted bytes of stored records (payload plus
	// RecordOverhead each), all streams together. Critical records may go
	// up to MaxBytes plus a reserve of max(MaxBytes/16, MinReserve).
	// 0 means DefaultMaxBytes (256 MiB); negative is an error.
	//
	// The bbolt file is limited (bbolt Options.MaxSize) to
	// 33/16·(MaxBytes+2·reserve) + 32 MiB: one reserve for Critical
	// records, one for the command ledger (see LedgerMaxEntries). Measured
	// with records of 100 B to 64 KiB, filled to the cap, churned by
	// eviction and drained in pages of 64, the pages in use are 1.25 (300-byte records) to 2.02 (1 KiB and
	// 2 KiB records) times the accounted bytes: bbolt splits a growing leaf
	// before it is full, so records that fit three or two to a page fill
	// only two or one. The 32 MiB cover bbolt's 16 MiB growth step and
	// pages of recent transactions. So the cap, not the file limit, is what
	// refuses records; should the file limit be reached anyway, Append fails
	// with ErrFull.
	//
	// On 32-bit platforms the file limit is at most 512 MiB, so the memory
	// map never needs more than 512 MiB of contiguous address space (larger
	// maps have failed on Raspberry Pi boards). A MaxBytes above about
	// 206 MiB (the default included) is lowered to fit there, and Stats
	// reports the value in force.
	MaxBytes int64
	// Timeout is how long Open waits for the file lock held by another
	// process before it fails with ErrLocked. 0 means DefaultTimeout (2 s).
	Timeout time.Duration
	// Now is the wall clock for Record.Added, for the name of a file moved
	// aside, for the At of a ledger entry given without one and for
	// pruning the ledger by age. nil means time.Now.
	Now func() time.Time
	// CheckMaxBytes bounds the cost of the consistency check at Open: a file
	// up to this size gets bbolt's full check (every page is read), a larger
	// one a quick check of the metadata, the buckets and the first and last
	// record of every stream and entry of the command ledger. Check always
	// runs the full check.
	// 0 means DefaultCheckMaxBytes (64 MiB); negative means always full.
	CheckMaxBytes int64
	// Logger receives warnings about recovery, counter repair and
	// compaction. nil means quiet. Payloads are never logged.
	Logger *slog.Logger
	// LedgerMaxEntries bounds the command ledger (see Store.Respond): when
	// Respond has recorded an entry, the oldest entries beyond this many
	// are pruned. 0 means DefaultLedgerMaxEntries (10000); negative is an
	// error.
	//
	// The ledger is also bounded in bytes: its entries (command id twice,
	// digest, response, and 58 bytes of overhead each) are kept within the
	// Critical reserve, max(MaxBytes/16, MinReserve), pruning the oldest
	// beyond that, except that the entry just recorded is always kept.
	// Ledger bytes are not part of the accounted bytes capped by MaxBytes
	// (a full ledger never refuses a record); the file limit leaves room
	// for them.
	LedgerMaxEntries int
	// LedgerMaxAge is how long the command ledger remembers an executed
	// command: when Respond has recorded an entry, entries whose At is
	// older than Now minus LedgerMaxAge are pruned. 0 means
	// DefaultLedgerMaxAge (30 days); negative is an error.
	LedgerMaxAge time.Duration
	// RecoveryAlarm builds the payload of the alarm record appended to the
	// Events stream (class Critical, seq as given) in the transaction that
	// completes a store salvaged from a broken file, at Open or after
	// corruption met at run time (see Recovery). It is called once per
	// salvage, with no lock of the Store held; it must not call the Store.
	// nil means no alarm record (Recovered still reports the salvage).
	RecoveryAlarm func(r Recovery, seq uint64) ([]byte, error)
	// DeleteDelay is the longest a Delete of an Events, Responses or
	// Telemetry record waits to be committed with the next commit (usually
	// the next append) rather than in one of its own (see deletes.go): a
	// crash or power cut before that commit sends at most 64 acknowledged
	// records again. 0 means DefaultDeleteDelay (30 s); negative means
	// every Delete commits at once.
	DeleteDelay time.Duration
}

// Record is one stored record.
type Record struct {
	Stream  Stream
	Seq     uint64    // per-stream sequence: 1, 2, 3 … never reused, no gaps, survives restarts
	Payload []byte    // a copy, safe to keep
	Added   time.Time // wall clock when appended (UTC)
}

// StreamStats are the counters of one stream.
type StreamStats struct {
	Depth   int       // records stored (not yet deleted)
	Bytes   int64     // their accounted bytes
	Oldest  time.Time // Added of the oldest stored record; zero if empty
	LastSeq uint64    // highest seq ever assigned
}

// Stats describe the store. Computing them costs a few page reads, not a
// scan of the records.
type Stats struct {
	Streams   map[Stream]StreamStats
	Bytes     int64  // accounted bytes, all streams
	MaxBytes  int64  // the cap in force
	Reserve   int64  // extra bytes Critical records may use above MaxBytes
	FileBytes int64  // size of the file on disk
	Evicted   uint64 // Telemetry records deleted to make room since Open
	Refused   uint64 // appends refused with ErrFull since Open
	// Recoveries counts the broken files salvaged since Open, at Open
	// included (see Recovered).
	Recoveries uint64
}

// Store is an open outbox. Its methods are safe for concurrent use.
type Store struct {
	path      string
	cfg       config
	recovered *Recovery
	changed   chan struct{}
	evicted   atomic.Uint64
	refused   atomic.Uint64
	// recoveries counts the salvages since Open (at Open included).
	recoveries atomic.Uint64

	// mu guards db, closed, gen, failed and recovered. Operations hold it
	// shared for their whole duration; Close, compaction and reopening
	// (health.go) hold it exclusively.
	mu     sync.RWMutex
	db     *bbolt.DB
	closed bool
	gen    uint64 // counts reopenings of the file
	failed error  // set when reopening failed: every operation returns it

	// Deletes waiting for a commit (see deletes.go).
	pending pendingDeletes

	// Group commit of appends (see append.go).
	qmu   sync.Mutex
	queue []*appendReq
	busy  bool
}

// Recovered reports the latest salvage of a broken file (at Open, or after
// corruption met at run time), or nil if there was none.
func (s *Store) Recovered() *Recovery {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.recovered == nil {
		return nil
	}
	r := *s.recovered
	return &r
}

// Path returns the path of the store's file.
func (s *Store) Path() string { return s.path }

// Changed returns a channel with capacity 1 that receives a value (without
// blocking the appender) after each successful append. A reader drains the
// store until Read returns nothing new, then waits on it.
func (s *Store) Changed() <-chan struct{} { return s.changed }

// signal notifies Changed without blocking.
func (s *Store) signal() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// acquire takes the shared lock and fails if the store is closed. The caller
// must call s.mu.RUnlock when it returns nil.
func (s *Store) acquire() error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
	}
	if s.failed != nil {
		err := s.failed
		s.mu.RUnlock()
		return err
	}
	return nil
}

// Read returns up to max records of st with seq > after, in ascending seq
// order. The payloads are copied out of the file; memory use depends on max,
// not on the backlog.
func (s *Store) Read(st Stream, after uint64, max int) ([]Record, error) {
	if !st.valid() {
		return nil, fmt.Errorf("store: read: unknown stream %q", st)
	}
	if max <= 0 {
		return nil, fmt.Errorf("store: read: max must be positive, got %d", max)
	}
	if after == ^uint64(0) {
		return nil, nil
	}
	skip := s.pendingSet(st)
	var out []Record
	err := s.withDB("read", func(db *bbolt.DB) error {
		return db.View(func(tx *bbolt.Tx) error {
			b, err := recordBucket(tx, st)
			if err != nil {
				return err
			}
			out = make([]Record, 0, min(max, 256))
			c := b.Cursor()
			for k, v := c.Seek(seqKey(after + 1)); k != nil && len(out) < max; k, v = c.Next() {
				if len(skip) > 0 && skip[binary.BigEndian.Uint64(k)] {
					continue // deleted: its delete is not committed yet
				}
				r, err := decodeRecord(st, k, v)
				if err != nil {
					return err
				}
				out = append(out, r)
			}
			return nil
		})
	})
	if errors.Is(err, ErrClosed) || errors.Is(err, ErrUnavailable) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("store: read %s: %w", st, err)
	}
	return out, nil
}

// Delete removes the records of st with the given seqs in one transaction.
// Seqs that are not stored are ignored. Sequence numbers are never reused.
func (s *Store) Delete(st Stream, seqs ...uint64) error {
	if !st.valid() {
		return fmt.Errorf("store: delete: unknown stream %q", st)
	}
	if len(seqs) == 0 {
		return nil
	}
	// Find what is stored, and its bytes, in a read transaction: a delete
	// that can wait is only noted (deletes.go).
	sizes := make(map[uint64]int64, len(seqs))
	err := s.withDB("delete", func(db *bbolt.DB) error {
		clear(sizes)
		return db.View(func(tx *bbolt.Tx) error {
			b, err := recordBucket(tx, st)
			if err != nil {
				return err
			}
			for _, seq := range seqs {
				v := b.Get(seqKey(seq))
				if v == nil {
					continue
				}
				if len(v) < headerLen {
					return fmt.Errorf("record %d: %w", seq, errShortRecord)
				}
				sizes[seq] = accounted(len(v) - headerLen)
			}
			return nil
		})
	})
	if err == nil && len(sizes) == 0 {
		return nil
	}
	if err == nil && s.deferDelete(st, sizes) {
		return nil
	}
	if err == nil {
		// Now, with whatever else is pending.
		snap := s.pending.snapshot()
		err = s.withDB("delete", func(db *bbolt.DB) error {
			return db.Update(func(tx *bbolt.Tx) error {
				cs, err := loadCounters(tx)
				if err != nil {
					return err
				}
				if err := applyDeletes(tx, &cs, snap); err != nil {
					return err
				}
				if _, err := deleteTx(tx, &cs, st, seqs); err != nil {
					return err
				}
				return cs.save(tx)
			})
		})
		if err == nil {
			s.pending.done(snap)
		}
	}
	if errors.Is(err, ErrClosed) || errors.Is(err, ErrUnavailable) {
		return err
	}
	if err != nil {
		return fmt.Errorf("store: delete %s: %w", st, err)
	}
	return nil
}

// Stats returns the store's counters.
func (s *Store) Stats() (Stats, error) {
	st := Stats{
		Streams:    make(map[Stream]StreamStats, len(streams)),
		MaxBytes:   s.cfg.maxBytes,
		Reserve:    s.cfg.reserve,
		Evicted:    s.evicted.Load(),
		Refused:    s.refused.Load(),
		Recoveries: s.recoveries.Load(),
	}
	err := s.withDB("stats", func(db *bbolt.DB) error {
		clear(st.Streams)
		st.Bytes = 0
		return db.View(func(tx *bbolt.Tx) error {
			cs, err := loadCounters(tx)
			if err != nil {
				return err
			}
			for i, name := range streams {
				c := cs.c[i]
				pn, pb := s.pendingOf(name)
				ss := StreamStats{Depth: int(c.depth) - pn, Bytes: c.bytes - pb, LastSeq: c.last}
				b, err := recordBucket(tx, name)
				if err != nil {
					return err
				}
				skip := s.pendingSet(name)
				cur := b.Cursor()
				for k, v := cur.First(); k != nil; k, v = cur.Next() {
					if skip[binary.BigEndian.Uint64(k)] {
						continue // bounded: at most maxPendingDeletes
					}
					if len(v) >= headerLen {
						ss.Oldest = decodeAdded(v)
					}
					break
				}
				st.Streams[name] = ss
				st.Bytes += ss.Bytes
			}
			return nil
		})
	})
	if errors.Is(err, ErrClosed) || errors.Is(err, ErrUnavailable) {
		return Stats{}, err
	}
	if err != nil {
		return Stats{}, fmt.Errorf("store: stats: %w", err)
	}
	fi, err := os.Stat(s.path)
	if err != nil {
		return Stats{}, fmt.Errorf("store: stats: %w", err)
	}
	st.FileBytes = fi.Size()
	return st, nil
}

// Check runs the full consistency check of the file (see check.go): it
// reads every page reachable from the current snapshot, in a read
// transaction, so appends go on while it runs.
func (s *Store) Check() error {
	var cerr error
	err := s.withDB("check", func(db *bbolt.DB) error {
		return db.View(func(tx *bbolt.Tx) error {
			cerr = checkView(tx, s.path)
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("store: check: %w", err)
	}
	if cerr != nil {
		return fmt.Errorf("store: check: %w", cerr)
	}
	return nil
}

// Close waits for operations in progress and closes the file. Calling it
// again does nothing and returns nil.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.db == nil {
		return nil
	}
	ferr := s.flushDeletesLocked()
	s.pending.mu.Lock()
	if s.pending.timer != nil {
		s.pending.timer.Stop()
		s.pending.timer = nil
	}
	s.pending.mu.Unlock()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	if ferr != nil {
		return fmt.Errorf("store: close: %w", ferr)
	}
	return nil
}

// Settings are small key/value pairs kept in the same file (configuration
// overrides). They do not count against MaxBytes.
const (
	maxSettingKey   = 255
	maxSettingValue = MaxPayload
)

// GetSetting returns a copy of the value stored under key, or nil and no
// error if there is none.
func (s *Store) GetSetting(key string) ([]byte, error) {
	if key == "" {
		return nil, errors.New("store: get setting: empty key")
	}
	var out []byte
	err := s.withDB("get setting", func(db *bbolt.DB) error {
		return db.View(func(tx *bbolt.Tx) error {
			b := tx.Bucket(bucketSettings)
			if b == nil {
				return errMissingBucket
			}
			if v := b.Get([]byte(key)); v != nil {
				out = append(make([]byte, 0, len(v)), v...)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("store: get setting: %w", err)
	}
	return out, nil
}

// PutSetting stores value under key, durably. The key is 1 to 255 bytes,
// the value at most MaxPayload bytes (an empty value is stored as such).
func (s *Store) PutSetting(key string, value []byte) error {
	if key == "" {
		return errors.New("store: put setting: empty key")
	}
	if len(key) > maxSettingKey || len(value) > maxSettingValue {
		return fmt.Errorf("%w: setting key of %d bytes or value of %d bytes", ErrTooLarge, len(key), len(value))
	}
	v := append(make([]byte, 0, len(value)), value...)
	err := s.withDB("put setting", func(db *bbolt.DB) error {
		return db.Update(func(tx *bbolt.Tx) error {
			b := tx.Bucket(bucketSettings)
			if b == nil {
				return errMissingBucket
			}
			return b.Put([]byte(key), v)
		})
	})
	if err != nil {
		return fmt.Errorf("store: put setting: %w", err)
	}
	return nil
}

// DeleteSetting removes key, durably. A missing key is not an error.
func (s *Store) DeleteSetting(key string) error {
	if key == "" {
		return errors.New("store: delete setting: empty key")
	}
	err := s.withDB("delete setting", func(db *bbolt.DB) error {
		return db.Update(func(tx *bbolt.Tx) error {
			b := tx.Bucket(bucketSettings)
			if b == nil {
				return errMissingBucket
			}
			if b.Get([]byte(key)) == nil {
				return errNothing
			}
			return b.Delete([]byte(key))
		})
	})
	if err != nil && err != errNothing {
		return fmt.Errorf("store: delete setting: %w", err)
	}
	return nil
}
