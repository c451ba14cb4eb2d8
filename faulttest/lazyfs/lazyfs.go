//go:build linux && (amd64 || arm64)

// Package lazyfs is a test file system that loses what was not fsynced, the idea of LazyFS: a FUSE
// loopback over a backing directory that remembers, for every block written since the file's
// last fsync, what the block held before. [FS.Cut] is a power cut: it unmounts, puts back the
// blocks written since the last successful fsync (or, with a keep function, only some of them,
// as a disk that wrote some of its cache before the power went) and the size the file had at its
// last fsync, and mounts again, so that the next process sees what a disk would hold after the
// cut. An fsync that fails (see [FS.SetFault]) leaves the blocks it should have written lost for
// good, as Linux does after an error of writeback: they are put back at the next cut even if a
// later fsync succeeds, unless they were written again.
//
// Names are durable at once: a create, rename or unlink survives a cut without an fsync of its
// directory. The lost state is the file contents and sizes.
//
// It is test support: it needs root (the mount is made with mount(2), no fusermount) and
// /dev/fuse. Only tests import it; the station binary never links it.
package lazyfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// blockSize is the unit of what a cut puts back.
const blockSize = 4096

// Op names an operation a fault can make fail.
type Op string

// The operations SetFault sees.
const (
	Fsync Op = "fsync" // fsync and fdatasync of a file
	Read  Op = "read"  // a read, also of a page of a memory map
	Write Op = "write"
)

// FS is a mounted lazy file system.
type FS struct {
	backing, mnt string

	mu     sync.Mutex
	server *fuse.Server
	files  map[uint64]*file // by inode number of the backing file
	root   *node
	fault  func(op Op, name string, off int64) syscall.Errno
	stats  Stats

	// A cut armed at an fsync (CutAtFsync).
	armed int
	hit   chan struct{}
}

// Stats count what the file system saw since Mount.
type Stats struct {
	Cuts         int
	Fsyncs       int
	FailedFsyncs int
	BlocksLost   int // blocks put back by cuts
	BlocksKept   int // unsynced blocks a cut let through (keep)
}

// file is the state of one backing file since its last successful fsync.
type file struct {
	mu      sync.Mutex
	f       *os.File         // the backing file, to read and put back blocks
	durable int64            // size at the last successful fsync
	undo    map[int64][]byte // block -> content at the last fsync (nil: beyond the durable size)
	lost    map[int64][]byte // blocks a failed fsync should have written: never durable
}

// Mount mounts a lazy view of the directory backing at mnt (both must exist). Everything in
// backing counts as durable at the start.
func Mount(backing, mnt string) (*FS, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("lazyfs: needs root to mount (mount(2) without fusermount)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, fmt.Errorf("lazyfs: no FUSE here: %w", err)
	}
	l := &FS{backing: backing, mnt: mnt, files: map[uint64]*file{}}
	if err := l.mount(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *FS) mount() error {
	var st syscall.Stat_t
	if err := syscall.Stat(l.backing, &st); err != nil {
		return fmt.Errorf("lazyfs: %w", err)
	}
	root := &fs.LoopbackRoot{Path: l.backing, Dev: uint64(st.Dev)}
	root.NewNode = func(r *fs.LoopbackRoot, parent *fs.Inode, name string, st *syscall.Stat_t) fs.InodeEmbedder {
		return &node{LoopbackNode: fs.LoopbackNode{RootData: r}, lz: l, ino: st.Ino}
	}
	rootNode := root.NewNode(root, nil, "", &st)
	root.RootNode = rootNode
	l.mu.Lock()
	l.root = rootNode.(*node)
	l.mu.Unlock()
	server, err := fs.Mount(l.mnt, rootNode, &fs.Options{MountOptions: fuse.MountOptions{
		DirectMountStrict: true, // no fusermount here
		FsName:            "lazyfs",
		Name:              "lazyfs",
		AllowOther:        true,
	}})
	if err != nil {
		return fmt.Errorf("lazyfs: mount %s: %w", l.mnt, err)
	}
	l.mu.Lock()
	l.server = server
	l.mu.Unlock()
	return nil
}

// SetFault installs a function asked before every fsync, read and write of a file: a non-zero
// errno makes the operation fail with it (name is the file's base name, off the offset of a read
// or write, -1 for an fsync). nil removes it.
func (l *FS) SetFault(f func(op Op, name string, off int64) syscall.Errno) {
	l.mu.Lock()
	l.fault = f
	l.mu.Unlock()
}

func (l *FS) faultFor(op Op, n *node, off int64) syscall.Errno {
	l.mu.Lock()
	f := l.fault
	l.mu.Unlock()
	if f == nil {
		return 0
	}
	return f(op, filepath.Base(n.Path(nil)), off)
}

// CutAtFsync arms a cut at the nth fsync of a file from now: the process calling that fsync
// is killed with SIGKILL before the fsync returns (it fails, to a process that never sees it),
// so that the power goes in the middle of a commit, between its writes and their fsync. The
// channel returned is closed then; the caller waits for the process to be gone and calls Cut.
// Cut disarms it.
func (l *FS) CutAtFsync(n int) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.armed, l.hit = n, make(chan struct{})
	return l.hit
}

// atFsync kills the caller of the fsync that is the armed cut's moment, and reports whether it
// was.
func (l *FS) atFsync(caller *fuse.Caller) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.armed == 0 {
		return false
	}
	l.armed--
	if l.armed > 0 {
		return false
	}
	// The request's pid is the calling thread's: SIGKILL to it ends the whole process, which
	// returns to user space no more.
	_ = syscall.Kill(int(caller.Pid), syscall.SIGKILL)
	close(l.hit)
	return true
}

// DropCache makes the kernel forget the cached pages of every file, so that the next reads,
// memory maps included, come to the file system (and meet its faults).
func (l *FS) DropCache() error {
	l.mu.Lock()
	root := l.root
	l.mu.Unlock()
	var nodes []*fs.Inode
	var walk func(n *fs.Inode)
	walk = func(n *fs.Inode) {
		for _, c := range n.Children() {
			nodes = append(nodes, c)
			walk(c)
		}
	}
	walk(root.EmbeddedInode())
	var errs []error
	for _, n := range nodes {
		if !n.IsDir() {
			// ENOENT: the kernel holds nothing of that inode.
			if e := n.NotifyContent(0, 0); e != 0 && e != syscall.ENOENT {
				errs = append(errs, fmt.Errorf("%s: %w", n.Path(nil), e))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lazyfs: drop cache: %w", err)
	}
	return nil
}

// Stats returns the counts so far.
func (l *FS) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stats
}

// Unmount unmounts the file system (and disarms CutAtFsync). Every process using it must have
// ended.
func (l *FS) Unmount() error {
	l.mu.Lock()
	l.armed = 0
	server := l.server
	l.server = nil
	l.mu.Unlock()
	if server == nil {
		return nil
	}
	if err := server.Unmount(); err != nil {
		l.mu.Lock()
		l.server = server
		l.mu.Unlock()
		return fmt.Errorf("lazyfs: unmount %s: %w", l.mnt, err)
	}
	return nil
}

// Cut is a power cut: it unmounts (every process using the file system must have ended), puts
// back what was not fsynced, and mounts again. keep, if not nil, is asked for each block
// written since the last fsync within the durable size: true lets that block through, as a disk
// that wrote it before the power went. Blocks a failed fsync lost are always put back.
func (l *FS) Cut(keep func() bool) error {
	if err := l.Unmount(); err != nil {
		return err
	}
	l.mu.Lock()
	files := l.files
	l.files = map[uint64]*file{}
	l.stats.Cuts++
	l.mu.Unlock()
	var errs []error
	for _, f := range files {
		lost, kept, err := f.cut(keep)
		l.mu.Lock()
		l.stats.BlocksLost += lost
		l.stats.BlocksKept += kept
		l.mu.Unlock()
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lazyfs: cut: %w", err)
	}
	return l.mount()
}

// cut puts back f's blocks and size as of its last fsync.
func (f *file) cut(keep func() bool) (lost, kept int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	defer f.f.Close()
	put := func(blk int64, old []byte) error {
		lost++
		if len(old) == 0 {
			return nil
		}
		_, err := f.f.WriteAt(old, blk*blockSize)
		return err
	}
	for blk, old := range f.undo {
		if keep != nil && old != nil && (blk+1)*blockSize <= f.durable && keep() {
			kept++
			continue
		}
		if err := put(blk, old); err != nil {
			return lost, kept, err
		}
	}
	for blk, old := range f.lost {
		if _, ok := f.undo[blk]; ok {
			continue
		}
		if old == nil && blk*blockSize < f.durable {
			// Beyond the size when it was lost, within it since: a hole.
			old = make([]byte, min(blockSize, f.durable-blk*blockSize))
		}
		if err := put(blk, old); err != nil {
			return lost, kept, err
		}
	}
	return lost, kept, f.f.Truncate(f.durable)
}

// fileOf returns the state of n's backing file, starting it (everything durable) if needed.
func (l *FS) fileOf(n *node) (*file, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if f := l.files[n.ino]; f != nil {
		return f, nil
	}
	osf, err := os.OpenFile(filepath.Join(l.backing, n.Path(nil)), os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	fi, err := osf.Stat()
	if err != nil {
		osf.Close()
		return nil, err
	}
	f := &file{f: osf, durable: fi.Size(), undo: map[int64][]byte{}, lost: map[int64][]byte{}}
	l.files[n.ino] = f
	return f, nil
}

// save remembers the durable content of the blocks [off, end) before they change.
func (f *file) save(off, end int64) error {
	for blk := off / blockSize; blk*blockSize < end; blk++ {
		if _, ok := f.undo[blk]; ok {
			continue
		}
		if old, ok := f.lost[blk]; ok {
			// Written again: it may become durable at the next fsync.
			f.undo[blk] = old
			delete(f.lost, blk)
			continue
		}
		if blk*blockSize >= f.durable {
			f.undo[blk] = nil
			continue
		}
		buf := make([]byte, min(blockSize, f.durable-blk*blockSize))
		if _, err := f.f.ReadAt(buf, blk*blockSize); err != nil {
			return err
		}
		f.undo[blk] = buf
	}
	return nil
}

// node is a loopback node whose writes, truncations and fsyncs are tracked.
type node struct {
	fs.LoopbackNode
	lz  *FS
	ino uint64
}

var (
	_ fs.NodeWriter    = (*node)(nil)
	_ fs.NodeReader    = (*node)(nil)
	_ fs.NodeFsyncer   = (*node)(nil)
	_ fs.NodeSetattrer = (*node)(nil)
)

func (n *node) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if e := n.lz.faultFor(Write, n, off); e != 0 {
		return 0, e
	}
	f, err := n.lz.fileOf(n)
	if err != nil {
		return 0, fs.ToErrno(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.save(off, off+int64(len(data))); err != nil {
		return 0, fs.ToErrno(err)
	}
	w, ok := fh.(fs.FileWriter)
	if !ok {
		return 0, syscall.EBADF
	}
	return w.Write(ctx, data, off)
}

func (n *node) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if e := n.lz.faultFor(Read, n, off); e != 0 {
		return nil, e
	}
	r, ok := fh.(fs.FileReader)
	if !ok {
		return nil, syscall.EBADF
	}
	return r.Read(ctx, dest, off)
}

func (n *node) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	if n.IsDir() {
		return 0 // names are durable at once
	}
	f, err := n.lz.fileOf(n)
	if err != nil {
		return fs.ToErrno(err)
	}
	e := n.lz.faultFor(Fsync, n, -1)
	if c, ok := fuse.FromContext(ctx); ok && n.lz.atFsync(c) {
		e = syscall.EIO
	}
	n.lz.mu.Lock()
	n.lz.stats.Fsyncs++
	if e != 0 {
		n.lz.stats.FailedFsyncs++
	}
	n.lz.mu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	if e != 0 {
		// What this fsync should have written is lost: the page cache holds it, the disk never will.
		for blk, old := range f.undo {
			f.lost[blk] = old
		}
		clear(f.undo)
		return e
	}
	fi, err := f.f.Stat()
	if err != nil {
		return fs.ToErrno(err)
	}
	clear(f.undo)
	f.durable = fi.Size()
	return 0
}

func (n *node) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok && !n.IsDir() {
		f, err := n.lz.fileOf(n)
		if err != nil {
			return fs.ToErrno(err)
		}
		f.mu.Lock()
		err = f.save(int64(size), max(int64(size), f.durable))
		f.mu.Unlock()
		if err != nil {
			return fs.ToErrno(err)
		}
	}
	return n.LoopbackNode.Setattr(ctx, fh, in, out)
}

// handle is a loopback file handle that the kernel may not bypass: without it, reads and writes
// of a loopback file go straight to the backing file (FUSE passthrough), unseen.
type handle struct{ *fs.LoopbackFile }

func (handle) PassthroughFd() (int, bool) { return -1, false }

func wrap(fh fs.FileHandle) fs.FileHandle {
	if lf, ok := fh.(*fs.LoopbackFile); ok {
		return handle{lf}
	}
	return fh
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, fl, e := n.LoopbackNode.Open(ctx, flags)
	return wrap(fh), fl, e
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	in, fh, fl, e := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	return in, wrap(fh), fl, e
}
