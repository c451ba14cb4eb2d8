package embedded_test

// An external test package: brokertest, which gives the clients, imports embedded.

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"station.dev/agent/mqtt/brokertest"
	"station.dev/agent/mqtt/embedded"
)

const wait = 10 * time.Second

func start(t *testing.T) *embedded.Broker {
	t.Helper()
	b, err := embedded.Start("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// connect returns a connected client; keep keeps its session while it is away.
func connect(t *testing.T, b *embedded.Broker, id string, keep bool) *brokertest.Client {
	t.Helper()
	return brokertest.Connect(t, b.URL(), &brokertest.ClientOptions{ID: id, KeepSession: keep, Buffer: 16})
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

	sub := connect(t, b, "sub", false)
	sub.Subscribe("a/b")
	connect(t, b, "pub", false).Publish("a/b", []byte("hello"), false) // returns on PUBACK

	m := sub.Next(t, wait)
	if m.Topic != "a/b" || string(m.Payload) != "hello" {
		t.Fatalf("got %s %q", m.Topic, m.Payload)
	}
	if m.QoS != 1 {
		t.Fatalf("delivered with QoS %d, want 1 (capabilities must not downgrade QoS)", m.QoS)
	}
}

func TestRetainedMessageKept(t *testing.T) {
	b := start(t)
	connect(t, b, "pub", false).Publish("st/1/status", []byte(`{"state":"online"}`), true)

	sub := connect(t, b, "late", false)
	sub.Subscribe("st/+/status")
	m := sub.Next(t, wait)
	if !m.Retained || string(m.Payload) != `{"state":"online"}` {
		t.Fatalf("got retained=%v %q", m.Retained, m.Payload)
	}
}

func TestPersistentSessionQueuesWhileAway(t *testing.T) {
	b := start(t)
	c := connect(t, b, "station-1", true)
	c.Subscribe("cmd")
	c.Disconnect()

	connect(t, b, "pub", false).Publish("cmd", []byte("queued"), false)

	back := connect(t, b, "station-1", true) // same id, no new Subscribe
	if m := back.Next(t, wait); string(m.Payload) != "queued" {
		t.Fatalf("got %q", m.Payload)
	}
}

func TestCloseReleasesPort(t *testing.T) {
	b, err := embedded.Start("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := connect(t, b, "c", false)

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
	c.Disconnect()
}

func TestStartOnBusyPortFails(t *testing.T) {
	b := start(t)
	_, err := embedded.Start(b.Addr(), nil)
	if err == nil || !strings.HasPrefix(err.Error(), "embedded: listen on "+b.Addr()) {
		t.Fatalf("Start on a busy port: err = %v", err)
	}
}

// TestRetainedPublishWhileSubscribing publishes retained messages while another client
// subscribes to them with a wildcard, again and again: under the race detector this fails
// unless the broker serialises the two (mochi reads its retained index without a lock).
func TestRetainedPublishWhileSubscribing(t *testing.T) {
	b := start(t)
	client := func(id string) paho.Client {
		c := paho.NewClient(paho.NewClientOptions().AddBroker(b.URL()).SetClientID(id).
			SetAutoReconnect(false).SetProtocolVersion(4))
		if tok := c.Connect(); !tok.WaitTimeout(wait) || tok.Error() != nil {
			t.Fatalf("connect %s: %v", id, tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(0) })
		return c
	}
	pub, sub := client("pub"), client("sub")
	const rounds = 200
	errc := make(chan error, 1)
	go func() {
		for i := 0; i < rounds; i++ {
			tok := pub.Publish("race/a/status", 1, true, []byte{'0' + byte(i%10)})
			if !tok.WaitTimeout(wait) || tok.Error() != nil {
				errc <- fmt.Errorf("retained publish %d: %v", i, tok.Error())
				return
			}
		}
		errc <- nil
	}()
	for i := 0; i < rounds; i++ {
		for _, tok := range []paho.Token{sub.Subscribe("race/+/status", 1, nil), sub.Unsubscribe("race/+/status")} {
			if !tok.WaitTimeout(wait) || tok.Error() != nil {
				t.Fatalf("subscription %d: %v", i, tok.Error())
			}
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
