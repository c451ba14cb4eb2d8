// Package mqtttest is test support for the broker link (package mqtt): a TCP proxy that sees MQTT
// packets and can drop them or cut connections (also with TLS, and a throwaway CA to make its
// certificates), a Tracker that follows the outbox publishes through it, an in-memory Outbox, and
// WaitStats. The broker and the clients that watch it come from mqtt/brokertest.
package mqtttest

import (
	"testing"
	"time"

	"station.dev/agent/mqtt"
)

// Timeout bounds every wait in the link tests.
const Timeout = 20 * time.Second

// WaitStats waits until cond holds for the link's stats, re-checking at
// each of the link's state changes (connect, disconnect, failure, error);
// cond should depend on those only.
func WaitStats(t testing.TB, l *mqtt.Link, what string, cond func(mqtt.Stats) bool) mqtt.Stats {
	t.Helper()
	deadline := time.NewTimer(Timeout)
	defer deadline.Stop()
	for {
		ch := l.StateChanged()
		st := l.Stats()
		if cond(st) {
			return st
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s; stats %+v", what, l.Stats())
		}
	}
}
