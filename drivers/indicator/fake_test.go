package indicator

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/conn/v3/pin"
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

// pinLog records what every pin was told, with the fake time.
type pinLog struct {
	mu  sync.Mutex
	clk *fakeClock
	ev  []string
}

func (l *pinLog) add(name, what string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ev = append(l.ev, fmt.Sprintf("%s %s %s", l.clk.elapsed(), name, what))
}

func (l *pinLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	ev := l.ev
	l.ev = nil
	return ev
}

// recPin is a fake gpio.PinIO that records to a pinLog and can fail.
type recPin struct {
	pin.BasicPin
	log *pinLog

	mu     sync.Mutex
	l      gpio.Level
	freq   physic.Frequency
	outErr error
	pwmErr error
	pwms   int
}

func (p *recPin) Out(l gpio.Level) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.outErr != nil {
		return p.outErr
	}
	p.l, p.freq = l, 0
	p.log.add(p.N, l.String())
	return nil
}

func (p *recPin) PWM(d gpio.Duty, f physic.Frequency) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pwms++
	if p.pwmErr != nil {
		return p.pwmErr
	}
	if d != gpio.DutyHalf {
		return errors.New("unexpected duty " + d.String())
	}
	p.freq = f
	p.log.add(p.N, "PWM "+f.String())
	return nil
}

func (p *recPin) setErrs(out, pwm error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.outErr, p.pwmErr = out, pwm
}

func (p *recPin) level() (gpio.Level, physic.Frequency) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.l, p.freq
}

func (p *recPin) In(gpio.Pull, gpio.Edge) error  { return errors.New("output only") }
func (p *recPin) Read() gpio.Level               { return p.l }
func (p *recPin) WaitForEdge(time.Duration) bool { return false }
func (p *recPin) Pull() gpio.Pull                { return gpio.PullNoChange }
func (p *recPin) DefaultPull() gpio.Pull         { return gpio.PullNoChange }

var _ gpio.PinIO = (*recPin)(nil)
