package door

import "station.dev/agent/internal/clock/clocktest"

// fakeClock is the drivers' manual clock.
type fakeClock = clocktest.Fake

var newFakeClock = clocktest.New
