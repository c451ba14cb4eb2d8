// Package brokertest is where tests get an MQTT broker, and the clients to watch and drive it,
// without importing paho or mochi themselves.
//
// New (and URL) returns the broker named by STATION_TEST_MQTT_URL (CI sets it to a Mosquitto it
// started) or else an embedded broker on a free loopback port. Tests that stop or restart the
// broker use Embedded, which is always in process. UniquePrefix gives each test topics (and client
// ids) of its own, so that tests can share one broker. Subscribe and Publish are one-line
// observers and publishers; Connect is a client with a chosen id and session.
package brokertest

import (
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"station.dev/agent/mqtt/embedded"
)

// EnvURL names the environment variable that points tests at an external broker
// (tcp://host:port).
const EnvURL = "STATION_TEST_MQTT_URL"

// wait bounds the waits for the broker's answers (CONNACK, SUBACK, PUBACK).
const wait = 10 * time.Second

// External reports whether tests run against an external broker.
func External() bool { return os.Getenv(EnvURL) != "" }

// Broker is a broker for one test: the external one, or one in this process.
type Broker struct {
	addr string // host:port

	mu  sync.Mutex
	emb *embedded.Broker // nil for the external broker
}

// New returns the external broker named by EnvURL, or else starts an embedded broker on
// 127.0.0.1:0, closed when the test ends.
func New(t testing.TB) *Broker {
	t.Helper()
	raw := os.Getenv(EnvURL)
	if raw == "" {
		return Embedded(t, "127.0.0.1:0")
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "tcp" && u.Scheme != "mqtt") {
		t.Fatalf("%s=%q: want tcp://host:port", EnvURL, raw)
	}
	return &Broker{addr: u.Host}
}

// URL returns the URL of a broker for the test: New(t).URL().
func URL(t testing.TB) string {
	t.Helper()
	return New(t).URL()
}

// Embedded starts an in-process broker on addr (host:port; port 0 picks a free one), closed when
// the test ends.
func Embedded(t testing.TB, addr string) *Broker {
	t.Helper()
	emb, err := embedded.Start(addr, nil)
	if err != nil {
		t.Fatalf("brokertest: embedded broker: %v", err)
	}
	b := &Broker{addr: emb.Addr(), emb: emb}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// URL returns the broker's URL, tcp://host:port.
func (b *Broker) URL() string { return "tcp://" + b.addr }

// Addr returns the broker's host:port.
func (b *Broker) Addr() string { return b.addr }

// InProcess reports whether the broker is an embedded one, which the test can stop and restart.
func (b *Broker) InProcess() bool { return b.emb != nil }

// Close stops an embedded broker: every client is disconnected and the port released. Calling
// it again is a no-op. The external broker cannot be stopped: Close returns an error.
func (b *Broker) Close() error {
	if b.emb == nil {
		return fmt.Errorf("brokertest: the external broker %s cannot be stopped", b.addr)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.emb.Close()
}

// Restart stops the embedded broker, if it runs, and starts a new one on the same address: the
// sessions and retained messages of the old one are gone, as after a real broker restart.
func (b *Broker) Restart(t testing.TB) {
	t.Helper()
	if b.emb == nil {
		t.Fatal("brokertest: Restart needs an embedded broker")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.emb.Close(); err != nil {
		t.Fatalf("brokertest: restart: %v", err)
	}
	emb, err := embedded.Start(b.addr, nil)
	if err != nil {
		t.Fatalf("brokertest: restart: %v", err)
	}
	b.emb = emb
}

var (
	seq        atomic.Uint64
	unsafeName = regexp.MustCompile(`[^a-z0-9]+`)
)

// UniquePrefix returns a name no other test of this run uses, made of [a-z0-9-] from the test's
// name: a topic prefix (or level) of its own, and an MQTT client id.
func UniquePrefix(t testing.TB) string {
	name := strings.Trim(unsafeName.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(name) > 40 {
		name = strings.Trim(name[:40], "-")
	}
	return fmt.Sprintf("test-%s-%d-%d", name, os.Getpid(), seq.Add(1))
}

// Message is one message a Client received.
type Message struct {
	Topic    string
	Payload  []byte
	QoS      byte
	Retained bool
}

// ClientOptions choose a client's identity and session. The zero value is a client with a
// unique id, a clean session, no reconnection and a buffer of 1000 messages.
type ClientOptions struct {
	ID          string // client id; "" means a unique one
	KeepSession bool   // a persistent session (clean session false), kept by the broker while away
	Reconnect   bool   // reconnect (and subscribe again) after the connection is lost
	Buffer      int    // messages C holds; more are a test failure rather than a silent drop
	Username    string // for brokers that authenticate (Mosquitto's ACLs, RabbitMQ)
	Password    string
}

// Client is a plain MQTT 3.1.1 client for observing and driving the broker. Every message it
// receives, on any subscription, arrives on C in order. It disconnects when the test ends.
type Client struct {
	C <-chan Message

	t        testing.TB
	c        paho.Client
	id       string
	overflow atomic.Bool
	closed   sync.Once

	mu      sync.Mutex
	filters []string // subscribed again on reconnection
}

// Connect connects a client to the broker at url and waits for the CONNACK. o nil means the zero
// ClientOptions.
func Connect(t testing.TB, url string, o *ClientOptions) *Client {
	t.Helper()
	if o == nil {
		o = &ClientOptions{}
	}
	id := o.ID
	if id == "" {
		id = fmt.Sprintf("brokertest-%d-%d", os.Getpid(), seq.Add(1))
	}
	buffer := o.Buffer
	if buffer == 0 {
		buffer = 1000
	}
	ch := make(chan Message, buffer)
	c := &Client{C: ch, t: t, id: id}
	handler := func(_ paho.Client, m paho.Message) {
		msg := Message{Topic: m.Topic(), Payload: append([]byte(nil), m.Payload()...), QoS: m.Qos(), Retained: m.Retained()}
		select {
		case ch <- msg:
		default:
			c.overflow.Store(true)
		}
	}
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetProtocolVersion(4).
		SetCleanSession(!o.KeepSession).SetAutoReconnect(o.Reconnect).SetOrderMatters(true).
		SetDefaultPublishHandler(handler). // also the messages a kept session queued while away
		SetUsername(o.Username).SetPassword(o.Password)
	if o.Reconnect {
		opts.SetConnectRetry(true).SetConnectRetryInterval(50 * time.Millisecond).
			SetMaxReconnectInterval(200 * time.Millisecond).
			SetOnConnectHandler(func(pc paho.Client) {
				c.mu.Lock()
				defer c.mu.Unlock()
				for _, f := range c.filters {
					pc.Subscribe(f, 1, nil) // after a broker restart
				}
			})
	}
	c.c = paho.NewClient(opts)
	c.await(c.c.Connect(), "connect to "+url)
	t.Cleanup(func() {
		c.Disconnect()
		if c.overflow.Load() {
			t.Errorf("brokertest: client %s dropped messages: buffer of %d too small", id, buffer)
		}
	})
	return c
}

// ID returns the client id.
func (c *Client) ID() string { return c.id }

// Subscribe subscribes to filter at QoS 1 and waits for the SUBACK: nothing published after it
// returns is missed.
func (c *Client) Subscribe(filter string) {
	c.t.Helper()
	c.mu.Lock()
	c.filters = append(c.filters, filter)
	c.mu.Unlock()
	c.await(c.c.Subscribe(filter, 1, nil), "subscribe "+filter)
}

// Publish publishes one message at QoS 1 and waits for its PUBACK.
func (c *Client) Publish(topic string, payload []byte, retained bool) {
	c.t.Helper()
	c.await(c.c.Publish(topic, 1, retained, payload), "publish "+topic)
}

// Disconnect disconnects the client. Calling it again is a no-op.
func (c *Client) Disconnect() {
	c.closed.Do(func() { c.c.Disconnect(100) })
}

// Next waits at most timeout for the next message, and fails the test without one.
func (c *Client) Next(t testing.TB, timeout time.Duration) Message {
	t.Helper()
	select {
	case m := <-c.C:
		return m
	case <-time.After(timeout):
		t.Fatalf("brokertest: no message within %s", timeout)
		return Message{}
	}
}

// NextMatch skips messages until one satisfies match, and returns it. It fails the test, saying
// it waited for what, if none came within timeout.
func (c *Client) NextMatch(t testing.TB, timeout time.Duration, what string, match func(Message) bool) Message {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case m := <-c.C:
			if match(m) {
				return m
			}
		case <-deadline.C:
			t.Fatalf("brokertest: no %s within %s", what, timeout)
			return Message{}
		}
	}
}

// NextWith skips messages until one has the payload want.
func (c *Client) NextWith(t testing.TB, timeout time.Duration, want string) Message {
	t.Helper()
	return c.NextMatch(t, timeout, fmt.Sprintf("message %q", want), func(m Message) bool { return string(m.Payload) == want })
}

func (c *Client) await(tok paho.Token, what string) {
	c.t.Helper()
	if !tok.WaitTimeout(wait) {
		c.t.Fatalf("brokertest: %s: no answer within %s", what, wait)
	}
	if err := tok.Error(); err != nil {
		c.t.Fatalf("brokertest: %s: %v", what, err)
	}
}

// Subscribe connects an observer to url and subscribes it to filter. It keeps its session and
// reconnects (it watches the system under test; it is not one), and holds up to buffer messages.
func Subscribe(t testing.TB, url, filter string, buffer int) *Client {
	t.Helper()
	c := Connect(t, url, &ClientOptions{KeepSession: true, Reconnect: true, Buffer: buffer})
	c.Subscribe(filter)
	return c
}

// Publish publishes one message at QoS 1 from a fresh client and waits for its PUBACK.
func Publish(t testing.TB, url, topic string, payload []byte, retained bool) {
	t.Helper()
	c := Connect(t, url, &ClientOptions{Buffer: 1})
	c.Publish(topic, payload, retained)
	c.Disconnect()
}
