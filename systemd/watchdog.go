package systemd

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Ticker is the part of *time.Ticker the Watchdog uses; tests supply their own.
type Ticker interface {
	// C delivers the tick times.
	C() <-chan time.Time
	// Stop stops the ticks.
	Stop()
}

type realTicker struct{ t *time.Ticker }

func (r realTicker) C() <-chan time.Time { return r.t.C }
func (r realTicker) Stop()               { r.t.Stop() }

// NewRealTicker is the default WatchdogOptions.NewTicker: a time.Ticker.
func NewRealTicker(d time.Duration) Ticker { return realTicker{time.NewTicker(d)} }

// WatchdogOptions configure a Watchdog. The zero value, and nil, mean no watchdog: Run
// returns at once.
type WatchdogOptions struct {
	// Interval is the timeout the service manager enforces (WatchdogInterval()). The Watchdog
	// checks the heartbeats, and pings when they are all fresh, every Interval/2. Zero
	// disables the Watchdog.
	Interval time.Duration

	// MaxAge is how long a registered heartbeat may go without a beat before its loop counts
	// as stuck. It is rounded up to a whole number of checks (Interval/2 each). A loop is
	// never declared stuck while its gaps between beats stay under MaxAge; beating every
	// MaxAge/2 leaves a margin. Zero means Interval: a loop stuck for good is then killed by
	// the service manager within about 2×Interval.
	MaxAge time.Duration

	// OnStuck, if set, is called from Run each time the set of stuck loops changes: with
	// their names, sorted, when one gets stuck, and with nil when all are healthy again. It
	// must not block.
	OnStuck func(stuck []string)

	// OnError, if set, is called from Run when a ping or status notification cannot be sent.
	// Run carries on: the next check tries again.
	OnError func(err error)

	// NewTicker makes the check ticker; nil means NewRealTicker. Tests inject ticks here.
	NewTicker func(d time.Duration) Ticker
}

// Watchdog pings the service manager's watchdog only while every registered main loop makes
// progress. Each loop registers a named Heartbeat and calls Beat on every turn (and, while
// idle, every MaxAge/2 from a ticker in its select). When one stops beating, the
// Watchdog stops pinging, sets the unit's status line to name the stuck loop, and reports it
// through OnStuck; systemd then kills the agent with SIGABRT (the Go runtime prints every
// goroutine's stack to the journal) and Restart=always starts it again. If the loop recovers
// before that, pinging resumes and the previous status line is restored.
//
// A Watchdog with no heartbeats registered pings unconditionally: register the loops before
// calling Run.
type Watchdog struct {
	n        *Notifier
	interval time.Duration
	misses   int // consecutive checks without a beat that make a loop stuck
	onStuck  func([]string)
	onError  func(error)
	ticker   func(time.Duration) Ticker

	mu    sync.Mutex
	beats []*Heartbeat
	stuck []string // sorted; nil when all healthy
}

// Heartbeat is one loop's proof of progress. Beat is cheap (one atomic add) and safe to call
// from any goroutine.
type Heartbeat struct {
	w     *Watchdog
	name  string
	count atomic.Uint64

	// Owned by the Watchdog's check, under w.mu.
	seen    uint64
	checked bool      // seen and since hold values from a check
	since   time.Time // the check at which a new beat was last observed
	missed  int       // consecutive checks without a beat
}

// NewWatchdog returns a Watchdog that pings through n. opts may be nil (disabled).
func NewWatchdog(n *Notifier, opts *WatchdogOptions) *Watchdog {
	w := &Watchdog{n: n, ticker: NewRealTicker, misses: 1}
	if opts == nil {
		return w
	}
	w.interval = opts.Interval
	w.onStuck = opts.OnStuck
	w.onError = opts.OnError
	if opts.NewTicker != nil {
		w.ticker = opts.NewTicker
	}
	if period := w.Period(); period > 0 {
		maxAge := opts.MaxAge
		if maxAge <= 0 {
			maxAge = w.interval
		}
		w.misses = int((maxAge + period - 1) / period) // round up: never stricter than asked
		if w.misses < 1 {
			w.misses = 1
		}
	}
	return w
}

// Enabled reports whether Run will check and ping (a watchdog interval is configured).
func (w *Watchdog) Enabled() bool { return w.Period() > 0 }

// Period is the time between checks (and pings): half the interval, or 0 when disabled.
func (w *Watchdog) Period() time.Duration {
	if w.interval < 2 {
		return 0
	}
	return w.interval / 2
}

// MaxAge is how long a loop may go without a beat before it counts as stuck: a loop that
// waits for something must beat more often than this (every MaxAge/2 is safe). It is 0 when
// the Watchdog is disabled.
func (w *Watchdog) MaxAge() time.Duration { return time.Duration(w.misses) * w.Period() }

// Register adds a heartbeat for the named loop. A loop that ends normally calls Stop on its
// heartbeat. Names should be unique; they appear in the status line and in OnStuck.
func (w *Watchdog) Register(name string) *Heartbeat {
	h := &Heartbeat{w: w, name: name}
	w.mu.Lock()
	w.beats = append(w.beats, h)
	w.mu.Unlock()
	return h
}

// Name returns the name the heartbeat was registered with.
func (h *Heartbeat) Name() string { return h.name }

// Beat records progress of the heartbeat's loop.
func (h *Heartbeat) Beat() { h.count.Add(1) }

// Stop removes the heartbeat from the Watchdog: its loop has ended and is no longer watched.
// Beats after Stop are ignored.
func (h *Heartbeat) Stop() {
	w := h.w
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, b := range w.beats {
		if b == h {
			w.beats = append(w.beats[:i], w.beats[i+1:]...)
			return
		}
	}
}

// Stuck returns the names of the loops that are stuck now, sorted; nil when none is.
func (w *Watchdog) Stuck() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.stuck...)
}

// Run checks the heartbeats every Period and pings while all are fresh, until ctx is done.
// It returns nil at once when the Watchdog is disabled, and nil when ctx is done. The first
// check and ping come one Period after Run starts: start Run no later than Ready, since the
// service manager enforces the watchdog from READY=1 on.
func (w *Watchdog) Run(ctx context.Context) error {
	if !w.Enabled() {
		return nil
	}
	t := w.ticker(w.Period())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C():
			w.check(now)
		}
	}
}

// check runs one round: it updates each heartbeat's state, reports changes, and pings if no
// loop is stuck. It runs only on Run's goroutine.
func (w *Watchdog) check(now time.Time) {
	w.mu.Lock()
	var stuck []string
	var ages []string
	for _, h := range w.beats {
		c := h.count.Load()
		switch {
		case !h.checked:
			// First look at a new heartbeat: registering counts as a beat.
			h.checked, h.seen, h.since, h.missed = true, c, now, 0
		case c != h.seen:
			h.seen, h.since, h.missed = c, now, 0
		default:
			h.missed++
		}
		if h.missed >= w.misses {
			stuck = append(stuck, h.name)
			ages = append(ages, fmt.Sprintf("%s (no progress for %s)", h.name, now.Sub(h.since).Round(time.Second)))
		}
	}
	slices.Sort(stuck)
	slices.Sort(ages)
	changed := !slices.Equal(stuck, w.stuck)
	w.stuck = stuck
	w.mu.Unlock()

	if changed {
		if len(stuck) > 0 {
			w.report(w.n.Send("STATUS=watchdog: stuck: " + strings.Join(ages, ", ") + "; not pinging"))
		} else {
			w.report(w.n.restoreStatus())
		}
		if w.onStuck != nil {
			w.onStuck(append([]string(nil), stuck...))
		}
	}
	if len(stuck) == 0 {
		w.report(w.n.Watchdog())
	}
}

func (w *Watchdog) report(err error) {
	if err != nil && w.onError != nil {
		w.onError(err)
	}
}
