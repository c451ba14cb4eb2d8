package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// File size limits (see Options.MaxBytes).
const (
	// The file limit is fileFactorNum/fileFactorDen times the most a store
	// may account (MaxBytes plus the reserve), plus fileSlack (see
	// Options.MaxBytes).
	fileFactorNum = 33
	fileFactorDen = 16
	fileSlack     = 32 << 20
	// maxFile32 bounds the file, and so the memory map, on 32-bit platforms.
	maxFile32 = 512 << 20
	// maxMaxBytes keeps the size arithmetic far from overflow.
	maxMaxBytes = 1 << 44
)

// Compaction thresholds: a file is wasteful when it is larger than
// compactRatio times the live bytes (accounted bytes and ledger bytes) plus
// compactMinFile, and the backlog is at most compactMaxLive accounted bytes
// (so compacting is quick and needs little free disk space; the ledger adds
// at most one reserve). A freshly compacted file is always below the
// threshold, so compaction never repeats itself.
const (
	compactMinFile = 8 << 20
	compactRatio   = 4
	compactMaxLive = 16 << 20
	// compactTxBytes bounds the memory of one compaction transaction.
	compactTxBytes = 4 << 20
)

// is32bit is true where int and pointers are 32 bits wide.
const is32bit = ^uint(0)>>32 == 0

// config is Options resolved to the values in force.
type config struct {
	maxBytes int64
	reserve  int64
	maxFile  int64
	timeout  time.Duration
	now      func() time.Time
	checkMax int64
	log      *slog.Logger

	ledgerMaxEntries int64
	ledgerMaxAge     time.Duration
	ledgerMaxBytes   int64 // the reserve: see Options.LedgerMaxEntries

	alarm func(r Recovery, seq uint64) ([]byte, error)

	deleteDelay time.Duration // negative: never deferred
}

// reserveFor returns the Critical reserve for a cap.
func reserveFor(maxBytes int64) int64 { return max(maxBytes/16, MinReserve) }

// fileLimitFor returns the file size limit for a cap: room for the records
// (the cap and the Critical reserve) and for the command ledger (bounded by
// another reserve).
func fileLimitFor(maxBytes int64) int64 {
	return pagesFor(maxBytes+2*reserveFor(maxBytes)) + fileSlack
}

// pagesFor returns the most bytes of pages that records accounting n bytes
// may take in the file.
func pagesFor(n int64) int64 {
	return n * fileFactorNum / fileFactorDen
}

// capFor returns the cap in force for a requested one: on 32-bit
// platforms, the largest whose file limit fits in maxFile32.
func capFor(maxBytes int64, bits32 bool) int64 {
	if bits32 && fileLimitFor(maxBytes) > maxFile32 {
		// pagesFor(m + 2·m/16) + fileSlack <= maxFile32
		return (maxFile32 - fileSlack) * fileFactorDen / fileFactorNum * 16 / 18
	}
	return maxBytes
}

func resolve(o *Options) (config, error) {
	if o == nil {
		o = &Options{}
	}
	c := config{
		maxBytes: o.MaxBytes,
		timeout:  o.Timeout,
		now:      o.Now,
		checkMax: o.CheckMaxBytes,
		log:      o.Logger,
		alarm:    o.RecoveryAlarm,
	}
	switch {
	case c.maxBytes < 0:
		return c, fmt.Errorf("store: negative MaxBytes %d", c.maxBytes)
	case c.maxBytes == 0:
		c.maxBytes = DefaultMaxBytes
	case c.maxBytes > maxMaxBytes:
		return c, fmt.Errorf("store: MaxBytes %d is larger than %d", c.maxBytes, int64(maxMaxBytes))
	}
	if m := capFor(c.maxBytes, is32bit); m != c.maxBytes {
		c.warn("store: MaxBytes lowered to keep the file mappable on a 32-bit platform",
			"requested", c.maxBytes, "max_bytes", m)
		c.maxBytes = m
	}
	c.reserve = reserveFor(c.maxBytes)
	c.maxFile = fileLimitFor(c.maxBytes)
	if c.timeout < 0 {
		return c, fmt.Errorf("store: negative Timeout %v", c.timeout)
	}
	if c.timeout == 0 {
		c.timeout = DefaultTimeout
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.checkMax == 0 {
		c.checkMax = DefaultCheckMaxBytes
	}
	switch n := o.LedgerMaxEntries; {
	case n < 0:
		return c, fmt.Errorf("store: negative LedgerMaxEntries %d", n)
	case n == 0:
		c.ledgerMaxEntries = DefaultLedgerMaxEntries
	default:
		c.ledgerMaxEntries = int64(n)
	}
	switch d := o.LedgerMaxAge; {
	case d < 0:
		return c, fmt.Errorf("store: negative LedgerMaxAge %v", d)
	case d == 0:
		c.ledgerMaxAge = DefaultLedgerMaxAge
	default:
		c.ledgerMaxAge = d
	}
	c.ledgerMaxBytes = c.reserve
	c.deleteDelay = o.DeleteDelay
	if c.deleteDelay == 0 {
		c.deleteDelay = DefaultDeleteDelay
	}
	return c, nil
}

func (c *config) boltOptions() *bbolt.Options {
	// InitialMmapSize stays 0: bbolt grows a small file to the size of its
	// map, so a larger initial map only makes every small store's file
	// larger, while remapping a small file is cheap.
	//
	// NoFreelistSync: the freelist is not written at every commit (a page
	// or more per commit, and many after a long backlog drained) but
	// rebuilt at open by a walk of the reachable pages; BENCHMARKS.md
	// gives the cost.
	return &bbolt.Options{
		Timeout:        c.timeout,
		FreelistType:   bbolt.FreelistMapType,
		MaxSize:        int(c.maxFile),
		NoFreelistSync: true,
	}
}

func (c *config) warn(msg string, args ...any) {
	if c.log != nil {
		c.log.Warn(msg, args...)
	}
}

func (c *config) info(msg string, args ...any) {
	if c.log != nil {
		c.log.Info(msg, args...)
	}
}

// lockedError says which file is locked; it matches ErrLocked.
type lockedError struct{ path string }

func (e *lockedError) Error() string {
	return fmt.Sprintf("store: %s is locked by another process (is another agent running?)", e.path)
}

func (e *lockedError) Unwrap() error { return ErrLocked }

// Open opens the store at path, creating it (and its directory, mode 0700)
// if needed; the file is created with mode 0600. opts may be nil.
//
// The file is locked before anything reads it, then checked: every page
// reachable from its newest metadata is read (see check.go). A file that
// bbolt's own structures prove broken (no valid meta page, damaged pages,
// records that do not decode, an unknown format) is salvaged: every record
// that can still be read is copied with its seq into a new store, whose
// sequences continue after the highest the broken file knew; the
// store.recovered alarm (Options.RecoveryAlarm) is written in the
// transaction that completes the new store, which then replaces the file.
// The broken file is kept as "<path>.broken-<UTC time>" (at most
// MaxBrokenFiles are kept); Recovered reports it.
//
// Errors of the system are returned and leave the file where it is: a
// disk that fails to read (EIO), too little memory or address space to map
// the file (ENOMEM), permissions, and a lock held by another process
// (ErrLocked). A store whose backlog is tiny but whose file is far larger
// than needed is compacted.
func Open(path string, opts *Options) (*Store, error) {
	if path == "" {
		return nil, errors.New("store: open: empty path")
	}
	cfg, err := resolve(opts)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	s := &Store{path: path, cfg: cfg, changed: make(chan struct{}, 1)}
	db, rec, err := openDB(path, &s.cfg, "")
	if err != nil {
		return nil, err
	}
	s.db, s.recovered = db, rec

	// A compaction or salvage cut short leaves its temporary file; we hold
	// the lock, so no other process is making one.
	for _, tmp := range []string{compactTemp(path), salvageTemp(path)} {
		if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			cfg.warn("store: cannot remove a stale temporary file", "err", err)
		}
	}
	if waste, err := s.wasteful(); err != nil {
		cfg.warn("store: cannot size the file for compaction", "err", err)
	} else if waste {
		if err := s.compactGuarded(); err != nil {
			cfg.warn("store: compaction failed; the store works, the file stays large", "err", err)
		}
	}
	return s, nil
}

// openDB opens the file at path, salvaging it first if it is broken, or if
// force is not "" (corruption met at run time: force says what happened).
func openDB(path string, cfg *config, force string) (*bbolt.DB, *Recovery, error) {
	var rec *Recovery
	for attempt := 0; attempt < 2; attempt++ {
		f, created, err := lockFile(path, cfg.timeout)
		if err != nil {
			return nil, nil, err
		}
		broken := force
		if broken == "" {
			if broken, err = inspect(f, created); err != nil {
				f.Close()
				return nil, nil, fmt.Errorf("store: open %s: %w (the file is left as it is)", path, err)
			}
		}
		if broken == "" {
			db, b, err := openBolt(f, path, cfg)
			if err != nil {
				return nil, nil, err
			}
			if b == "" {
				if created {
					if err := syncDir(filepath.Dir(path)); err != nil {
						db.Close()
						return nil, nil, fmt.Errorf("store: open %s: sync directory: %w", path, err)
					}
				}
				return db, rec, nil
			}
			broken = b
			if f, _, err = lockFile(path, cfg.timeout); err != nil {
				return nil, nil, err
			}
		}
		if attempt > 0 {
			f.Close()
			return nil, nil, fmt.Errorf("store: the new store %s made from a broken file is unusable: %s", path, broken)
		}
		rec, err = salvageFile(path, f, cfg, broken)
		f.Close()
		if err != nil {
			return nil, nil, err
		}
		force = ""
	}
	panic("unreachable")
}

// lockFile opens path for reading and writing, creating it if missing, and
// takes its exclusive lock, waiting up to timeout. created says whether
// this call created the file.
func lockFile(path string, timeout time.Duration) (f *os.File, created bool, err error) {
	f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	created = err == nil
	if errors.Is(err, fs.ErrExist) {
		f, err = os.OpenFile(path, os.O_RDWR, 0o600)
	}
	if err != nil {
		return nil, false, fmt.Errorf("store: open: %w", err)
	}
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, created, nil
		}
		if err != syscall.EWOULDBLOCK || time.Now().After(deadline) {
			f.Close()
			if err == syscall.EWOULDBLOCK {
				return nil, false, &lockedError{path}
			}
			return nil, false, fmt.Errorf("store: lock %s: %w", path, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// inspect checks a locked file before bbolt maps it. It returns why the
// file is broken, "" if it is not, and err when reading it fails (a
// system error: the file is no proof of anything).
func inspect(f *os.File, created bool) (broken string, err error) {
	size, err := fileSize(f)
	if err != nil {
		return "", err
	}
	if size == 0 {
		if created {
			return "", nil // bbolt initialises it
		}
		// bbolt would initialise it silently; but an empty file is a store cut short while
		// being created or truncated later, and its sequence numbers are gone: say so.
		return "the file is empty (cut short while being created, or truncated)", nil
	}
	_, cerr := checkFile(f)
	var re *readError
	switch {
	case cerr == nil:
		return "", nil
	case errors.As(cerr, &re):
		return "", re.err
	case errors.Is(cerr, errNoMeta):
		return "not a valid database file: " + cerr.Error(), nil
	}
	return "consistency check failed: " + cerr.Error(), nil
}

// openBolt opens the locked file f with bbolt and prepares it. On any
// failure f is closed. broken is set, with the db closed, when bbolt or
// prepare finds the content unusable; err for system errors.
func openBolt(f *os.File, path string, cfg *config) (db *bbolt.DB, broken string, err error) {
	bo := cfg.boltOptions()
	bo.OpenFile = func(string, int, os.FileMode) (*os.File, error) { return f, nil }
	fault := guard(func() { db, err = bbolt.Open(path, 0o600, bo) })
	if fault != nil {
		// bbolt gave up half way. Closing the file releases the lock; the
		// aborted open's map is leaked, once. The file passed the check:
		// a salvage copies every record.
		f.Close()
		return nil, fmt.Sprintf("bbolt failed reading the file: %v", fault), nil
	}
	if err != nil {
		switch {
		case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
			return nil, "not a valid database file: " + err.Error(), nil
		case errors.Is(err, syscall.ENOMEM):
			return nil, "", fmt.Errorf("store: open %s: cannot map the file (too little memory or address space; the file is left as it is): %w", path, err)
		}
		return nil, "", fmt.Errorf("store: open %s: %w (the file is left as it is)", path, err)
	}
	var uerr error
	fault = guard(func() {
		uerr = db.Update(func(tx *bbolt.Tx) error {
			if err := prepare(tx, cfg); err != nil {
				return contentError{err}
			}
			return nil
		})
	})
	var ce contentError
	switch {
	case fault != nil:
		db.Close()
		return nil, fmt.Sprintf("bbolt failed reading the file: %v", fault), nil
	case errors.As(uerr, &ce):
		db.Close()
		return nil, ce.err.Error(), nil
	case uerr != nil:
		// Writing the file failed (disk full, read-only file system): no
		// reason to take it for broken.
		db.Close()
		return nil, "", fmt.Errorf("store: open %s: %w", path, uerr)
	}
	return db, "", nil
}

func salvageTemp(path string) string { return path + ".new" }

// salvageFile salvages the broken file f (locked, at path) into a new store
// and puts the new store in its place, keeping the broken file.
func salvageFile(path string, f *os.File, cfg *config, reason string) (*Recovery, error) {
	tmp := salvageTemp(path)
	dst, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: salvage %s: %w", path, err)
	}
	if err := syscall.Flock(int(dst.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		dst.Close()
		return nil, fmt.Errorf("store: salvage %s: lock %s: %w", path, tmp, err)
	}
	rec, err := salvageInto(dst, f, cfg, reason) // closes dst
	if err != nil {
		os.Remove(tmp)
		var re *readError
		if errors.As(err, &re) {
			return nil, fmt.Errorf("store: %s is broken (%s), and reading it fails: %w (the file is left as it is)", path, reason, re.err)
		}
		return nil, fmt.Errorf("store: salvage %s: %w (the file is left as it is)", path, err)
	}
	name, err := brokenName(path, cfg.now())
	if err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("store: salvage %s: %w", path, err)
	}
	// Keep the broken file under its new name, then replace it: at every
	// moment path is either the broken file or the complete new store.
	if err := os.Link(path, name); err != nil {
		// No hard links here: rename it. A power cut before the next rename
		// leaves no file at path, and the broken file beside it.
		if err := os.Rename(path, name); err != nil {
			os.Remove(tmp)
			return nil, fmt.Errorf("store: salvage %s: keep the broken file: %w", path, err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("store: salvage %s: put the new store in place: %w", path, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("store: salvage %s: sync directory: %w", path, err)
	}
	rec.MovedTo = name
	if err := pruneBroken(path, name); err != nil {
		cfg.warn("store: cannot remove old broken files", "err", err)
	}
	cfg.warn("store: broken file salvaged into a new store",
		"path", path, "moved_to", name, "reason", reason, "salvaged", rec.Salvaged, "lost", rec.Lost,
		"seq_restarted", rec.SeqRestarted)
	return rec, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

func compactTemp(path string) string { return path + ".compact" }

// CompactIfWasteful compacts the file when the backlog is tiny (at most
// 16 MiB) and the file is larger than 8 MiB plus 4 times the accounted
// bytes and the command ledger's bytes, as after a long outage has drained. It reports whether it
// compacted. Every other operation waits while it runs; it takes time
// proportional to the backlog, not to the file.
//
// The live data is copied to "<path>.compact", which is then renamed over
// the file: a crash at any point leaves either the old or the new file
// complete at path.
func (s *Store) CompactIfWasteful() (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false, ErrClosed
	}
	if s.failed != nil {
		return false, s.failed
	}
	if err := s.flushDeletesLocked(); err != nil {
		return false, err
	}
	waste, err := s.wasteful()
	if err != nil || !waste {
		return false, err
	}
	if err := s.compactGuarded(); err != nil {
		return false, err
	}
	return true, nil
}

// compactGuarded compacts with corruption contained: a bbolt panic or a
// memory fault while copying salvages the store instead. The caller holds
// s.mu exclusively (or s is not yet shared).
func (s *Store) compactGuarded() error {
	var err error
	fault := guard(func() { err = s.compact() })
	if fault == nil {
		return err
	}
	os.Remove(compactTemp(s.path))
	return s.reopenLocked(fmt.Sprintf("corruption met at run time (compaction): %v", fault))
}

// wasteful reports whether the file should be compacted.
func (s *Store) wasteful() (bool, error) {
	fi, err := os.Stat(s.path)
	if err != nil {
		return false, fmt.Errorf("store: compact: %w", err)
	}
	var backlog, live int64
	err = s.db.View(func(tx *bbolt.Tx) error {
		cs, err := loadCounters(tx)
		backlog = cs.total()
		live = backlog + cs.ledger.bytes
		return err
	})
	if err != nil {
		return false, fmt.Errorf("store: compact: %w", err)
	}
	size := fi.Size()
	return size > compactRatio*live+compactMinFile && backlog <= compactMaxLive, nil
}

// compact copies the store into a fresh file and puts it in place. The
// caller holds s.mu exclusively (or s is not yet shared).
func (s *Store) compact() error {
	tmp := compactTemp(s.path)
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("store: compact: %w", err)
	}
	before, _ := os.Stat(s.path)
	dst, err := bbolt.Open(tmp, 0o600, s.cfg.boltOptions())
	if err != nil {
		return fmt.Errorf("store: compact: %w", err)
	}
	fail := func(err error) error {
		dst.Close()
		os.Remove(tmp)
		return fmt.Errorf("store: compact: %w", err)
	}
	// Every commit of Compact is fsynced, the last one included.
	if err := bbolt.Compact(dst, s.db, compactTxBytes); err != nil {
		return fail(err)
	}
	if !sameContent(dst, s.db) {
		return fail(errors.New("the copy differs from the original"))
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fail(err)
	}
	// From here the new file is the store: keep it even if what follows
	// fails. dst keeps its lock on the new file, so no other process can
	// slip in between.
	old := s.db
	s.db = dst
	old.Close()
	if err := syncDir(filepath.Dir(s.path)); err != nil {
		return fmt.Errorf("store: compact: sync directory: %w", err)
	}
	if after, err := os.Stat(s.path); err == nil && before != nil {
		s.cfg.info("store: compacted", "path", s.path, "before", before.Size(), "after", after.Size())
	}
	return nil
}

// sameContent compares the stream and ledger counters, the first and last
// key of every stream and of the ledger, and the number of settings of two
// stores: a cheap guard that the copy is complete.
func sameContent(a, b *bbolt.DB) bool {
	type summary struct {
		cs       counters
		ends     [len(streams)][2]uint64
		ledger   [2]uint64
		settings int
	}
	read := func(db *bbolt.DB) (sum summary, err error) {
		err = db.View(func(tx *bbolt.Tx) error {
			if sum.cs, err = loadCounters(tx); err != nil {
				return err
			}
			if b := tx.Bucket(bucketSettings); b != nil {
				sum.settings = b.Stats().KeyN
			}
			for i, st := range streams {
				b, err := recordBucket(tx, st)
				if err != nil {
					return err
				}
				c := b.Cursor()
				if k, _ := c.First(); len(k) == 8 {
					sum.ends[i][0] = binary.BigEndian.Uint64(k)
				}
				if k, _ := c.Last(); len(k) == 8 {
					sum.ends[i][1] = binary.BigEndian.Uint64(k)
				}
			}
			if b := tx.Bucket(bucketLedger); b != nil {
				c := b.Cursor()
				if k, _ := c.First(); len(k) == 8 {
					sum.ledger[0] = binary.BigEndian.Uint64(k)
				}
				if k, _ := c.Last(); len(k) == 8 {
					sum.ledger[1] = binary.BigEndian.Uint64(k)
				}
			}
			return nil
		})
		return sum, err
	}
	sa, erra := read(a)
	sb, errb := read(b)
	return erra == nil && errb == nil && sa == sb
}
