package agent

import (
	"bytes"
	"sync"
)

// LogRing keeps the last lines written to it, for the logs.tail command. Use it as one of the
// writers of the logger's output. Lines longer than 1 KiB are cut.
type LogRing struct {
	mu    sync.Mutex
	lines []string
	next  int
	full  bool
	part  []byte
}

// NewLogRing keeps the last n lines.
func NewLogRing(n int) *LogRing { return &LogRing{lines: make([]string, n)} }

const maxLogLine = 1 << 10

// Write implements io.Writer.
func (r *LogRing) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			r.part = append(r.part, p[:min(len(p), maxLogLine-len(r.part))]...)
			break
		}
		line := append(r.part, p[:i]...)
		if len(line) > maxLogLine {
			line = line[:maxLogLine]
		}
		r.lines[r.next] = string(line)
		r.next = (r.next + 1) % len(r.lines)
		r.full = r.full || r.next == 0
		r.part = r.part[:0]
		p = p[i+1:]
	}
	return n, nil
}

// Tail returns up to n of the most recent lines, oldest first.
func (r *LogRing) Tail(n int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	size := r.next
	if r.full {
		size = len(r.lines)
	}
	n = min(n, size)
	out := make([]string, 0, n)
	for i := n; i > 0; i-- {
		out = append(out, r.lines[(r.next-i+len(r.lines))%len(r.lines)])
	}
	return out
}
