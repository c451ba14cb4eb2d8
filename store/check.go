package store

import (
	"errors"
	"fmt"
	"io"
	"os"

	"go.etcd.io/bbolt"
)

// The consistency check walks every page reachable from one snapshot of the
// file, reading them with pread (pagefile.go): page types, element bounds,
// key order across the tree, pages reachable twice or beyond the high-water
// mark, and the record keys and headers of every stream. It never goes
// through bbolt's map, so damage is reported, never a panic or a memory
// fault, and a failing disk is told apart from a damaged file.
//
// It runs in a read transaction: the pages reachable from a read
// transaction's root are not reused while it is open, so appends go on
// meanwhile. (bbolt's own Tx.Check also checks the freelist, which writers
// change: it must run in a write transaction and blocks every append. The
// store does not persist the freelist (NoFreelistSync), so there is no
// freelist on disk to check.)

// checkSnapshot checks the snapshot whose root bucket is at page root, with
// high-water mark hw. It returns a *readError when reading the file fails
// (the disk, not the file), and the problems found otherwise.
func checkSnapshot(f io.ReaderAt, size, pageSize int64, root, hw uint64) error {
	r := &pageReader{f: f, size: size, pageSize: pageSize, hw: hw}
	w := newWalker(r)
	if hw*uint64(pageSize) > uint64(size) {
		return fmt.Errorf("file is truncated: %d bytes, its metadata needs %d", size, hw*uint64(pageSize))
	}
	w.tree(root, func(e leafElem) {
		if e.flags&leafBucket == 0 {
			w.problem(fmt.Errorf("top-level key %q is not a bucket", e.key))
			return
		}
		name := string(e.key)
		st, isRecords := streamOfBucket(name)
		w.bucket(e.value, func(re leafElem) {
			if re.flags&leafBucket != 0 {
				w.problem(fmt.Errorf("bucket %q holds a nested bucket", name))
				return
			}
			if isRecords {
				if _, err := decodeRecord(st, re.key, re.value); err != nil {
					w.problem(err)
				}
			}
		})
	})
	if w.readErr != nil {
		return &readError{w.readErr}
	}
	return w.err()
}

// streamOfBucket returns the stream whose records a top-level bucket holds.
func streamOfBucket(name string) (Stream, bool) {
	for i, st := range streams {
		if string(recordBucketNames[i]) == name {
			return st, true
		}
	}
	return "", false
}

// checkView checks the snapshot of a read transaction of the file at path.
func checkView(tx *bbolt.Tx, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return &readError{err}
	}
	defer f.Close()
	size, err := fileSize(f)
	if err != nil {
		return &readError{err}
	}
	ps := int64(tx.DB().Info().PageSize)
	root := uint64(tx.Cursor().Bucket().Root())
	return checkSnapshot(f, size, ps, root, uint64(tx.Size()/ps))
}

// checkFile checks the newest snapshot of an open file (the caller holds its
// lock). It returns a *readError when the disk fails, errNoMeta (wrapped)
// when the file is not a bbolt file, and the problems found otherwise.
func checkFile(f *os.File) (boltMeta, error) {
	size, err := fileSize(f)
	if err != nil {
		return boltMeta{}, &readError{err}
	}
	metas, err := readMetas(f, size)
	if errors.Is(err, errNoMeta) {
		return boltMeta{}, err
	}
	if err != nil {
		return boltMeta{}, &readError{err}
	}
	m := metas[0]
	return m, checkSnapshot(f, size, int64(m.pageSize), m.root, m.pgid)
}
