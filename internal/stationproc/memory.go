package stationproc

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Memory is a process's resident memory, from /proc/PID/status.
type Memory struct {
	RSS  int64 // VmRSS: everything resident, the pages of mapped files (the store's map) included
	Anon int64 // RssAnon: what the process allocated itself (heap, stacks)
	File int64 // RssFile: resident pages of mapped files (the binary, the store file)
}

// String prints the figures the tests judge: VmRSS and RssAnon, in MiB.
func (m Memory) String() string {
	return fmt.Sprintf("VmRSS %.1f MiB, RssAnon %.1f MiB", float64(m.RSS)/(1<<20), float64(m.Anon)/(1<<20))
}

// ReadMemory reads the resident memory of process pid.
func ReadMemory(pid int) (Memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, err
	}
	m, err := parseStatus(string(b))
	if err != nil {
		return Memory{}, fmt.Errorf("/proc/%d/status: %w", pid, err)
	}
	return m, nil
}

// parseStatus reads VmRSS, RssAnon and RssFile from the text of /proc/PID/status.
func parseStatus(status string) (Memory, error) {
	var m Memory
	found := 0
	for _, line := range strings.Split(status, "\n") {
		k, v, ok := strings.Cut(line, ":")
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
			return Memory{}, fmt.Errorf("%s: %w", k, err)
		}
		*dst = kb << 10
		found++
	}
	if found < 3 {
		return Memory{}, fmt.Errorf("VmRSS, RssAnon or RssFile missing")
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

// MemorySampler reads a process's memory in the background and keeps the highest figures.
type MemorySampler struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	peak Memory
	n    int
	err  error
}

// SampleMemory reads the memory of process pid now and then every interval, until Stop.
func SampleMemory(pid int, every time.Duration) *MemorySampler {
	s := &MemorySampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			m, err := ReadMemory(pid)
			s.mu.Lock()
			if err != nil {
				s.err = err
				s.mu.Unlock()
				return // the process has ended, most likely: nothing more to read
			}
			s.peak.RSS = max(s.peak.RSS, m.RSS)
			s.peak.Anon = max(s.peak.Anon, m.Anon)
			s.peak.File = max(s.peak.File, m.File)
			s.n++
			s.mu.Unlock()
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// Stop ends the sampling and returns the highest figure of each kind (each from the sample where
// it peaked), the number of samples, and the error that ended the sampling early, if any.
func (s *MemorySampler) Stop() (peak Memory, samples int, err error) {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak, s.n, s.err
}
