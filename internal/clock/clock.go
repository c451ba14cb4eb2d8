// Package clock is the one time source of the station's goroutines (the agent's loops and the
// drivers'), so tests drive them with a manual clock (package clocktest) instead of sleeping.
package clock

import "time"

// Clock tells the time and makes timers.
type Clock interface {
	// Now is the wall clock. It may step (NTP's first sync after a boot at 1970, date -s).
	Now() time.Time
	// Monotonic is the time elapsed since an arbitrary origin fixed for the clock's life. It never
	// steps: uptime and elapsed-time checks use it.
	Monotonic() time.Duration
	// NewTimer fires once after d of monotonic time.
	NewTimer(d time.Duration) Timer
}

// Timer is a timer made by a Clock, like time.Timer.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

// System is the real clock.
var System Clock = system{}

type system struct{}

// origin is the reference of the system clock's Monotonic readings.
var origin = time.Now()

func (system) Now() time.Time                 { return time.Now() }
func (system) Monotonic() time.Duration       { return time.Since(origin) }
func (system) NewTimer(d time.Duration) Timer { return timer{time.NewTimer(d)} }

type timer struct{ t *time.Timer }

func (r timer) C() <-chan time.Time { return r.t.C }
func (r timer) Stop() bool          { return r.t.Stop() }
