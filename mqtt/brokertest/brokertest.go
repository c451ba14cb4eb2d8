// Package brokertest gives tests of other packages a real MQTT broker and a subscriber, without
// importing paho themselves.
//
// URL returns the broker named by STATION_TEST_MQTT_URL (CI sets it to a Mosquitto it started)
// or else an embedded broker on a free loopback port. Tests that need to stop and restart the
// broker use Embedded, which is always in process.
package brokertest

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"station.dev/agent/mqtt/embedded"
)

// EnvURL names the environment variable that points tests at an external broker.
const EnvURL = "STATION_TEST_MQTT_URL"

// URL returns a broker URL for the test: the external one if configured, else an embedded one
// that is closed when the test ends.
func URL(t testing.TB) string {
	t.Helper()
	if u := os.Getenv(EnvURL); u != "" {
		return u
	}
	return Embedded(t, "127.0.0.1:0").URL()
}

// External reports whether tests run against an external broker.
func External() bool { return os.Getenv(EnvURL) != "" }

// Embedded starts an in-process broker on addr, closed when the test ends.
func Embedded(t testing.TB, addr string) *embedded.Broker {
	t.Helper()
	b, err := embedded.Start(addr, nil)
	if err != nil {
		t.Fatalf("embedded broker: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// Message is one message a Subscriber received.
type Message struct {
	Topic    string
	Payload  []byte
	Retained bool
}

// Subscriber is a plain MQTT client subscribed to a topic filter at QoS 1.
type Subscriber struct {
	C      <-chan Message
	client paho.Client
}

var clientSeq atomic.Uint64

// UniquePrefix returns a topic prefix no other test uses, so tests can share one broker.
func UniquePrefix(t testing.TB) string {
	name := strings.NewReplacer("/", "-", " ", "-", "#", "", "+", "").Replace(strings.ToLower(t.Name()))
	if len(name) > 40 {
		name = name[:40]
	}
	return fmt.Sprintf("test-%s-%d-%d", name, os.Getpid(), clientSeq.Add(1))
}

// Subscribe connects to url and subscribes to filter. The channel holds up to buffer messages;
// more are a test failure rather than a silent drop. The client auto-reconnects (it is the
// observer, not the system under test) and disconnects when the test ends.
func Subscribe(t testing.TB, url, filter string, buffer int) *Subscriber {
	t.Helper()
	ch := make(chan Message, buffer)
	var overflow atomic.Bool
	id := fmt.Sprintf("brokertest-%d-%d", os.Getpid(), clientSeq.Add(1))
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(id).
		SetCleanSession(false).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(50 * time.Millisecond).SetMaxReconnectInterval(200 * time.Millisecond).
		SetOrderMatters(true)
	handler := func(_ paho.Client, m paho.Message) {
		msg := Message{Topic: m.Topic(), Payload: append([]byte(nil), m.Payload()...), Retained: m.Retained()}
		select {
		case ch <- msg:
		default:
			overflow.Store(true)
		}
	}
	opts.SetOnConnectHandler(func(c paho.Client) {
		c.Subscribe(filter, 1, handler) // resubscribe after a broker restart
	})
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("brokertest: connect to %s: %v", url, tok.Error())
	}
	// Wait until the subscription is in place, so nothing published after Subscribe returns is missed.
	st := c.Subscribe(filter, 1, handler)
	if !st.WaitTimeout(10*time.Second) || st.Error() != nil {
		t.Fatalf("brokertest: subscribe %s: %v", filter, st.Error())
	}
	t.Cleanup(func() {
		c.Disconnect(100)
		if overflow.Load() {
			t.Errorf("brokertest: subscriber on %s dropped messages: buffer of %d too small", filter, buffer)
		}
	})
	return &Subscriber{C: ch, client: c}
}

// Publish publishes one message at QoS 1 with a fresh client and waits for its PUBACK.
func Publish(t testing.TB, url, topic string, payload []byte, retained bool) {
	t.Helper()
	id := fmt.Sprintf("brokertest-pub-%d-%d", os.Getpid(), clientSeq.Add(1))
	c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID(id))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("brokertest: connect to %s: %v", url, tok.Error())
	}
	defer c.Disconnect(100)
	if tok := c.Publish(topic, 1, retained, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("brokertest: publish %s: %v", topic, tok.Error())
	}
}

// Next waits for the next message, failing the test after timeout.
func (s *Subscriber) Next(t testing.TB, timeout time.Duration) Message {
	t.Helper()
	select {
	case m := <-s.C:
		return m
	case <-time.After(timeout):
		t.Fatalf("brokertest: no message within %s", timeout)
		return Message{}
	}
}
