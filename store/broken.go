package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Broken files are kept for inspection as "<path>.broken-<UTC time>[-N]",
// at most MaxBrokenFiles of them: when a new one is kept, the oldest go.

// MaxBrokenFiles is how many broken files are kept beside the store.
const MaxBrokenFiles = 2

// BrokenFile is a broken store file kept for inspection.
type BrokenFile struct {
	Path  string
	Bytes int64
}

// brokenName returns a free name for a broken file, adding -2, -3 … when
// the time is taken (the clock may be the same at every boot).
func brokenName(path string, now time.Time) (string, error) {
	base := path + ".broken-" + now.UTC().Format("20060102T150405Z")
	name := base
	for i := 2; ; i++ {
		_, err := os.Lstat(name)
		if errors.Is(err, fs.ErrNotExist) {
			return name, nil
		}
		if err != nil {
			return "", err
		}
		if i > 1000 {
			return "", fmt.Errorf("too many files named %s-N", base)
		}
		name = fmt.Sprintf("%s-%d", base, i)
	}
}

// brokenFiles lists the broken files kept beside path, oldest first (by
// modification time, then name).
func listBroken(path string) ([]BrokenFile, error) {
	matches, err := filepath.Glob(globQuote(path) + ".broken-*")
	if err != nil {
		return nil, err
	}
	type file struct {
		BrokenFile
		mod time.Time
	}
	var files []file
	for _, m := range matches {
		fi, err := os.Lstat(m)
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		files = append(files, file{BrokenFile{m, fi.Size()}, fi.ModTime()})
	}
	slices.SortFunc(files, func(a, b file) int {
		if c := a.mod.Compare(b.mod); c != 0 {
			return c
		}
		return strings.Compare(a.Path, b.Path)
	})
	out := make([]BrokenFile, len(files))
	for i, f := range files {
		out[i] = f.BrokenFile
	}
	return out, nil
}

// pruneBroken removes the oldest broken files beyond MaxBrokenFiles, never
// keep.
func pruneBroken(path, keep string) error {
	files, err := listBroken(path)
	if err != nil {
		return err
	}
	var errs []error
	for i := 0; len(files)-i > MaxBrokenFiles; i++ {
		if files[i].Path == keep {
			continue
		}
		if err := os.Remove(files[i].Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// globQuote escapes the characters of a path that Glob would interpret.
func globQuote(p string) string {
	var b strings.Builder
	for _, r := range p {
		if strings.ContainsRune(`*?[\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// BrokenFiles lists the broken store files kept for inspection, oldest
// first, with their sizes.
func (s *Store) BrokenFiles() ([]BrokenFile, error) {
	return listBroken(s.path)
}
