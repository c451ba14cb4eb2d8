package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// proc is a child process the benchmark started. Every proc is registered with its bench and
// stopped by bench.cleanup if nothing stopped it before.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string        // file holding its stderr (and stdout unless piped)
	done chan struct{} // closed when the process has exited and been reaped
	err  error         // Wait's error, set before done is closed
	once sync.Once
}

// pid returns the process id.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop asks the process to end with SIGTERM and kills it if it has not ended within grace.
// It returns the error of a process that ended badly, or of one that had to be killed.
func (p *proc) stop(grace time.Duration) error {
	var err error
	p.once.Do(func() {
		if p.exited() {
			err = p.err
			return
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-p.done:
			err = p.err
		case <-t.C:
			_ = p.cmd.Process.Kill()
			<-p.done
			err = fmt.Errorf("%s did not stop within %v of SIGTERM: killed", p.name, grace)
		}
	})
	return err
}

// tail returns the last lines of the process's log, for error messages.
func (p *proc) tail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

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

// procMem is a process's resident memory, from /proc/PID/status.
type procMem struct {
	RSS  int64 // VmRSS: everything resident, file-backed mappings (the bbolt map) included
	Anon int64 // RssAnon: heap, stacks: what the process itself allocated
	File int64 // RssFile: resident pages of mapped files (the binary, the bbolt file)
}

// readMem reads /proc/PID/status.
func readMem(pid int) (procMem, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procMem{}, err
	}
	var m procMem
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *int64
		switch k {
		case "VmRSS":
			dst = &m.RSS
		case "RssAnon":
			dst = &m.Anon
		case "RssFile":
			dst = &m.File
		default:
			continue
		}
		kb, err := parseKB(v)
		if err != nil {
			return procMem{}, fmt.Errorf("/proc/%d/status %s: %w", pid, k, err)
		}
		*dst = kb << 10
		found++
	}
	if found < 3 {
		return procMem{}, fmt.Errorf("/proc/%d/status: VmRSS, RssAnon or RssFile missing", pid)
	}
	return m, nil
}

// parseKB parses a /proc/PID/status value such as "   1234 kB".
func parseKB(v string) (int64, error) {
	f := strings.Fields(v)
	if len(f) != 2 || f[1] != "kB" {
		return 0, fmt.Errorf("unexpected value %q", v)
	}
	return strconv.ParseInt(f[0], 10, 64)
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
