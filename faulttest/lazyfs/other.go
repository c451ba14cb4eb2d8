//go:build !(linux && (amd64 || arm64))

package lazyfs

import (
	"errors"
	"syscall"
)

// go-fuse builds for 64-bit Linux only (its splice code does not compile for 32-bit ARM): here
// Mount always fails, and the tests that need it skip.

// Op names an operation a fault can make fail.
type Op string

// The operations SetFault sees.
const (
	Fsync Op = "fsync"
	Read  Op = "read"
	Write Op = "write"
)

// FS is a mounted lazy file system.
type FS struct{}

// Stats count what the file system saw since Mount.
type Stats struct {
	Cuts, Fsyncs, FailedFsyncs, BlocksLost, BlocksKept int
}

// Mount fails: see the comment above.
func Mount(backing, mnt string) (*FS, error) {
	return nil, errors.New("lazyfs: go-fuse is not available for this platform")
}

func (l *FS) SetFault(f func(op Op, name string, off int64) syscall.Errno) {}
func (l *FS) DropCache()                                                   {}
func (l *FS) Stats() Stats                                                 { return Stats{} }
func (l *FS) CutAtFsync(n int) <-chan struct{}                             { return nil }
func (l *FS) Unmount() error                                               { return nil }
func (l *FS) Cut(keep func() bool) error                                   { return nil }
