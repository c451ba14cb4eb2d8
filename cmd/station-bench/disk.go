package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// diskCounter reads the bytes written to the block device that holds a directory, from the
// device's /sys/dev/block/MAJ:MIN/stat (field 7: sectors written, 512 bytes each). It counts
// what reaches the device: the store's pages, the file system's journal, and, alas, the writes
// of every other process on the machine. It is a cross-check (the least of several windows,
// on stderr); the figures come from the agent's own counters (see storeBytes).
type diskCounter struct {
	dev  string // MAJ:MIN
	name string // the device's name, e.g. vda, mmcblk0p2
	path string
}

// newDiskCounter finds the device of dir.
func newDiskCounter(dir string) (*diskCounter, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return nil, err
	}
	dev := fmt.Sprintf("%d:%d", unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev)))
	c := &diskCounter{dev: dev, name: dev, path: "/sys/dev/block/" + dev + "/stat"}
	if l, err := os.Readlink("/sys/dev/block/" + dev); err == nil {
		c.name = filepath.Base(l)
	}
	if _, err := c.written(); err != nil {
		return nil, fmt.Errorf("%s is on device %s, which has no block statistics (overlay or network file system?): %w", dir, dev, err)
	}
	return c, nil
}

// written returns the bytes written to the device since boot.
func (c *diskCounter) written() (int64, error) {
	b, err := os.ReadFile(c.path)
	if err != nil {
		return 0, err
	}
	return parseSectorsWritten(string(b))
}

// parseSectorsWritten returns the bytes written of a block device's stat file.
func parseSectorsWritten(stat string) (int64, error) {
	f := strings.Fields(stat)
	if len(f) < 7 {
		return 0, fmt.Errorf("block stat: %d fields, want at least 7", len(f))
	}
	s, err := strconv.ParseInt(f[6], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("block stat: %w", err)
	}
	return s * 512, nil
}
