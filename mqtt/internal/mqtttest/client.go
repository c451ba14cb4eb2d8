package mqtttest

import (
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// Msg is a message received by a Sub.
type Msg struct {
	Topic    string
	Payload  string
	Retained bool
}

// Sub is an observer client subscribed at the broker.
type Sub struct {
	C chan Msg
	c paho.Client
}

// Subscribe connects an observer (clean session) to the broker at url and
// subscribes to filter with QoS 1; it waits for the SUBACK.
func Subscribe(t testing.TB, url, filter string) *Sub {
	t.Helper()
	s := &Sub{C: make(chan Msg, 4096)}
	s.c = Client(t, url, func(_ paho.Client, m paho.Message) {
		s.C <- Msg{Topic: m.Topic(), Payload: string(m.Payload()), Retained: m.Retained()}
	})
	Await(t, s.c.Subscribe(filter, 1, nil), "subscribe "+filter)
	return s
}

// Next returns the next message.
func (s *Sub) Next(t testing.TB) Msg {
	t.Helper()
	select {
	case m := <-s.C:
		return m
	case <-time.After(Timeout):
		t.Fatal("observer: no message")
		return Msg{}
	}
}

// NextWith skips messages until one has the payload want.
func (s *Sub) NextWith(t testing.TB, want string) Msg {
	t.Helper()
	for {
		if m := s.Next(t); m.Payload == want {
			return m
		}
	}
}

// Close disconnects the observer.
func (s *Sub) Close() { s.c.Disconnect(100) }

// Client connects a plain paho client with a unique id (clean session,
// no auto-reconnect), disconnected when the test ends.
func Client(t testing.TB, url string, h paho.MessageHandler) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(url).SetClientID(Unique(t)).
		SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(false).
		SetDefaultPublishHandler(h)
	c := paho.NewClient(o)
	Await(t, c.Connect(), "observer connect")
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// Publish publishes one message from a fresh client and waits for PUBACK.
func Publish(t testing.TB, url, topic, payload string, retained bool) {
	t.Helper()
	c := Client(t, url, nil)
	Await(t, c.Publish(topic, 1, retained, payload), "publish "+topic)
	c.Disconnect(100)
}

// Await waits for a paho token and fails the test on error or timeout.
func Await(t testing.TB, tok paho.Token, what string) {
	t.Helper()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(Timeout):
		t.Fatalf("%s: timed out", what)
	}
}
