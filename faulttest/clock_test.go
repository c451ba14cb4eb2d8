//go:build faults

package faulttest

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"station.dev/agent/mqtt/brokertest"
)

// TestClockSyncedStamp checks how records and the status are stamped clock_synced: from the
// kernel's NTP state (adjtimex), or always true with [clock] assume_synced.
//
// The host clock cannot be set back to 1970 safely in a test, and libfaketime (Debian's
// faketime) cannot move it for the agent: Go reads the wall clock through the vDSO, not through
// libc's clock_gettime that libfaketime intercepts, so an agent started under
// `faketime '1970-01-02 00:00:00'` stamps the real time. The clock.jump logic is covered by
// agent/agent_test.go TestClockWatch with an injected clock.
func TestClockSyncedStamp(t *testing.T) {
	kernel := kernelClockSynced()
	t.Logf("the kernel says the clock is synchronised: %v", kernel)
	b := brokertest.Embedded(t, "127.0.0.1:0")
	for _, assume := range []bool{false, true} {
		name := "kernel"
		if assume {
			name = "assume_synced"
		}
		t.Run(name, func(t *testing.T) {
			s := newSpec(t, b.URL())
			if assume {
				s.TOML += "[clock]\nassume_synced = true\n"
			}
			obs := observe(t, b.URL(), s.Prefix+"/+/events")
			a := startAgent(t, s)
			tap := a.MustTap()[0]
			obs.waitIDs(map[string]bool{tap.ID: true}, 30*time.Second)
			want := assume || kernel
			for _, r := range obs.records() {
				if r.ClockSynced != want {
					t.Errorf("%s record stamped clock_synced %v, want %v", r.Type, r.ClockSynced, want)
				}
				ts, err := time.Parse(time.RFC3339Nano, r.TS)
				if err != nil || time.Since(ts).Abs() > time.Minute {
					t.Errorf("%s record ts %q: not the wall clock (%v)", r.Type, r.TS, err)
				}
			}
			if st := a.status(); st.ClockSynced != want {
				t.Errorf("status clock_synced %v, want %v", st.ClockSynced, want)
			}
		})
	}
}

// kernelClockSynced asks the kernel whether NTP synchronised the clock, as the agent does.
func kernelClockSynced() bool {
	var tx unix.Timex
	state, err := unix.Adjtimex(&tx)
	return err == nil && state != unix.TIME_ERROR && tx.Status&unix.STA_UNSYNC == 0
}
