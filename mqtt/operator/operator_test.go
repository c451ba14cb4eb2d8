package operator_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"station.dev/agent/mqtt/brokertest"
	"station.dev/agent/mqtt/internal/mqtttest"
	"station.dev/agent/mqtt/operator"
)

// timeout bounds every wait; the tests end long before unless something is broken.
const timeout = 20 * time.Second

func dial(t *testing.T, url string) *operator.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := operator.Dial(ctx, operator.Options{Broker: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}

// recv receives from ch, failing the test after timeout.
func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(timeout):
		t.Fatal("nothing received")
		panic("unreachable")
	}
}

// publishRetained publishes a retained message and returns once the broker has handed it to its
// subscribers. A broker may acknowledge a publish before it fans the message out (mochi does), so a
// subscription made right after the acknowledgement can get the message twice: retained, then
// live. Waiting for an observer that subscribed first rules that out.
func publishRetained(t *testing.T, url, topic, payload string) {
	t.Helper()
	obs := brokertest.Subscribe(t, url, topic, 4)
	brokertest.Publish(t, url, topic, []byte(payload), true)
	if m := obs.Next(t, timeout); string(m.Payload) != payload {
		t.Fatalf("observer on %s got %q", topic, m.Payload)
	}
}

func clearRetained(t *testing.T, url string, topics ...string) {
	t.Cleanup(func() {
		for _, tp := range topics {
			brokertest.Publish(t, url, tp, nil, true)
		}
	})
}

func TestListStatusCollectsRetainedStatus(t *testing.T) {
	url := brokertest.URL(t)
	p := brokertest.UniquePrefix(t)
	online := `{"state":"online","station_id":"st-b","version":"1.2.3","boot_id":"b1","since":"2030-01-02T03:04:05Z","ts":"2030-01-02T03:05:00Z","reader":{"state":"ok"},"queue":{"depth":7,"full":true}}`
	offline := `{"state":"offline","reason":"lost","boot_id":"a1"}`
	topics := []string{p + "/st-a/status", p + "/st-b/status", p + "/st-c/status", p + "-other/st-d/status"}
	clearRetained(t, url, topics...)
	brokertest.Publish(t, url, topics[0], []byte(offline), true)
	brokertest.Publish(t, url, topics[1], []byte(online), true)
	brokertest.Publish(t, url, topics[2], []byte(`not json`), true)
	brokertest.Publish(t, url, topics[3], []byte(online), true) // another prefix: not listed
	brokertest.Publish(t, url, p+"/st-e/events", []byte(online), true)
	clearRetained(t, url, p+"/st-e/events")

	c := dial(t, url)
	got, err := c.ListStatus(ctxT(t), p, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("got %d stations, want 3: %+v", len(got), got)
	}
	a, b, cc := got[0], got[1], got[2]
	if a.ID != "st-a" || a.State != "offline" || a.Reason != "lost" || a.BootID != "a1" || a.Unreadable {
		t.Errorf("st-a = %+v", a)
	}
	if b.ID != "st-b" || b.State != "online" || b.Version != "1.2.3" || b.QueueDepth != 7 || !b.QueueFull ||
		b.Reader != "ok" || b.Since != "2030-01-02T03:04:05Z" || b.TS != "2030-01-02T03:05:00Z" || string(b.Payload) != online {
		t.Errorf("st-b = %+v", b)
	}
	if cc.ID != "st-c" || !cc.Unreadable || cc.State != "" || string(cc.Payload) != "not json" {
		t.Errorf("st-c = %+v", cc)
	}

	// A second listing on the same client sees them again (retained messages come with every
	// subscription), and an empty prefix lists nothing.
	again, err := c.ListStatus(ctxT(t), p, 200*time.Millisecond)
	if err != nil || len(again) != 3 {
		t.Fatalf("second listing: %d stations, %v", len(again), err)
	}
	none, err := c.ListStatus(ctxT(t), p+"-empty", 100*time.Millisecond)
	if err != nil || len(none) != 0 {
		t.Fatalf("empty prefix: %+v, %v", none, err)
	}
}

func TestListStatusHonoursContext(t *testing.T) {
	c := dial(t, brokertest.URL(t))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.ListStatus(ctx, "stations", time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestSendPublishesToStationAndFleetTopics(t *testing.T) {
	url := brokertest.URL(t)
	p := brokertest.UniquePrefix(t)
	sub := brokertest.Subscribe(t, url, p+"/+/cmd", 4)
	c := dial(t, url)
	if err := c.Send(ctxT(t), p, "st-1", []byte(`{"id":"c1"}`)); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(ctxT(t), p, "*", []byte(`{"id":"c2"}`)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []brokertest.Message{
		{Topic: p + "/st-1/cmd", Payload: []byte(`{"id":"c1"}`)},
		{Topic: p + "/_fleet/cmd", Payload: []byte(`{"id":"c2"}`)},
	} {
		m := sub.Next(t, timeout)
		if m.Topic != want.Topic || string(m.Payload) != string(want.Payload) || m.Retained {
			t.Errorf("got %s %s (retained %v), want %s %s", m.Topic, m.Payload, m.Retained, want.Topic, want.Payload)
		}
	}
}

func TestSendRefusesBadTopics(t *testing.T) {
	c := dial(t, brokertest.URL(t))
	for _, tc := range []struct{ prefix, target string }{
		{"stations", ""}, {"stations", "+"}, {"stations", "#"}, {"stations", "a/b"}, {"stations", "Upper"},
		{"stations", "_fleet"}, {"", "st-1"}, {"a/+", "st-1"}, {"a//b", "st-1"}, {"/a", "st-1"},
	} {
		if err := c.Send(ctxT(t), tc.prefix, tc.target, []byte(`{}`)); err == nil || !strings.HasPrefix(err.Error(), "operator: ") {
			t.Errorf("Send(%q, %q) = %v, want an operator error", tc.prefix, tc.target, err)
		}
	}
}

// WaitResponses must return only once the subscription is in place: a response published the
// moment it returns (before any command is even sent) is received.
func TestWaitResponsesIsSubscribedWhenItReturns(t *testing.T) {
	url := brokertest.URL(t)
	p := brokertest.UniquePrefix(t)
	c := dial(t, url)
	var got []operator.Response
	r, err := c.WaitResponses(ctxT(t), p, []string{"st-1", "st-2"}, "cmd-1", func(resp operator.Response) { got = append(got, resp) })
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	brokertest.Publish(t, url, p+"/st-1/resp", []byte(`{"id":"other","ok":true}`), false) // another command
	brokertest.Publish(t, url, p+"/st-3/resp", []byte(`{"id":"cmd-1","ok":true}`), false) // not asked
	brokertest.Publish(t, url, p+"/st-1/resp", []byte(`not json`), false)
	brokertest.Publish(t, url, p+"/st-1/resp", []byte(`{"id":"cmd-1","ok":true}`), false)
	brokertest.Publish(t, url, p+"/st-1/resp", []byte(`{"id":"cmd-1","ok":true}`), false) // redelivery
	brokertest.Publish(t, url, p+"/st-2/resp", []byte(`{"id":"cmd-1","ok":false}`), false)

	missing, err := r.Wait(ctxT(t)) // returns as soon as both answered
	if err != nil || len(missing) != 0 {
		t.Fatalf("Wait = %v, %v", missing, err)
	}
	// Once per station; brokers need not keep the order of messages from different publishers.
	byStation := map[string]string{}
	for _, g := range got {
		byStation[g.Station] = string(g.Payload)
	}
	if len(got) != 2 || byStation["st-1"] != `{"id":"cmd-1","ok":true}` || byStation["st-2"] != `{"id":"cmd-1","ok":false}` {
		t.Fatalf("responses = %+v", got)
	}
}

func TestWaitResponsesReportsMissingStations(t *testing.T) {
	url := brokertest.URL(t)
	p := brokertest.UniquePrefix(t)
	c := dial(t, url)
	ctx, cancel := context.WithCancel(ctxT(t))
	var got []string
	// The wait ends when its context does: here, right after the one response came.
	r, err := c.WaitResponses(ctxT(t), p, []string{"st-2", "st-1", "st-3"}, "cmd-1", func(resp operator.Response) {
		got = append(got, resp.Station)
		cancel()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	brokertest.Publish(t, url, p+"/st-2/resp", []byte(`{"id":"cmd-1","ok":true}`), false)
	missing, err := r.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "st-2" || strings.Join(missing, ",") != "st-1,st-3" {
		t.Fatalf("responses from %v, missing %v; want st-2 and st-1,st-3", got, missing)
	}
}

func TestWaitResponsesFromAnyStation(t *testing.T) {
	url := brokertest.URL(t)
	p := brokertest.UniquePrefix(t)
	c := dial(t, url)
	seen := make(chan string, 4)
	r, err := c.WaitResponses(ctxT(t), p, nil, "cmd-all", func(resp operator.Response) { seen <- resp.Station })
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, id := range []string{"st-1", "st-2", "st-1"} {
		brokertest.Publish(t, url, p+"/"+id+"/resp", []byte(`{"id":"cmd-all","ok":true}`), false)
	}
	ctx, cancel := context.WithCancel(ctxT(t))
	done := make(chan []string)
	go func() {
		missing, err := r.Wait(ctx)
		if err != nil {
			t.Error(err)
		}
		done <- missing
	}()
	got := map[string]bool{recv(t, seen): true, recv(t, seen): true}
	cancel()
	if missing := recv(t, done); missing != nil {
		t.Errorf("missing = %v, want nil with no station list", missing)
	}
	if !got["st-1"] || !got["st-2"] || len(seen) != 0 {
		t.Errorf("stations = %v, extra %d", got, len(seen))
	}
}

func TestWatchFollowsStatusAndEvents(t *testing.T) {
	url := brokertest.URL(t)
	p := brokertest.UniquePrefix(t)
	clearRetained(t, url, p+"/st-1/status")
	publishRetained(t, url, p+"/st-1/status", `{"state":"online"}`)
	c := dial(t, url)
	msgs := make(chan operator.Message, 10)
	ctx, cancel := context.WithCancel(ctxT(t))
	done := make(chan error, 1)
	go func() { done <- c.Watch(ctx, p, "", func(m operator.Message) { msgs <- m }) }()

	first := recv(t, msgs)
	if first.Station != "st-1" || first.Kind != "status" || !first.Retained || string(first.Payload) != `{"state":"online"}` {
		t.Fatalf("first = %+v", first)
	}
	// Events are subscribed before status: the retained status arriving shows both in place.
	brokertest.Publish(t, url, p+"/st-2/events", []byte(`{"seq":1}`), false)
	if m := recv(t, msgs); m.Station != "st-2" || m.Kind != "events" || m.Retained || string(m.Payload) != `{"seq":1}` || m.Dropped != 0 {
		t.Fatalf("event = %+v", m)
	}
	brokertest.Publish(t, url, p+"/st-2/telemetry", []byte(`{}`), false) // not watched
	brokertest.Publish(t, url, p+"/st-2/status", []byte(`{"state":"offline"}`), false)
	if m := recv(t, msgs); m.Station != "st-2" || m.Kind != "status" || string(m.Payload) != `{"state":"offline"}` {
		t.Fatalf("status = %+v", m)
	}
	cancel()
	if err := recv(t, done); err != nil {
		t.Fatalf("Watch = %v, want nil after cancel", err)
	}
}

func TestLostConnectionEndsCalls(t *testing.T) {
	b := brokertest.Embedded(t, "127.0.0.1:0") // in process, so it can be stopped
	brokertest.Publish(t, b.URL(), "stations/st-1/status", []byte(`{"state":"online"}`), true)
	c := dial(t, b.URL())
	done := make(chan error, 1)
	watching := make(chan operator.Message, 1)
	go func() {
		done <- c.Watch(context.Background(), "stations", "", func(m operator.Message) {
			select {
			case watching <- m:
			default:
			}
		})
	}()
	recv(t, watching) // the retained status: Watch is in its loop
	b.Close()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "lost") {
			t.Fatalf("Watch = %v, want connection lost", err)
		}
	case <-time.After(timeout):
		t.Fatal("Watch did not end when the broker went away")
	}
	recv(t, c.Lost())
	if err := c.Err(); err == nil || !strings.Contains(err.Error(), "lost") {
		t.Fatalf("Err() = %v after the connection was lost", err)
	}
	if err := c.Send(ctxT(t), "stations", "st-1", []byte(`{}`)); err == nil {
		t.Fatal("Send after the connection was lost succeeded")
	}
}

func TestDialErrors(t *testing.T) {
	ctx := ctxT(t)
	for _, tc := range []struct {
		opts operator.Options
		want string
	}{
		{operator.Options{}, "no broker URL"},
		{operator.Options{Broker: "http://x:1"}, `unsupported scheme "http"`},
		{operator.Options{Broker: "tcp://user:pw@x:1"}, "must not contain credentials"},
		{operator.Options{Broker: "tcp://:1883"}, "no host"},
		{operator.Options{Broker: "tcp://x:1/path"}, "no path"},
		{operator.Options{Broker: "tcp://x:1", CAFile: "ca.pem"}, "not TLS"},
		{operator.Options{Broker: "tls://x:1", CertFile: "c.pem"}, "together"},
		{operator.Options{Broker: "tcp://x:1", Password: "pw"}, "needs a username"},
		{operator.Options{Broker: "tls://x:1", CAFile: filepath.Join(t.TempDir(), "none.pem")}, "CA file"},
	} {
		_, err := operator.Dial(ctx, tc.opts)
		if err == nil || !strings.HasPrefix(err.Error(), "operator: ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Dial(%+v) = %v, want %q", tc.opts, err, tc.want)
		}
	}
	// Nothing listens: the error names the broker.
	b := brokertest.Embedded(t, "127.0.0.1:0")
	url := b.URL()
	b.Close()
	if _, err := operator.Dial(ctx, operator.Options{Broker: url, ConnectTimeout: 2 * time.Second}); err == nil || !strings.Contains(err.Error(), url) {
		t.Errorf("Dial to a closed port = %v", err)
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := operator.Dial(cancelled, operator.Options{Broker: brokertest.URL(t)}); !errors.Is(err, context.Canceled) {
		t.Errorf("Dial with a cancelled context = %v", err)
	}
}

func TestTLSWithClientCertificate(t *testing.T) {
	b := brokertest.New(t)
	ca := mqtttest.NewCA(t, "fleet-ca")
	proxy := mqtttest.NewTLSProxy(t, b.Addr(), ca.ServerConfig(t))
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	certPEM, keyPEM := ca.Issue(t, "operator")
	opts := operator.Options{
		Broker:   "tls://" + proxy.Addr(),
		CAFile:   write("ca.pem", ca.CertPEM),
		CertFile: write("op.pem", certPEM),
		KeyFile:  write("op.key", keyPEM),
	}
	c, err := operator.Dial(ctxT(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := brokertest.UniquePrefix(t)
	sub := brokertest.Subscribe(t, b.URL(), p+"/st-1/cmd", 1)
	if err := c.Send(ctxT(t), p, "st-1", []byte(`{"id":"tls"}`)); err != nil {
		t.Fatal(err)
	}
	if m := sub.Next(t, timeout); string(m.Payload) != `{"id":"tls"}` {
		t.Fatalf("got %s", m.Payload)
	}

	// The wrong CA: the handshake fails and says why.
	bad := opts
	bad.CAFile = write("other-ca.pem", mqtttest.NewCA(t, "other").CertPEM)
	if _, err := operator.Dial(ctxT(t), bad); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Dial with the wrong CA = %v", err)
	}
	// No client certificate: the broker refuses the handshake.
	anon := opts
	anon.CertFile, anon.KeyFile = "", ""
	if c, err := operator.Dial(ctxT(t), anon); err == nil {
		// TLS 1.3 reports a refused client certificate only on the first read.
		_, lerr := c.ListStatus(ctxT(t), p, 50*time.Millisecond)
		c.Close()
		if lerr == nil {
			t.Fatal("a client without a certificate was served")
		}
	}
}

func TestParseStatus(t *testing.T) {
	st := operator.ParseStatus("st-1", []byte(`{"state":"online","queue":{"depth":3},"reader":{"state":"error"}}`))
	if st.State != "online" || st.QueueDepth != 3 || st.Reader != "error" || st.Unreadable {
		t.Errorf("%+v", st)
	}
	for _, p := range []string{``, `[]`, `{"state":1}`, `{`} {
		if st := operator.ParseStatus("st-1", []byte(p)); !st.Unreadable {
			t.Errorf("ParseStatus(%q) = %+v, want unreadable", p, st)
		}
	}
	var _ json.RawMessage = st.Payload
}

// Every goroutine a Client starts (paho's and the package's own) ends with Close and with the
// calls that used it.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	url := brokertest.URL(t)
	p := brokertest.UniquePrefix(t)
	before := runtime.NumGoroutine()

	c := dial(t, url)
	if _, err := c.ListStatus(ctxT(t), p, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	r, err := c.WaitResponses(ctxT(t), p, []string{"st-1"}, "x", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctxT(t))
	cancel()
	if _, err := r.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := c.Watch(ctx, p, "", func(operator.Message) {}); err != nil {
		t.Fatal(err)
	}
	c.Close()

	// Goroutines end asynchronously after Close: poll, with a deadline.
	deadline := time.Now().Add(timeout)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after Close:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
