package brokerconn_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"station.dev/agent/mqtt/internal/brokerconn"
	"station.dev/agent/mqtt/internal/mqtttest"
)

const hint = "put them elsewhere"

func TestParse(t *testing.T) {
	for _, c := range []struct {
		raw, url, hostport, host string
		tls                      bool
	}{
		{"tcp://b", "tcp://b:1883", "b:1883", "b", false},
		{"mqtt://b:1884", "tcp://b:1884", "b:1884", "b", false},
		{"TCP://b/", "tcp://b:1883", "b:1883", "b", false},
		{"tls://b", "tls://b:8883", "b:8883", "b", true},
		{"ssl://b:8884", "tls://b:8884", "b:8884", "b", true},
		{"mqtts://[::1]", "tls://[::1]:8883", "[::1]:8883", "::1", true},
	} {
		b, err := brokerconn.Parse(c.raw, hint)
		if err != nil {
			t.Errorf("Parse(%q): %v", c.raw, err)
			continue
		}
		if b.String() != c.url || b.URL.String() != c.url || b.HostPort != c.hostport || b.Host != c.host || b.TLS != c.tls {
			t.Errorf("Parse(%q) = %+v (%s), want %s %s %s tls=%v", c.raw, b, b, c.url, c.hostport, c.host, c.tls)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct{ raw, want string }{
		{"", "no broker URL configured"},
		{"tcp://b:x%zz", "not a valid URL"},
		{"tcp://u:secret@b", "must not contain credentials: " + hint},
		{"//b:1883", "has no scheme: want tcp://host:port or tls://host:port"},
		{"http://b:80", `unsupported scheme "http"`},
		{"b.example:1883", "unsupported scheme"},
		{"tcp://b/mqtt", "no path"},
		{"tcp://b?x=1", "no path or query"},
		{"tcp://:1883", "has no host"},
	} {
		_, err := brokerconn.Parse(c.raw, hint)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q) = %v, want %q", c.raw, err, c.want)
			continue
		}
		// The callers add their own package prefix.
		if msg := err.Error(); strings.HasPrefix(msg, "mqtt:") || strings.HasPrefix(msg, "operator:") || strings.HasPrefix(msg, "brokerconn:") {
			t.Errorf("Parse(%q) = %v: has a package prefix", c.raw, err)
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("Parse(%q) = %v: reveals the password", c.raw, err)
		}
	}
}

func TestCheckTLSFiles(t *testing.T) {
	tcp, err := brokerconn.Parse("tcp://b", hint)
	if err != nil {
		t.Fatal(err)
	}
	tlsb, err := brokerconn.Parse("tls://b", hint)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		b             brokerconn.Broker
		ca, cert, key string
		want          string // "" means no error
	}{
		{tcp, "", "", "", ""},
		{tcp, "ca.pem", "", "", "broker tcp://b:1883 is not TLS"},
		{tcp, "", "c.pem", "k.pem", "is not TLS"},
		{tlsb, "", "", "", ""},
		{tlsb, "ca.pem", "c.pem", "k.pem", ""},
		{tlsb, "", "c.pem", "", "given together"},
		{tlsb, "ca.pem", "", "k.pem", "given together"},
	} {
		err := c.b.CheckTLSFiles(c.ca, c.cert, c.key)
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s CheckTLSFiles(%q, %q, %q) = %v, want %q", c.b, c.ca, c.cert, c.key, err, c.want)
		}
	}
}

// pki writes a CA, a client certificate and its key to files.
type pki struct {
	ca                        *mqtttest.CA
	caFile, certFile, keyFile string
}

func newPKI(t *testing.T) pki {
	dir := t.TempDir()
	ca := mqtttest.NewCA(t, "ca")
	certPEM, keyPEM := ca.Issue(t, "st-1")
	p := pki{ca: ca, caFile: filepath.Join(dir, "ca.pem"), certFile: filepath.Join(dir, "cert.pem"), keyFile: filepath.Join(dir, "key.pem")}
	for name, data := range map[string][]byte{p.caFile: ca.CertPEM, p.certFile: certPEM, p.keyFile: keyPEM} {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func TestTLSConfig(t *testing.T) {
	p := newPKI(t)
	tc, err := brokerconn.TLSConfig(p.caFile, p.certFile, p.keyFile, "b.example")
	if err != nil {
		t.Fatal(err)
	}
	if tc.ServerName != "b.example" || tc.MinVersion != tls.VersionTLS12 || tc.RootCAs == nil || len(tc.Certificates) != 1 {
		t.Errorf("TLSConfig = %+v", tc)
	}
	// No files: system roots, no client certificate.
	tc, err = brokerconn.TLSConfig("", "", "", "b.example")
	if err != nil {
		t.Fatal(err)
	}
	if tc.RootCAs != nil || tc.Certificates != nil || tc.ServerName != "b.example" {
		t.Errorf("TLSConfig without files = %+v", tc)
	}

	for _, c := range []struct {
		name          string
		ca, cert, key string
		want          string
	}{
		{"key alone", "", "", p.keyFile, "client certificate and key files must be given together"},
		{"missing CA", p.certFile + ".none", "", "", "CA file: open " + p.certFile + ".none"},
		{"key as CA", p.keyFile, "", "", "CA file " + p.keyFile + ": no PEM certificate"},
		{"key as cert", "", p.keyFile, p.keyFile, "client certificate file " + p.keyFile + ": no PEM certificate"},
		{"cert as key", "", p.certFile, p.certFile, "client key file " + p.certFile + ": no PEM private key"},
	} {
		if _, err := brokerconn.TLSConfig(c.ca, c.cert, c.key, "b"); err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q…", c.name, err, c.want)
		}
	}
}

// listen accepts connections on 127.0.0.1, TLS when cfg is not nil, and
// sends each one's handshake result (nil for plain TCP) on the returned
// channel; the server ends stay open until the test ends.
func listen(t *testing.T, cfg *tls.Config) (brokerconn.Broker, <-chan error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		done  = make(chan struct{})
	)
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	res := make(chan error, 16) // more than any test makes
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			var herr error
			if cfg != nil {
				ctx, cancel := context.WithTimeout(context.Background(), mqtttest.Timeout)
				herr = tls.Server(c, cfg).HandshakeContext(ctx)
				cancel()
			}
			res <- herr
		}
	}()
	scheme := "tcp://"
	if cfg != nil {
		scheme = "tls://"
	}
	b, err := brokerconn.Parse(scheme+ln.Addr().String(), hint)
	if err != nil {
		t.Fatal(err)
	}
	return b, res
}

func recv(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(mqtttest.Timeout):
		t.Fatal("the server saw no connection")
		return nil
	}
}

func TestDialTCP(t *testing.T) {
	b, res := listen(t, nil)
	conn, err := brokerconn.Dial(context.Background(), b, nil, mqtttest.Timeout)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, ok := conn.(*tls.Conn); ok {
		t.Error("Dial without a TLS configuration returned a TLS connection")
	}
	if err := recv(t, res); err != nil {
		t.Fatal(err)
	}
}

func TestDialTLS(t *testing.T) {
	p := newPKI(t)
	b, res := listen(t, p.ca.ServerConfig(t))
	tc, err := brokerconn.TLSConfig(p.caFile, p.certFile, p.keyFile, b.Host)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := brokerconn.Dial(context.Background(), b, tc, mqtttest.Timeout)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tconn, ok := conn.(*tls.Conn)
	if !ok || !tconn.ConnectionState().HandshakeComplete {
		t.Fatalf("Dial returned %T, want a *tls.Conn after its handshake", conn)
	}
	if err := recv(t, res); err != nil {
		t.Fatalf("server handshake: %v", err)
	}

	// A CA that did not sign the server: the handshake fails on both ends
	// and the error says with whom.
	other := newPKI(t)
	bad, err := brokerconn.TLSConfig(other.caFile, p.certFile, p.keyFile, b.Host)
	if err != nil {
		t.Fatal(err)
	}
	_, err = brokerconn.Dial(context.Background(), b, bad, mqtttest.Timeout)
	if err == nil || !strings.HasPrefix(err.Error(), "TLS handshake with "+b.HostPort) || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Dial with the wrong CA = %v", err)
	}
	if err := recv(t, res); err == nil {
		t.Fatal("the server completed a handshake the client refused")
	}
}

func TestDialHonoursContext(t *testing.T) {
	b, _ := listen(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := brokerconn.Dial(ctx, b, nil, mqtttest.Timeout); !errors.Is(err, context.Canceled) {
		t.Fatalf("Dial with a cancelled context = %v", err)
	}
}
