// Package clock is the time source the drivers' goroutines run on, so tests can drive them with a
// fake clock (package clocktest) instead of sleeping.
package clock

import "time"

// Clock tells the time and makes timers.
type Clock interface {
	Now() time.Time
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

func (system) Now() time.Time                 { return time.Now() }
func (system) NewTimer(d time.Duration) Timer { return timer{time.NewTimer(d)} }

type timer struct{ t *time.Timer }

func (r timer) C() <-chan time.Time { return r.t.C }
func (r timer) Stop() bool          { return r.t.Stop() }
