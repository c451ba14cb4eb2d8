package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// This file reads a bbolt file's pages with pread, never through a memory
// map, so that a damaged or unreadable page is an error value, not a
// panic or a memory fault. It serves the consistency check (check.go) and
// the salvage of a broken file (salvage.go). The layout is bbolt's format
// version 2 (bbolt v1.3 to v1.5, little-endian hosts: amd64, arm, arm64):
//
//	page     id u64, flags u16, count u16, overflow u32, then the elements
//	branch   pos u32, ksize u32, pgid u64      (key at the element + pos)
//	leaf     flags u32, pos u32, ksize u32, vsize u32 (key, then value, at the element + pos)
//	bucket   root u64, sequence u64, and the inline page when root is 0
//	meta     magic, version, page size, flags (u32 each), root bucket (16 bytes),
//	         freelist, pgid, txid, checksum (u64 each: FNV-64a of what precedes it)

const (
	pageHeaderLen   = 16
	branchElemLen   = 16
	leafElemLen     = 16
	bucketHeaderLen = 16
	metaLen         = 64

	flagBranch   = 0x01
	flagLeaf     = 0x02
	flagMeta     = 0x04
	flagFreelist = 0x10

	leafBucket = 0x01

	boltMagic   = 0xED0CDAED
	boltVersion = 2

	// maxWalkDepth bounds the height of a tree: a cycle of pages in a
	// damaged file ends the walk instead of recursing without end.
	maxWalkDepth = 64
)

// boltMeta is one of a file's two meta pages.
type boltMeta struct {
	pageSize uint32
	root     uint64 // the root bucket's page
	freelist uint64
	pgid     uint64 // the high-water mark: pages [0, pgid) are in use or free
	txid     uint64
}

// errNoMeta says that neither meta page of a file is valid: it is not a
// bbolt file, or both its meta pages are damaged.
var errNoMeta = errors.New("no valid bbolt meta page (not a bbolt file, or both meta pages damaged)")

// parseMeta decodes a meta page read at its start (page header included).
func parseMeta(p []byte) (boltMeta, bool) {
	if len(p) < pageHeaderLen+metaLen {
		return boltMeta{}, false
	}
	m := p[pageHeaderLen : pageHeaderLen+metaLen]
	le := binary.LittleEndian
	if le.Uint32(m[0:]) != boltMagic || le.Uint32(m[4:]) != boltVersion {
		return boltMeta{}, false
	}
	h := fnv.New64a()
	h.Write(m[:56])
	if h.Sum64() != le.Uint64(m[56:]) {
		return boltMeta{}, false
	}
	bm := boltMeta{
		pageSize: le.Uint32(m[8:]),
		root:     le.Uint64(m[16:]),
		freelist: le.Uint64(m[32:]),
		pgid:     le.Uint64(m[40:]),
		txid:     le.Uint64(m[48:]),
	}
	if bm.pageSize < 512 || bm.pageSize > 1<<20 || bm.pageSize&(bm.pageSize-1) != 0 {
		return boltMeta{}, false
	}
	return bm, true
}

// readMetas returns the valid meta pages of f (size bytes long), the newest
// first. err is set only when reading fails (a system error); a file with
// no valid meta page returns errNoMeta.
func readMetas(f io.ReaderAt, size int64) ([]boltMeta, error) {
	buf := make([]byte, pageHeaderLen+metaLen)
	var metas []boltMeta
	readAt := func(off int64) (boltMeta, bool, error) {
		if off+int64(len(buf)) > size {
			return boltMeta{}, false, nil
		}
		if _, err := f.ReadAt(buf, off); err != nil {
			return boltMeta{}, false, fmt.Errorf("reading the meta page at %d: %w", off, err)
		}
		m, ok := parseMeta(buf)
		return m, ok, nil
	}
	m0, ok, err := readAt(0)
	if err != nil {
		return nil, err
	}
	if ok {
		metas = append(metas, m0)
	}
	// The second meta page is one page in: use the first's page size, or
	// try the usual ones when the first is damaged.
	sizes := []int64{4096, 1024, 2048, 8192, 16384, 32768, 65536}
	if ok {
		sizes = []int64{int64(m0.pageSize)}
	}
	for _, ps := range sizes {
		m1, ok, err := readAt(ps)
		if err != nil {
			return nil, err
		}
		if ok && int64(m1.pageSize) == ps {
			metas = append(metas, m1)
			break
		}
	}
	if len(metas) == 0 {
		return nil, errNoMeta
	}
	if len(metas) == 2 && metas[1].txid > metas[0].txid {
		metas[0], metas[1] = metas[1], metas[0]
	}
	return metas, nil
}

// pageReader reads the pages of one snapshot of a file (one meta page).
type pageReader struct {
	f        io.ReaderAt
	size     int64
	pageSize int64
	hw       uint64 // the snapshot's high-water mark
}

// readError is a failure to read the file, as opposed to a page that reads
// but is damaged.
type readError struct{ err error }

func (e *readError) Error() string { return e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// page reads the page id and its overflow pages. It returns a readError
// when the read fails and a plain error when the page is out of bounds.
func (r *pageReader) page(id uint64) ([]byte, error) {
	if id < 2 || id >= r.hw {
		return nil, fmt.Errorf("page %d: out of bounds (high-water mark %d)", id, r.hw)
	}
	off := int64(id) * r.pageSize
	if off+r.pageSize > r.size {
		return nil, fmt.Errorf("page %d: beyond the end of the file (%d bytes)", id, r.size)
	}
	p := make([]byte, r.pageSize)
	if _, err := r.f.ReadAt(p, off); err != nil {
		return nil, &readError{fmt.Errorf("reading page %d: %w", id, err)}
	}
	if got := binary.LittleEndian.Uint64(p); got != id {
		return nil, fmt.Errorf("page %d: its header says page %d", id, got)
	}
	if ov := int64(binary.LittleEndian.Uint32(p[12:])); ov > 0 {
		n := (ov + 1) * r.pageSize
		if uint64(ov) >= r.hw-id || off+n > r.size {
			return nil, fmt.Errorf("page %d: %d overflow pages go beyond the file", id, ov)
		}
		p = make([]byte, n)
		if _, err := r.f.ReadAt(p, off); err != nil {
			return nil, &readError{fmt.Errorf("reading page %d: %w", id, err)}
		}
	}
	return p, nil
}

// leafElem is one element of a leaf page.
type leafElem struct {
	flags uint32
	key   []byte
	value []byte
}

// parseLeaf returns the elements of a leaf page (p starts at its header),
// or an error if an element lies outside the page.
func parseLeaf(p []byte) ([]leafElem, error) {
	le := binary.LittleEndian
	n := int(le.Uint16(p[10:]))
	if pageHeaderLen+n*leafElemLen > len(p) {
		return nil, fmt.Errorf("%d leaf elements do not fit the page", n)
	}
	out := make([]leafElem, n)
	for i := range n {
		e := pageHeaderLen + i*leafElemLen
		pos, ks, vs := int(le.Uint32(p[e+4:])), int(le.Uint32(p[e+8:])), int(le.Uint32(p[e+12:]))
		start := e + pos
		if pos < 0 || ks < 0 || vs < 0 || start < 0 || start+ks+vs > len(p) || start+ks+vs < start {
			return nil, fmt.Errorf("leaf element %d lies outside the page", i)
		}
		out[i] = leafElem{flags: le.Uint32(p[e:]), key: p[start : start+ks], value: p[start+ks : start+ks+vs]}
	}
	return out, nil
}

// branchElem is one element of a branch page.
type branchElem struct {
	key  []byte
	pgid uint64
}

func parseBranch(p []byte) ([]branchElem, error) {
	le := binary.LittleEndian
	n := int(le.Uint16(p[10:]))
	if pageHeaderLen+n*branchElemLen > len(p) {
		return nil, fmt.Errorf("%d branch elements do not fit the page", n)
	}
	out := make([]branchElem, n)
	for i := range n {
		e := pageHeaderLen + i*branchElemLen
		pos, ks := int(le.Uint32(p[e:])), int(le.Uint32(p[e+4:]))
		start := e + pos
		if pos < 0 || ks < 0 || start+ks > len(p) || start+ks < start {
			return nil, fmt.Errorf("branch element %d lies outside the page", i)
		}
		out[i] = branchElem{key: p[start : start+ks], pgid: le.Uint64(p[e+8:])}
	}
	return out, nil
}

// walker visits the leaves of a snapshot's trees in key order.
//
// In strict mode (the consistency check) every problem is reported and the
// walk goes on where it can; in lenient mode (salvage) damaged pages are
// skipped and counted, and the walk goes on with their siblings.
type walker struct {
	r        *pageReader
	seen     map[uint64]bool
	problems []error // the first few problems
	nproblem int
	readErr  error // the first failure to read the file
}

func newWalker(r *pageReader) *walker {
	return &walker{r: r, seen: make(map[uint64]bool)}
}

func (w *walker) problem(err error) {
	var re *readError
	if errors.As(err, &re) && w.readErr == nil {
		w.readErr = re.err
	}
	w.nproblem++
	if len(w.problems) < 10 {
		w.problems = append(w.problems, err)
	}
}

// err returns the problems found, nil if none.
func (w *walker) err() error {
	errs := w.problems
	if w.nproblem > len(errs) {
		errs = append(errs[:len(errs):len(errs)], fmt.Errorf("and %d more problems", w.nproblem-len(errs)))
	}
	return errors.Join(errs...)
}

// tree visits the leaf elements of the tree rooted at page root, in key
// order, calling fn for each with the bounds its keys must respect
// (lo <= key < hi; nil means unbounded).
func (w *walker) tree(root uint64, fn func(e leafElem)) {
	w.node(root, nil, nil, 0, fn)
}

// inline visits the elements of an inline bucket's page.
func (w *walker) inline(p []byte, fn func(e leafElem)) {
	if len(p) < pageHeaderLen {
		w.problem(errors.New("inline bucket shorter than a page header"))
		return
	}
	if f := binary.LittleEndian.Uint16(p[8:]); f&flagLeaf == 0 {
		w.problem(fmt.Errorf("inline bucket page has flags %#x, want a leaf", f))
		return
	}
	w.leaf(p, nil, nil, "inline bucket", fn)
}

func (w *walker) node(id uint64, lo, hi []byte, depth int, fn func(e leafElem)) {
	if depth > maxWalkDepth {
		w.problem(fmt.Errorf("page %d: tree deeper than %d (a cycle?)", id, maxWalkDepth))
		return
	}
	if w.seen[id] {
		w.problem(fmt.Errorf("page %d: reachable twice", id))
		return
	}
	w.seen[id] = true
	p, err := w.r.page(id)
	if err != nil {
		w.problem(err)
		return
	}
	ov := uint64(binary.LittleEndian.Uint32(p[12:]))
	for i := uint64(1); i <= ov; i++ {
		if w.seen[id+i] {
			w.problem(fmt.Errorf("page %d: its overflow page %d is reachable twice", id, id+i))
		}
		w.seen[id+i] = true
	}
	where := fmt.Sprintf("page %d", id)
	switch f := binary.LittleEndian.Uint16(p[8:]); f {
	case flagLeaf:
		w.leaf(p, lo, hi, where, fn)
	case flagBranch:
		elems, err := parseBranch(p)
		if err != nil {
			w.problem(fmt.Errorf("%s: %w", where, err))
			return
		}
		if len(elems) == 0 {
			w.problem(fmt.Errorf("%s: empty branch page", where))
			return
		}
		for i, e := range elems {
			clo, chi := e.key, hi
			if i+1 < len(elems) {
				chi = elems[i+1].key
			}
			if i == 0 && lo != nil && bytes.Compare(e.key, lo) < 0 {
				w.problem(fmt.Errorf("%s: first key below its parent's bound", where))
			}
			if chi != nil && bytes.Compare(clo, chi) >= 0 {
				w.problem(fmt.Errorf("%s: keys out of order at element %d", where, i))
				continue
			}
			w.node(e.pgid, clo, chi, depth+1, fn)
		}
	default:
		w.problem(fmt.Errorf("%s: unexpected page flags %#x (want a branch or a leaf)", where, f))
	}
}

func (w *walker) leaf(p, lo, hi []byte, where string, fn func(e leafElem)) {
	elems, err := parseLeaf(p)
	if err != nil {
		w.problem(fmt.Errorf("%s: %w", where, err))
		return
	}
	var prev []byte
	for i, e := range elems {
		switch {
		case prev != nil && bytes.Compare(e.key, prev) <= 0:
			w.problem(fmt.Errorf("%s: keys out of order at element %d", where, i))
			continue
		case lo != nil && bytes.Compare(e.key, lo) < 0, hi != nil && bytes.Compare(e.key, hi) >= 0:
			w.problem(fmt.Errorf("%s: key of element %d outside its parent's bounds", where, i))
			continue
		}
		prev = e.key
		fn(e)
	}
}

// bucket visits the elements of the bucket whose header (and inline page)
// is v.
func (w *walker) bucket(v []byte, fn func(e leafElem)) {
	if len(v) < bucketHeaderLen {
		w.problem(fmt.Errorf("bucket header of %d bytes", len(v)))
		return
	}
	if root := binary.LittleEndian.Uint64(v); root != 0 {
		w.tree(root, fn)
		return
	}
	w.inline(v[bucketHeaderLen:], fn)
}

// openPages returns a reader of the snapshot of meta m in f.
func openPages(f io.ReaderAt, size int64, m boltMeta) *pageReader {
	return &pageReader{f: f, size: size, pageSize: int64(m.pageSize), hw: m.pgid}
}

// fileSize returns the size of f.
func fileSize(f *os.File) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}
