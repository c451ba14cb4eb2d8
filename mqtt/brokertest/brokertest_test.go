package brokertest_test

import (
	"regexp"
	"testing"
	"time"

	"station.dev/agent/mqtt/brokertest"
)

func TestUniquePrefix(t *testing.T) {
	valid := regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`) // a topic level, a client id and a station id
	a, b := brokertest.UniquePrefix(t), brokertest.UniquePrefix(t)
	if a == b || !valid.MatchString(a) || !valid.MatchString(b) {
		t.Errorf("UniquePrefix gave %q and %q", a, b)
	}
	t.Run("A sub/test+with#odd Names_And.dots that go on and on and on", func(t *testing.T) {
		if p := brokertest.UniquePrefix(t); !valid.MatchString(p) {
			t.Errorf("UniquePrefix = %q", p)
		}
	})
}

// An observer keeps watching across a broker restart: it reconnects and subscribes again.
func TestSubscriberFollowsRestart(t *testing.T) {
	b := brokertest.Embedded(t, "127.0.0.1:0")
	if !b.InProcess() {
		t.Fatal("Embedded is not in process")
	}
	p := brokertest.UniquePrefix(t)
	sub := brokertest.Subscribe(t, b.URL(), p+"/#", 10)
	brokertest.Publish(t, b.URL(), p+"/a", []byte("before"), false)
	if m := sub.Next(t, 10*time.Second); string(m.Payload) != "before" || m.QoS != 1 || m.Topic != p+"/a" {
		t.Fatalf("got %+v", m)
	}

	b.Restart(t)
	// The observer reconnects and subscribes again by itself; a loaded machine may take a few
	// rounds of its reconnect backoff. Publish until it hears, within a bound.
	deadline := time.Now().Add(20 * time.Second)
	for {
		brokertest.Publish(t, b.URL(), p+"/b", []byte("after"), true)
		select {
		case m := <-sub.C:
			if string(m.Payload) == "after" {
				return
			}
		case <-time.After(500 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the observer did not follow the broker's restart within 20s")
		}
	}
}

func TestClientOptions(t *testing.T) {
	url := brokertest.URL(t)
	p := brokertest.UniquePrefix(t)
	c := brokertest.Connect(t, url, &brokertest.ClientOptions{ID: p + "-keep", KeepSession: true})
	if c.ID() != p+"-keep" {
		t.Fatalf("ID() = %q", c.ID())
	}
	c.Subscribe(p + "/cmd")
	c.Disconnect()
	brokertest.Publish(t, url, p+"/cmd", []byte("queued"), false)
	back := brokertest.Connect(t, url, &brokertest.ClientOptions{ID: p + "-keep", KeepSession: true})
	m := back.NextMatch(t, 10*time.Second, "the queued message", func(m brokertest.Message) bool { return m.Topic == p+"/cmd" })
	if string(m.Payload) != "queued" {
		t.Fatalf("got %q", m.Payload)
	}
}
