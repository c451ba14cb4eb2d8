// Package clocktest is a manual clock for tests: time moves only when the test says,
// and the test can wait until the goroutine under test waits on a timer again.
package clocktest

import (
	"sync"
	"testing"
	"time"

	"station.dev/agent/internal/clock"
)

// Fake is a manual clock.Clock. Time moves only through Advance.
type Fake struct {
	mu      sync.Mutex
	start   time.Time
	now     time.Time
	mono    time.Duration
	timers  []*fakeTimer
	created int
	signal  chan struct{} // closed and replaced whenever a timer is created
}

func New() *Fake {
	t0 := time.Date(2024, 5, 1, 8, 0, 0, 0, time.UTC)
	return &Fake{start: t0, now: t0, signal: make(chan struct{})}
}

type fakeTimer struct {
	c    *Fake
	at   time.Time
	ch   chan time.Time
	live bool
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.live
	t.c.removeLocked(t)
	return was
}

func (c *Fake) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *Fake) NewTimer(d time.Duration) clock.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), ch: make(chan time.Time, 1), live: true}
	if d <= 0 {
		t.live = false
		t.ch <- c.now
	} else {
		c.timers = append(c.timers, t)
	}
	c.created++
	close(c.signal)
	c.signal = make(chan struct{})
	return t
}

func (c *Fake) removeLocked(t *fakeTimer) {
	t.live = false
	for i, x := range c.timers {
		if x == t {
			c.timers = append(c.timers[:i], c.timers[i+1:]...)
			return
		}
	}
}

// Monotonic implements clock.Clock: the time advanced since the clock was made.
func (c *Fake) Monotonic() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mono
}

// Step moves the wall clock by d (either way) without moving monotonic time or firing timers, as
// an NTP step or `date -s` does.
func (c *Fake) Step(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.start = c.start.Add(d)
	for _, t := range c.timers {
		t.at = t.at.Add(d)
	}
}

// Set sets the wall clock to t, as Step does.
func (c *Fake) Set(t time.Time) {
	c.mu.Lock()
	d := t.Sub(c.now)
	c.mu.Unlock()
	c.Step(d)
}

// Advance moves time forward and fires the timers that are due.
func (c *Fake) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.mono += d
	for _, t := range append([]*fakeTimer(nil), c.timers...) {
		if !t.at.After(c.now) {
			c.removeLocked(t)
			t.ch <- c.now
		}
	}
}

// Start is the fake time when the clock was made.
func (c *Fake) Start() time.Time { return c.start }

// Elapsed returns the fake time advanced since the clock was made.
func (c *Fake) Elapsed() time.Duration { return c.Monotonic() }

// Next returns the time until the earliest live timer fires.
func (c *Fake) Next(t testing.TB) time.Duration {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.timers) == 0 {
		t.Fatal("no timer pending")
	}
	d := c.timers[0].at.Sub(c.now)
	for _, x := range c.timers[1:] {
		if e := x.at.Sub(c.now); e < d {
			d = e
		}
	}
	return d
}

// Count returns how many timers were created.
func (c *Fake) Count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.created
}

// WaitCreated waits until at least n timers were created: the goroutine
// under test has finished its work and waits again.
func (c *Fake) WaitCreated(t testing.TB, n int) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		got, sig := c.created, c.signal
		c.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-sig:
		case <-deadline.C:
			t.Fatalf("the goroutine did not wait again (timers created %d, want %d)", got, n)
		}
	}
}

// Do runs f, which must wake the goroutine, and waits until it waits again.
func (c *Fake) Do(t testing.TB, f func()) {
	t.Helper()
	n := c.Count()
	f()
	c.WaitCreated(t, n+1)
}

// AdvanceTo moves the fake time to off (since the clock was made), letting
// the goroutine run at every timer on the way.
func (c *Fake) AdvanceTo(t testing.TB, off time.Duration) {
	t.Helper()
	for {
		rest := off - c.Elapsed()
		if rest < 0 {
			t.Fatalf("AdvanceTo(%s): already at %s", off, c.Elapsed())
		}
		n := c.Next(t)
		if n > rest {
			c.Advance(rest)
			return
		}
		c.Do(t, func() { c.Advance(n) })
	}
}
