package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// monoNow reads CLOCK_MONOTONIC in nanoseconds. Unlike time.Now's monotonic reading it is the
// same clock in every process of the machine, so times stamped by the probe processes compare
// with times taken here.
func monoNow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err) // CLOCK_MONOTONIC exists on every Linux
	}
	return ts.Nano()
}

// clockTick is USER_HZ, the unit of utime and stime in /proc/PID/stat: 100 on every Linux
// architecture Go supports (the kernel exports the same value whatever its internal HZ).
const clockTick = 100

// readCPU returns the CPU time used by the process (all threads): utime + stime of
// /proc/PID/stat.
func readCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	ticks, err := parseStatCPU(string(b))
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(ticks) * time.Second / clockTick, nil
}

// parseStatCPU returns utime + stime (fields 14 and 15) of a /proc/PID/stat line. The command
// name (field 2) is in parentheses and may hold spaces, so fields are counted after its ')'.
func parseStatCPU(stat string) (uint64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("no command name")
	}
	f := strings.Fields(stat[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, errors.New("too few fields")
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	s, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return u + s, nil
}

// procIO is a process's I/O counters, from /proc/PID/io.
type procIO struct {
	// WChar counts the bytes the process passed to write(2), pwrite(2) and the like: its files,
	// its sockets, its pipes, exactly.
	WChar int64
	// WriteBytes counts the bytes the process caused to be sent to storage, as the kernel
	// accounts them when a page-cache folio is first dirtied: with large folios (ext4 on recent
	// kernels) a 4 KiB write is counted as the whole folio.
	WriteBytes int64
}

// readIO reads /proc/PID/io.
func readIO(pid int) (procIO, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return procIO{}, err
	}
	w, err1 := parseIOField(string(b), "wchar")
	wb, err2 := parseIOField(string(b), "write_bytes")
	if err := errors.Join(err1, err2); err != nil {
		return procIO{}, fmt.Errorf("/proc/%d/io: %w", pid, err)
	}
	return procIO{WChar: w, WriteBytes: wb}, nil
}

// parseIOField returns one field of a /proc/PID/io file.
func parseIOField(io, name string) (int64, error) {
	for _, line := range strings.Split(io, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && k == name {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/PID/io", name)
}
