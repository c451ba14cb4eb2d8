//go:build linux && (amd64 || arm64)

package lazyfs

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// mountT mounts a lazy view of a new directory, unmounted at the end of the test; it skips
// where FUSE cannot be mounted.
func mountT(t *testing.T) (l *FS, backing, mnt string) {
	t.Helper()
	backing, mnt = filepath.Join(t.TempDir(), "backing"), filepath.Join(t.TempDir(), "mnt")
	for _, d := range []string{backing, mnt} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	l, err := Mount(backing, mnt)
	if err != nil {
		t.Skipf("no lazy file system here: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return l, backing, mnt
}

func TestCutLosesWhatWasNotSynced(t *testing.T) {
	l, backing, mnt := mountT(t)
	f, err := os.Create(filepath.Join(mnt, "f"))
	if err != nil {
		t.Fatal(err)
	}
	a, b := bytes.Repeat([]byte("a"), 3*blockSize), bytes.Repeat([]byte("b"), blockSize)
	if _, err := f.Write(a); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	// Overwrite the middle block and grow the file, without an fsync.
	if _, err := f.WriteAt(b, blockSize); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(b, 5*blockSize); err != nil {
		t.Fatal(err)
	}
	// A failed fsync loses another block for good, even after a later fsync.
	l.SetFault(func(op Op, name string, off int64) syscall.Errno {
		if op == Fsync {
			return syscall.EIO
		}
		return 0
	})
	if err := f.Sync(); err == nil {
		t.Fatal("fsync did not fail")
	}
	l.SetFault(nil)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := l.Cut(nil); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{mnt, backing} {
		got, err := os.ReadFile(filepath.Join(dir, "f"))
		if err != nil {
			t.Fatal(err)
		}
		// The later fsync made the size durable; the blocks the failed one lost are back as they were.
		want := append(append([]byte{}, a...), make([]byte, 3*blockSize)...)
		if !bytes.Equal(got, want) {
			t.Fatalf("%s after the cut: %d bytes, want %d (first bytes %q), stats %+v", dir, len(got), len(want), got[:8], l.Stats())
		}
	}
	if st := l.Stats(); st.Cuts != 1 || st.FailedFsyncs != 1 {
		t.Fatalf("stats %+v", st)
	}
}
