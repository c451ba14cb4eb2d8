package store

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// File layout (format 1):
//
//	meta      "format"          -> 1 byte, formatVersion
//	          "stream/<name>"   -> 24 bytes: last seq, depth, accounted bytes (big-endian)
//	          "ledger"          -> 24 bytes: last ledger seq, entries, ledger bytes (big-endian)
//	settings  <key>             -> <value>
//	rec/<name> seq (8 bytes BE) -> added (8 bytes BE, Unix ns) + payload
//	ledger    seq (8 bytes BE)  -> at (8 bytes BE, Unix ns) + id length (1 byte) + id +
//	                               digest length (1 byte) + digest + response
//	ledger-id <command id>      -> ledger seq (8 bytes BE)
//
// Record keys are big-endian so that cursor order is seq order. The stream
// counters live beside the records and change in the same transaction, so
// they always agree with them, and the last seq survives the deletion of
// every record.
//
// The command ledger is keyed by its own sequence, in the order entries are
// recorded, so that the oldest entries are the first keys and pruning reads
// only what it deletes; ledger-id finds an entry by command id.
//
// Files of format 1 written before the inbox stream and the ledger existed
// lack rec/inbox, ledger, ledger-id and their counters. Open adds the
// buckets, and missing counters read as zero, so such files keep format 1
// rather than being taken for an unknown format. An agent that predates
// them opens newer files too, and ignores those buckets.
const formatVersion = 1

var (
	bucketMeta     = []byte("meta")
	bucketSettings = []byte("settings")
	bucketLedger   = []byte("ledger")
	bucketLedgerID = []byte("ledger-id")
	keyFormat      = []byte("format")
	keyLedger      = []byte("ledger")
)

// headerLen is the length of the record header (the added time).
const headerLen = 8

// counterLen is the length of a stream counters value.
const counterLen = 24

var (
	// errNothing rolls back a write transaction that changed nothing, so it
	// costs no fsync.
	errNothing       = errors.New("store: nothing to commit")
	errMissingBucket = errors.New("bucket missing")
	errShortRecord   = errors.New("record shorter than its header")
)

// Names of each stream's record bucket and counters key, indexed like
// streams.
var (
	recordBucketNames [len(streams)][]byte
	counterKeys       [len(streams)][]byte
)

func init() {
	for i, st := range streams {
		recordBucketNames[i] = []byte("rec/" + string(st))
		counterKeys[i] = []byte("stream/" + string(st))
	}
}

func recordBucketName(st Stream) []byte { return recordBucketNames[streamIndex(st)] }

func counterKey(st Stream) []byte { return counterKeys[streamIndex(st)] }

// recordBucket returns the bucket of st's records.
func recordBucket(tx *bbolt.Tx, st Stream) (*bbolt.Bucket, error) {
	b := tx.Bucket(recordBucketName(st))
	if b == nil {
		return nil, fmt.Errorf("stream %s: %w", st, errMissingBucket)
	}
	return b, nil
}

func seqKey(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return k[:]
}

// accounted is the number of bytes a record with a payload of n bytes
// counts against MaxBytes.
func accounted(n int) int64 { return int64(n) + RecordOverhead }

func encodeRecord(added time.Time, payload []byte) []byte {
	v := make([]byte, headerLen+len(payload))
	binary.BigEndian.PutUint64(v, uint64(added.UnixNano()))
	copy(v[headerLen:], payload)
	return v
}

func decodeAdded(v []byte) time.Time {
	return time.Unix(0, int64(binary.BigEndian.Uint64(v))).UTC()
}

// decodeRecord copies a record out of a transaction.
func decodeRecord(st Stream, k, v []byte) (Record, error) {
	if len(k) != 8 {
		return Record{}, fmt.Errorf("stream %s: key of %d bytes", st, len(k))
	}
	seq := binary.BigEndian.Uint64(k)
	if len(v) < headerLen {
		return Record{}, fmt.Errorf("stream %s record %d: %w", st, seq, errShortRecord)
	}
	return Record{
		Stream:  st,
		Seq:     seq,
		Payload: append(make([]byte, 0, len(v)-headerLen), v[headerLen:]...),
		Added:   decodeAdded(v),
	}, nil
}

// streamCounters are the persisted counters of one stream.
type streamCounters struct {
	last  uint64 // highest seq ever assigned
	depth int64  // records stored
	bytes int64  // their accounted bytes
}

// counters holds the counters of every stream, indexed like streams, and
// of the command ledger (depth is its entries, bytes its ledger bytes), and
// which of them changed since they were loaded.
type counters struct {
	c           [len(streams)]streamCounters
	dirty       [len(streams)]bool
	ledger      streamCounters
	ledgerDirty bool
}

func streamIndex(st Stream) int {
	for i, s := range streams {
		if s == st {
			return i
		}
	}
	panic("store: unknown stream " + string(st))
}

func (cs *counters) get(st Stream) streamCounters { return cs.c[streamIndex(st)] }

func (cs *counters) set(st Stream, c streamCounters) {
	i := streamIndex(st)
	cs.c[i], cs.dirty[i] = c, true
}

// total returns the accounted bytes of all streams.
func (cs *counters) total() int64 {
	var n int64
	for _, c := range cs.c {
		n += c.bytes
	}
	return n
}

func loadCounters(tx *bbolt.Tx) (counters, error) {
	var cs counters
	m := tx.Bucket(bucketMeta)
	if m == nil {
		return cs, fmt.Errorf("meta: %w", errMissingBucket)
	}
	for i, st := range streams {
		c, err := decodeCounters(m.Get(counterKey(st)))
		if err != nil {
			return cs, fmt.Errorf("counters of %s: %w", st, err)
		}
		cs.c[i] = c
	}
	c, err := decodeCounters(m.Get(keyLedger))
	if err != nil {
		return cs, fmt.Errorf("ledger counters: %w", err)
	}
	cs.ledger = c
	return cs, nil
}

// decodeCounters decodes a counters value; a missing one (nil: nothing
// stored yet, or a file older than the stream) is all zero.
func decodeCounters(v []byte) (streamCounters, error) {
	if v == nil {
		return streamCounters{}, nil
	}
	if len(v) != counterLen {
		return streamCounters{}, fmt.Errorf("%d bytes, want %d", len(v), counterLen)
	}
	return streamCounters{
		last:  binary.BigEndian.Uint64(v[0:]),
		depth: int64(binary.BigEndian.Uint64(v[8:])),
		bytes: int64(binary.BigEndian.Uint64(v[16:])),
	}, nil
}

func encodeCountersValue(c streamCounters) []byte {
	v := make([]byte, counterLen) // bbolt keeps the slice until commit
	binary.BigEndian.PutUint64(v[0:], c.last)
	binary.BigEndian.PutUint64(v[8:], uint64(c.depth))
	binary.BigEndian.PutUint64(v[16:], uint64(c.bytes))
	return v
}

func (cs *counters) save(tx *bbolt.Tx) error {
	m := tx.Bucket(bucketMeta)
	if m == nil {
		return fmt.Errorf("meta: %w", errMissingBucket)
	}
	for i, st := range streams {
		if !cs.dirty[i] {
			continue
		}
		if err := m.Put(counterKey(st), encodeCountersValue(cs.c[i])); err != nil {
			return err
		}
	}
	if cs.ledgerDirty {
		if err := m.Put(keyLedger, encodeCountersValue(cs.ledger)); err != nil {
			return err
		}
	}
	return nil
}

// checkTx runs bbolt's consistency check and returns up to 10 of the
// problems it finds. Values never appear in the messages.
func checkTx(tx *bbolt.Tx) error {
	var errs []error
	n := 0
	for err := range tx.Check(bbolt.WithKVStringer(redactedKV{})) {
		n++
		if len(errs) < 10 {
			errs = append(errs, err)
		}
	}
	if n > len(errs) {
		errs = append(errs, fmt.Errorf("and %d more problems", n-len(errs)))
	}
	return errors.Join(errs...)
}

// redactedKV prints keys (seqs and setting names) in hex and never values,
// which may hold card records.
type redactedKV struct{}

func (redactedKV) KeyToString(k []byte) string   { return hex.EncodeToString(k) }
func (redactedKV) ValueToString(v []byte) string { return fmt.Sprintf("<%d bytes>", len(v)) }
