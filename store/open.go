package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
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
	return c, nil
}

func (c *config) boltOptions() *bbolt.Options {
	// InitialMmapSize stays 0: bbolt grows a small file to the size of its
	// map, so a larger initial map only makes every small store's file
	// larger, while remapping a small file is cheap.
	return &bbolt.Options{
		Timeout:      c.timeout,
		FreelistType: bbolt.FreelistMapType,
		MaxSize:      int(c.maxFile),
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
// A file that is not a usable store (not a bbolt file, truncated, failing
// the consistency check, or of an unknown format) is renamed to
// "<path>.broken-<UTC yyyymmddThhmmssZ>" and a fresh store is created in its
// place; Recovered then reports it. Errors of the system (permissions, disk
// I/O on open) and a lock held by another process (ErrLocked) are returned
// and leave the file alone. A store whose backlog is tiny but whose file is
// far larger than needed is compacted.
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

	var (
		db     *bbolt.DB
		broken error
	)
	if fi, serr := os.Stat(path); serr == nil && fi.Size() == 0 {
		// bbolt would initialise it silently; but an empty file is a store cut short while
		// being created or truncated later, and its sequence numbers are gone: say so.
		broken = errors.New("the file is empty (cut short while being created, or truncated)")
	} else if db, broken, err = openChecked(path, &cfg); err != nil {
		return nil, err
	}
	if broken != nil {
		moved, err := moveAside(path, cfg.now())
		if err != nil {
			return nil, fmt.Errorf("store: %s is broken (%v) and cannot be moved aside: %w", path, broken, err)
		}
		s.recovered = &Recovery{MovedTo: moved, Reason: broken.Error()}
		cfg.warn("store: broken file moved aside, starting a new store",
			"path", path, "moved_to", moved, "reason", broken.Error())
		db, broken, err = openChecked(path, &cfg)
		if err != nil {
			return nil, err
		}
		if broken != nil {
			return nil, fmt.Errorf("store: new store %s is unusable: %w", path, broken)
		}
	}
	s.db = db

	// A compaction cut short leaves its temporary file; we hold the lock,
	// so no other process is compacting.
	if err := os.Remove(compactTemp(path)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		cfg.warn("store: cannot remove stale compaction file", "err", err)
	}
	if waste, err := s.wasteful(); err != nil {
		cfg.warn("store: cannot size the file for compaction", "err", err)
	} else if waste {
		if err := s.compact(); err != nil {
			cfg.warn("store: compaction failed; the store works, the file stays large", "err", err)
		}
	}
	return s, nil
}

// openChecked opens path with bbolt and validates it. It returns err for
// conditions that must not be "repaired" by moving the file (lock held,
// system errors) and broken, with the db closed, for a file that is not a
// usable store.
func openChecked(path string, cfg *config) (db *bbolt.DB, broken, err error) {
	var f *os.File
	bo := cfg.boltOptions()
	bo.OpenFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
		ff, err := os.OpenFile(name, flag, perm)
		if err == nil {
			f = ff
		}
		return ff, err
	}
	fault := guard(func() { db, err = bbolt.Open(path, 0o600, bo) })
	if fault != nil {
		// bbolt gave up half way (a page beyond the end of a truncated file
		// faults when read). Closing the file releases the lock; the
		// aborted open's map is leaked, once.
		if f != nil {
			f.Close()
		}
		return nil, fmt.Errorf("reading the file failed (truncated or corrupt): %v", fault), nil
	}
	if err != nil {
		switch {
		case errors.Is(err, berrors.ErrTimeout):
			return nil, nil, &lockedError{path}
		case errors.Is(err, syscall.ENOMEM):
			// The map does not fit this process's address space.
			return nil, fmt.Errorf("cannot map the file: %w", err), nil
		case isSystemError(err):
			return nil, nil, fmt.Errorf("store: open %s: %w", path, err)
		}
		return nil, fmt.Errorf("not a valid database file: %w", err), nil
	}
	if broken, err = validate(db, path, cfg); broken != nil || err != nil {
		db.Close()
		return nil, broken, err
	}
	return db, nil, nil
}

// isSystemError reports whether err comes from the operating system rather
// than from the content of the file.
func isSystemError(err error) bool {
	var pe *fs.PathError
	var se *os.SyscallError
	var errno syscall.Errno
	return errors.As(err, &pe) || errors.As(err, &se) || errors.As(err, &errno)
}

// guard runs f and returns the value of a panic in it, memory faults (in the
// file's map) included.
func guard(f func()) (fault any) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() { fault = recover() }()
	f()
	return nil
}

// validate checks an opened file and prepares it for use: it creates the
// buckets of a new store and repairs stream counters that disagree with the
// records. broken is set when the file is not a usable store.
func validate(db *bbolt.DB, path string, cfg *config) (broken, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	fault := guard(func() {
		// A file shorter than its metadata says faults when the missing
		// pages are read: test before anything reads them.
		var need int64
		if err := db.View(func(tx *bbolt.Tx) error { need = tx.Size(); return nil }); err != nil {
			broken = err
			return
		}
		if need > fi.Size() {
			broken = fmt.Errorf("file is truncated: %d bytes, its metadata needs %d", fi.Size(), need)
			return
		}
		if cfg.checkMax < 0 || fi.Size() <= cfg.checkMax {
			if err := db.View(checkTx); err != nil {
				broken = fmt.Errorf("consistency check failed: %w", err)
				return
			}
		}
		// Errors of prepare are about the content; any other error of the
		// transaction comes from writing the file (disk full, read-only
		// file system), which is no reason to move the file aside.
		uerr := db.Update(func(tx *bbolt.Tx) error {
			if err := prepare(tx, cfg); err != nil {
				return contentError{err}
			}
			return nil
		})
		var ce contentError
		switch {
		case errors.As(uerr, &ce):
			broken = ce.err
		case uerr != nil:
			err = fmt.Errorf("store: open %s: %w", path, uerr)
		}
	})
	if fault != nil {
		broken = fmt.Errorf("reading the file failed (truncated or corrupt): %v", fault)
	}
	return broken, err
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

// moveAside renames a broken file to path.broken-<UTC time>, adding -2, -3 …
// when that name is taken (the clock may be the same at every boot).
func moveAside(path string, now time.Time) (string, error) {
	base := path + ".broken-" + now.UTC().Format("20060102T150405Z")
	name := base
	for i := 2; ; i++ {
		_, err := os.Lstat(name)
		if errors.Is(err, fs.ErrNotExist) {
			break
		}
		if err != nil {
			return "", err
		}
		if i > 1000 {
			return "", fmt.Errorf("too many files named %s-N", base)
		}
		name = fmt.Sprintf("%s-%d", base, i)
	}
	if err := os.Rename(path, name); err != nil {
		return "", err
	}
	return name, syncDir(filepath.Dir(path))
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
	waste, err := s.wasteful()
	if err != nil || !waste {
		return false, err
	}
	if err := s.compact(); err != nil {
		return false, err
	}
	return true, nil
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
