package mqtt_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"station.dev/agent/mqtt"
	"station.dev/agent/mqtt/internal/mqtttest"
)

func TestNewRejectsBadConfig(t *testing.T) {
	good := func() mqtt.Config {
		return mqtt.Config{Broker: "tcp://127.0.0.1:1883", ClientID: "st-1",
			Streams: []mqtt.Stream{{Name: "events", Topic: "stations/st-1/events", QoS: 1}}}
	}
	for _, c := range []struct {
		name string
		mod  func(*mqtt.Config)
		want string
	}{
		{"no broker", func(c *mqtt.Config) { c.Broker = "" }, "mqtt: no broker URL"},
		{"http", func(c *mqtt.Config) { c.Broker = "http://broker:80" }, `unsupported scheme "http"`},
		{"ws", func(c *mqtt.Config) { c.Broker = "ws://broker:80" }, `unsupported scheme "ws"`},
		{"no scheme", func(c *mqtt.Config) { c.Broker = "//broker:1883" }, "has no scheme"},
		{"host:port", func(c *mqtt.Config) { c.Broker = "broker.example:1883" }, "unsupported scheme"},
		{"no host", func(c *mqtt.Config) { c.Broker = "tcp://:1883" }, "has no host"},
		{"path", func(c *mqtt.Config) { c.Broker = "tcp://broker/mqtt" }, "no path"},
		{"credentials", func(c *mqtt.Config) { c.Broker = "tcp://u:secret@broker" }, "must not contain credentials"},
		{"no client id", func(c *mqtt.Config) { c.ClientID = "" }, "no client id"},
		{"password alone", func(c *mqtt.Config) { c.Password = "x" }, "needs a username"},
		{"CA on tcp", func(c *mqtt.Config) { c.CAFile = "/ca.pem" }, "is not TLS"},
		{"cert alone", func(c *mqtt.Config) { c.Broker, c.CertFile = "tls://b", "/c.pem" }, "given together"},
		{"negative", func(c *mqtt.Config) { c.AckTimeout = -1 }, "ack timeout -1ns is negative"},
		{"keepalive", func(c *mqtt.Config) { c.KeepAlive = time.Millisecond }, "keep-alive 1ms"},
		{"backoff", func(c *mqtt.Config) { c.BackoffMin, c.BackoffMax = time.Minute, time.Second }, "minimum backoff"},
		{"window", func(c *mqtt.Config) { c.Window = -1 }, "window -1"},
		{"window large", func(c *mqtt.Config) { c.Window = 70000 }, "window 70000"},
		{"status no topic", func(c *mqtt.Config) { c.Status = func() []byte { return nil } }, "without a status topic"},
		{"status wildcard", func(c *mqtt.Config) { c.StatusTopic = "s/+/status" }, "wildcards"},
		{"stream no name", func(c *mqtt.Config) { c.Streams[0].Name = "" }, "empty name"},
		{"stream twice", func(c *mqtt.Config) { c.Streams = append(c.Streams, c.Streams[0]) }, "configured twice"},
		{"stream topic", func(c *mqtt.Config) { c.Streams[0].Topic = "a/#" }, "wildcards"},
		{"stream qos", func(c *mqtt.Config) { c.Streams[0].QoS = 2 }, "QoS 2 not supported"},
		{"filter", func(c *mqtt.Config) { c.Subscriptions, c.OnMessage = []string{"a/#/b"}, func(mqtt.Message) {} }, "'#' must be"},
		{"filter plus", func(c *mqtt.Config) { c.Subscriptions, c.OnMessage = []string{"a/b+"}, func(mqtt.Message) {} }, "'+' must be"},
		{"no handler", func(c *mqtt.Config) { c.Subscriptions = []string{"a/cmd"} }, "without an OnMessage"},
	} {
		cfg := good()
		c.mod(&cfg)
		_, err := mqtt.New(cfg, mqtttest.NewMemOutbox())
		if err == nil || !strings.HasPrefix(err.Error(), "mqtt: ") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: error reveals the password: %v", c.name, err)
		}
	}
	if _, err := mqtt.New(good(), nil); err == nil {
		t.Error("New accepted a nil outbox")
	}
	for _, b := range []string{"tcp://b", "mqtt://b:1884", "tls://b", "ssl://b:8884", "mqtts://[::1]:8883", "TCP://b/"} {
		cfg := good()
		cfg.Broker = b
		if _, err := mqtt.New(cfg, mqtttest.NewMemOutbox()); err != nil {
			t.Errorf("broker %q: %v", b, err)
		}
	}
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	// Rename: the link may read the file at any moment.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// firstError runs a link until its first failure and returns LastError.
func firstError(t *testing.T, cfg mqtt.Config) string {
	t.Helper()
	cfg.BackoffMin, cfg.BackoffMax = time.Hour, time.Hour // one attempt is enough
	l, stop := run(t, cfg, mqtttest.NewMemOutbox())
	st := mqtttest.WaitStats(t, l, "a failure", func(s mqtt.Stats) bool { return s.Failures > 0 })
	stop()
	return st.LastError
}

func TestTLSFileErrorsNameTheFile(t *testing.T) {
	dir := t.TempDir()
	ca := mqtttest.NewCA(t, "ca")
	certPEM, keyPEM := ca.Issue(t, "st-1")
	_, otherKey := ca.Issue(t, "other")
	files := map[string][]byte{
		"ca.pem": ca.CertPEM, "garbage.pem": []byte("not PEM\n"),
		"cert.pem": certPEM, "key.pem": keyPEM, "other-key.pem": otherKey,
	}
	for name, data := range files {
		write(t, filepath.Join(dir, name), data)
	}
	p := func(name string) string { return filepath.Join(dir, name) }

	for _, c := range []struct {
		name          string
		ca, cert, key string
		want1, want2  string
	}{
		{"missing CA", p("nope.pem"), "", "", "mqtt: CA file: open " + p("nope.pem"), "no such file"},
		{"bad CA", p("garbage.pem"), "", "", "mqtt: CA file " + p("garbage.pem"), "no PEM certificate"},
		{"missing cert", p("ca.pem"), p("nope.pem"), p("key.pem"), "mqtt: client certificate file: open " + p("nope.pem"), "no such file"},
		{"bad cert", "", p("garbage.pem"), p("key.pem"), "mqtt: client certificate file " + p("garbage.pem"), "no PEM certificate"},
		{"key as cert", "", p("key.pem"), p("key.pem"), "mqtt: client certificate file " + p("key.pem"), "no PEM certificate"},
		{"missing key", "", p("cert.pem"), p("nope.pem"), "mqtt: client key file: open " + p("nope.pem"), "no such file"},
		{"cert as key", "", p("cert.pem"), p("cert.pem"), "mqtt: client key file " + p("cert.pem"), "no PEM private key"},
		{"wrong key", "", p("cert.pem"), p("other-key.pem"), "mqtt: client certificate " + p("cert.pem") + " with key " + p("other-key.pem"), "does not match"},
	} {
		cfg := mqtt.Config{Broker: "tls://127.0.0.1:1", ClientID: "st-1", CAFile: c.ca, CertFile: c.cert, KeyFile: c.key}
		got := firstError(t, cfg)
		if !strings.HasPrefix(got, c.want1) || !strings.Contains(got, c.want2) {
			t.Errorf("%s: LastError = %q, want %q … %q", c.name, got, c.want1, c.want2)
		}
	}
}

func TestTLSWithClientCertificateAndRotatedCA(t *testing.T) {
	e := newEnv(t)
	ca := mqtttest.NewCA(t, "fleet-ca")
	tlsProxy := mqtttest.NewTLSProxy(t, e.proxy.Addr(), ca.ServerConfig(t))
	dir := t.TempDir()
	caFile, certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "st.pem"), filepath.Join(dir, "st.key")
	certPEM, keyPEM := ca.Issue(t, "st-1")
	write(t, certFile, certPEM)
	write(t, keyFile, keyPEM)
	write(t, caFile, mqtttest.NewCA(t, "stale-ca").CertPEM) // the wrong CA

	cfg := e.config()
	cfg.Broker = "tls://" + tlsProxy.Addr()
	cfg.CAFile, cfg.CertFile, cfg.KeyFile = caFile, certFile, keyFile
	e.add(events, 50)
	l, _ := run(t, cfg, e.out)
	st := mqtttest.WaitStats(t, l, "a failed handshake", func(s mqtt.Stats) bool { return s.Failures >= 2 })
	if !strings.Contains(st.LastError, "TLS handshake") || !strings.Contains(st.LastError, "certificate") {
		t.Fatalf("LastError = %q, want a certificate verification failure", st.LastError)
	}

	write(t, caFile, ca.CertPEM) // rotated: read again on the next attempt
	e.out.WaitEmpty(t)
	if st := l.Stats(); !st.Connected || st.Connects != 1 {
		t.Fatalf("stats = %+v", st)
	}
	checkConsecutive(t, e.tr.Sent(), 50)
}
