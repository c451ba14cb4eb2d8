package door

import "station.dev/agent/drivers/internal/clock/clocktest"

// fakeClock is the drivers' manual clock.
type fakeClock = clocktest.Fake

var newFakeClock = clocktest.New
