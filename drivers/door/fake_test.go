package door

import (
	"sync"
	"testing"
	"time"
)

// fakeClock is a manual Clock. Time moves only through Advance.
type fakeClock struct {
	mu      sync.Mutex
	start   time.Time
	now     time.Time
	timers  []*fakeTimer
	created int
	signal  chan struct{} // closed and replaced whenever a timer is created
}

func newFakeClock() *fakeClock {
	t0 := time.Date(2024, 5, 1, 8, 0, 0, 0, time.UTC)
	return &fakeClock{start: t0, now: t0, signal: make(chan struct{})}
}

type fakeTimer struct {
	c    *fakeClock
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

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
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

func (c *fakeClock) removeLocked(t *fakeTimer) {
	t.live = false
	for i, x := range c.timers {
		if x == t {
			c.timers = append(c.timers[:i], c.timers[i+1:]...)
			return
		}
	}
}

// Advance moves time forward and fires the timers that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for _, t := range append([]*fakeTimer(nil), c.timers...) {
		if !t.at.After(c.now) {
			c.removeLocked(t)
			t.ch <- c.now
		}
	}
}

// elapsed returns the fake time since the clock was made.
func (c *fakeClock) elapsed() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now.Sub(c.start)
}

// next returns the time until the earliest live timer fires.
func (c *fakeClock) next(t *testing.T) time.Duration {
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

func (c *fakeClock) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.created
}

// waitCreated waits until at least n timers were created: the goroutine
// under test has finished its work and waits again.
func (c *fakeClock) waitCreated(t *testing.T, n int) {
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

// do runs f, which must wake the goroutine, and waits until it waits again.
func (c *fakeClock) do(t *testing.T, f func()) {
	t.Helper()
	n := c.count()
	f()
	c.waitCreated(t, n+1)
}

// advanceTo moves the fake time to off (since the clock was made), letting
// the goroutine run at every timer on the way.
func (c *fakeClock) advanceTo(t *testing.T, off time.Duration) {
	t.Helper()
	for {
		rest := off - c.elapsed()
		if rest < 0 {
			t.Fatalf("advanceTo(%s): already at %s", off, c.elapsed())
		}
		n := c.next(t)
		if n > rest {
			c.Advance(rest)
			return
		}
		c.do(t, func() { c.Advance(n) })
	}
}
