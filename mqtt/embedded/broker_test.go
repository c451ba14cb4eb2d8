package embedded

import (
	"net"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

const wait = 10 * time.Second

func start(t *testing.T) *Broker {
	t.Helper()
	b, err := Start("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// connect returns a connected paho client; clean false keeps the session.
func connect(t *testing.T, b *Broker, id string, clean bool, h paho.MessageHandler) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(b.URL()).SetClientID(id).
		SetCleanSession(clean).SetAutoReconnect(false).SetProtocolVersion(4).
		SetDefaultPublishHandler(h)
	c := paho.NewClient(o)
	tokWait(t, c.Connect(), "connect")
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

func tokWait(t *testing.T, tok paho.Token, what string) {
	t.Helper()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(wait):
		t.Fatalf("%s: timed out", what)
	}
}

func recv(t *testing.T, ch <-chan paho.Message, what string) paho.Message {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(wait):
		t.Fatalf("%s: no message", what)
		return nil
	}
}

func sink() (chan paho.Message, paho.MessageHandler) {
	ch := make(chan paho.Message, 16)
	return ch, func(_ paho.Client, m paho.Message) { ch <- m }
}

func TestStartPicksFreePortAndRelaysQoS1(t *testing.T) {
	b := start(t)
	host, port, err := net.SplitHostPort(b.Addr())
	if err != nil || host != "127.0.0.1" || port == "0" {
		t.Fatalf("Addr() = %q: want 127.0.0.1 with a real port", b.Addr())
	}
	if b.URL() != "tcp://"+b.Addr() {
		t.Fatalf("URL() = %q", b.URL())
	}

	msgs, h := sink()
	sub := connect(t, b, "sub", true, h)
	tokWait(t, sub.Subscribe("a/b", 1, nil), "subscribe")
	pub := connect(t, b, "pub", true, nil)
	tokWait(t, pub.Publish("a/b", 1, false, "hello"), "publish") // completes on PUBACK

	m := recv(t, msgs, "subscriber")
	if m.Topic() != "a/b" || string(m.Payload()) != "hello" {
		t.Fatalf("got %s %q", m.Topic(), m.Payload())
	}
	if m.Qos() != 1 {
		t.Fatalf("delivered with QoS %d, want 1 (capabilities must not downgrade QoS)", m.Qos())
	}
}

func TestRetainedMessageKept(t *testing.T) {
	b := start(t)
	pub := connect(t, b, "pub", true, nil)
	tokWait(t, pub.Publish("st/1/status", 1, true, `{"state":"online"}`), "publish")

	msgs, h := sink()
	sub := connect(t, b, "late", true, h)
	tokWait(t, sub.Subscribe("st/+/status", 1, nil), "subscribe")
	m := recv(t, msgs, "late subscriber")
	if !m.Retained() || string(m.Payload()) != `{"state":"online"}` {
		t.Fatalf("got retained=%v %q", m.Retained(), m.Payload())
	}
}

func TestPersistentSessionQueuesWhileAway(t *testing.T) {
	b := start(t)
	msgs, h := sink()
	c := connect(t, b, "station-1", false, h)
	tokWait(t, c.Subscribe("cmd", 1, nil), "subscribe")
	c.Disconnect(250)

	pub := connect(t, b, "pub", true, nil)
	tokWait(t, pub.Publish("cmd", 1, false, "queued"), "publish while away")

	connect(t, b, "station-1", false, h) // same id, no new Subscribe
	m := recv(t, msgs, "reconnected client")
	if string(m.Payload()) != "queued" {
		t.Fatalf("got %q", m.Payload())
	}
}

func TestCloseReleasesPort(t *testing.T) {
	b, err := Start("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.NewClientOptions().AddBroker(b.URL()).SetClientID("c").SetAutoReconnect(false))
	tokWait(t, c.Connect(), "connect")

	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	ln, err := net.Listen("tcp", b.Addr())
	if err != nil {
		t.Fatalf("port not released: %v", err)
	}
	ln.Close()
	c.Disconnect(0)
}

func TestStartOnBusyPortFails(t *testing.T) {
	b := start(t)
	_, err := Start(b.Addr(), nil)
	if err == nil || !strings.HasPrefix(err.Error(), "embedded: listen on "+b.Addr()) {
		t.Fatalf("Start on a busy port: err = %v", err)
	}
}

// TestRetainedPublishWhileSubscribing publishes retained messages while another client
// subscribes to them with a wildcard, again and again: under the race detector this fails
// unless the broker serialises the two (mochi reads its retained index without a lock).
func TestRetainedPublishWhileSubscribing(t *testing.T) {
	b := start(t)
	_, h := sink()
	pub := connect(t, b, "pub", true, h)
	sub := connect(t, b, "sub", true, func(paho.Client, paho.Message) {})
	const rounds = 200
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < rounds; i++ {
			tok := pub.Publish("race/a/status", 1, true, []byte{'0' + byte(i%10)})
			if !tok.WaitTimeout(wait) || tok.Error() != nil {
				t.Errorf("retained publish %d: %v", i, tok.Error())
				return
			}
		}
	}()
	for i := 0; i < rounds; i++ {
		tokWait(t, sub.Subscribe("race/+/status", 1, nil), "subscribe")
		tokWait(t, sub.Unsubscribe("race/+/status"), "unsubscribe")
	}
	<-done
}
