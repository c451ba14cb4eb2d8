// Package mqtttest is test support for the broker link: a broker
// (embedded, or the one named by STATION_TEST_MQTT_URL), a TCP proxy that
// sees MQTT packets and can drop them or cut connections, an in-memory
// Outbox, and small paho clients for observing the broker.
package mqtttest

import (
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"station.dev/agent/mqtt"
	"station.dev/agent/mqtt/embedded"
)

// EnvURL names the environment variable holding an external broker URL
// (e.g. tcp://127.0.0.1:18830, a Mosquitto started by CI). When it is set
// the integration tests run against that broker instead of an embedded
// one.
const EnvURL = "STATION_TEST_MQTT_URL"

// Timeout bounds every wait in the tests.
const Timeout = 20 * time.Second

// Broker is a broker for one test.
type Broker struct {
	URL  string // tcp://host:port
	Addr string // host:port

	emb *embedded.Broker
}

// NewBroker returns the external broker named by EnvURL or else starts an
// embedded broker on 127.0.0.1:0, closed when the test ends.
func NewBroker(t testing.TB) *Broker {
	t.Helper()
	if raw := os.Getenv(EnvURL); raw != "" {
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" || (u.Scheme != "tcp" && u.Scheme != "mqtt") {
			t.Fatalf("%s=%q: want tcp://host:port", EnvURL, raw)
		}
		return &Broker{URL: "tcp://" + u.Host, Addr: u.Host}
	}
	emb, err := embedded.Start("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	b := &Broker{URL: emb.URL(), Addr: emb.Addr(), emb: emb}
	t.Cleanup(func() { b.emb.Close() })
	return b
}

// Embedded reports whether the broker runs in this process.
func (b *Broker) Embedded() bool { return b.emb != nil }

// Restart stops the embedded broker (all sessions and retained messages
// are lost) and starts a new one on the same address.
func (b *Broker) Restart(t testing.TB) {
	t.Helper()
	if b.emb == nil {
		t.Fatal("Restart needs the embedded broker")
	}
	b.emb.Close()
	emb, err := embedded.Start(b.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.emb = emb
}

var unsafeChars = regexp.MustCompile(`[^a-zA-Z0-9]+`)

// Unique returns a name unique to this test run, usable as a topic level
// and as an MQTT client id, so that tests sharing a broker do not meet.
func Unique(t testing.TB) string {
	var b [4]byte
	rand.Read(b[:])
	name := strings.ToLower(unsafeChars.ReplaceAllString(t.Name(), "-"))
	if len(name) > 40 {
		name = name[len(name)-40:]
	}
	return "t" + hex.EncodeToString(b[:]) + "-" + strings.Trim(name, "-")
}

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
