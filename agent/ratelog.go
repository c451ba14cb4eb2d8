package agent

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"station.dev/agent/internal/clock"
)

// rateLog limits the lines logged about hostile or malformed input: at most burst lines per
// period per kind; the next line let through says how many were suppressed. A flood of junk
// then costs the log a few lines a minute, not a line per message.
type rateLog struct {
	log    *slog.Logger
	clk    clock.Clock
	burst  int
	period time.Duration

	mu    sync.Mutex
	kinds map[string]*rateWindow
}

type rateWindow struct {
	start      time.Duration // monotonic
	n          int
	suppressed int
}

func newRateLog(log *slog.Logger, clk clock.Clock, burst int, period time.Duration) *rateLog {
	return &rateLog{log: log, clk: clk, burst: burst, period: period, kinds: map[string]*rateWindow{}}
}

// Warn logs msg at warning level unless lines of this kind (msg itself) are over their rate.
func (r *rateLog) Warn(msg string, args ...any) { r.logAt(slog.LevelWarn, msg, args...) }

// Info is Warn at info level.
func (r *rateLog) Info(msg string, args ...any) { r.logAt(slog.LevelInfo, msg, args...) }

func (r *rateLog) logAt(level slog.Level, msg string, args ...any) {
	now := r.clk.Monotonic()
	r.mu.Lock()
	w := r.kinds[msg]
	if w == nil || now-w.start >= r.period {
		if w == nil {
			w = &rateWindow{}
			r.kinds[msg] = w
		}
		w.start, w.n = now, 0
	}
	w.n++
	if w.n > r.burst {
		w.suppressed++
		r.mu.Unlock()
		return
	}
	suppressed := w.suppressed
	w.suppressed = 0
	r.mu.Unlock()
	if suppressed > 0 {
		args = append(args, "suppressed_before", suppressed)
	}
	r.log.Log(context.Background(), level, msg, args...)
}
