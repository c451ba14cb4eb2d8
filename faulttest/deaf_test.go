//go:build faults

package faulttest

import (
	"testing"
	"time"

	"station.dev/agent/internal/stationproc"
	"station.dev/agent/mqtt/brokertest"
)

// TestDeafBroker points the agent at a broker that takes the TCP connection and then misbehaves:
// one never answers CONNECT; one accepts the MQTT session and the subscriptions but never
// acknowledges a PUBLISH (the agent then publishes its status and waits: nothing after it is
// acknowledged); one is a real broker whose PUBACKs stop after the first few on each connection
// (the agent fills its window of 32 and waits). The agent must keep its memory bounded while taps
// pile up, keep reconnecting (link.failures grows), and deliver every record once a real broker
// answers.
func TestDeafBroker(t *testing.T) {
	t.Parallel() // mostly waiting for the link's timeouts: let other tests run meanwhile
	for _, tc := range []struct {
		name string
		mode int32
	}{
		{"silent", modeSilent},
		{"no-puback", modeNoPuback},
		{"stalling", modeStall},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := brokertest.Embedded(t, "127.0.0.1:0")
			sw := newSwitchboard(t, b.Addr(), tc.mode)
			s := newSpec(t, sw.URL())
			s.BackoffMax = "2s"
			obs := observe(t, b.URL(), s.Prefix+"/+/events")
			a := startAgent(t, s)
			m0, err := a.Memory()
			if err != nil {
				t.Fatal(err)
			}
			sampler := stationproc.SampleMemory(a.Pid(), 100*time.Millisecond)
			want := map[string]bool{}
			taps := scale(300, 2000)
			for _, l := range a.MustTap("--count", itoa(taps)) {
				want[l.ID] = true
			}
			// The link gives up on the broker and tries again: a silent broker fails each
			// connect (10s connect timeout); one that never acknowledges is dropped after the
			// 30s acknowledgement timeout and connected to again.
			var st statusDoc
			ok := eventually(2*time.Minute, 500*time.Millisecond, func() bool {
				st = a.status()
				if tc.mode == modeSilent {
					return st.Link.Failures >= 2
				}
				return st.Link.Failures >= 1 && st.Link.Connects >= 2
			})
			peak, _, _ := sampler.Stop()
			if !ok {
				t.Fatalf("the link did not give up on the deaf broker and retry: %+v", st.Link)
			}
			t.Logf("link %+v; switchboard: %d connections, %d CONNECTs, %d PUBLISHes, at most %d unacknowledged on one connection",
				st.Link, sw.accepted.Load(), sw.connects.Load(), sw.publishes.Load(), sw.maxPending.Load())
			t.Logf("agent memory: at start %s; peak over %d taps and the retries %s", m0, taps, peak)
			if tc.mode == modeSilent && st.Link.Connects != 0 {
				t.Errorf("the link counts %d connects to a broker that never answered CONNECT", st.Link.Connects)
			}
			switch n := sw.maxPending.Load(); tc.mode {
			case modeNoPuback:
				// The status comes first and is never acknowledged: the outbox waits behind it.
				if n == 0 || n > 2 {
					t.Errorf("%d publishes unacknowledged on one connection, want the status (1 or 2)", n)
				}
			case modeStall:
				// The window is 32 outbox items, plus a status update.
				if n < 32 || n > 32+1 {
					t.Errorf("%d publishes unacknowledged on one connection, want the window of 32 (33 with a status)", n)
				}
			}
			if grow := peak.Anon - m0.Anon; grow > 32<<20 {
				t.Errorf("the agent's own memory grew by %.1f MiB with a deaf broker", mib(grow))
			}
			figure(t, "deaf_broker_"+tc.name+"_peak_rss", round1(mib(peak.RSS)), "MiB")

			// A real broker answers again: everything recorded arrives.
			sw.setMode(modeForward)
			obs.waitIDs(want, 2*time.Minute)
			stationproc.CheckSeq(t, obs.records())
		})
	}
}
