// Package brokerconn is what the station's MQTT clients share to reach a broker: the broker
// URL, the client TLS configuration read from the CA, certificate and key files, and the dial
// (TCP, then the TLS handshake).
//
// Its errors carry no package prefix: each caller wraps them in its own ("mqtt: …",
// "operator: …").
package brokerconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

// errUnpaired is the error for a client certificate without its key or a key without its
// certificate.
var errUnpaired = errors.New("client certificate and key files must be given together")

// Broker is a validated broker address.
type Broker struct {
	URL      *url.URL // tcp:// or tls://, host and port only: handed to paho
	HostPort string   // dial address
	Host     string   // TLS server name
	TLS      bool     // the connection is TLS
}

// String returns the broker URL (scheme, host and port only).
func (b Broker) String() string { return b.URL.String() }

// Parse validates a broker URL, tcp://host[:1883], mqtt://host[:1883], tls://host[:8883],
// ssl://host[:8883] or mqtts://host[:8883], and fills in the default port. A URL holding a
// user name or password is refused with an error that ends with credentialsHint, which says
// where the credentials belong instead. Errors never repeat a password the URL may hold.
func Parse(raw, credentialsHint string) (Broker, error) {
	if raw == "" {
		return Broker{}, errors.New("no broker URL configured")
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error repeats the input, which may hold credentials.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return Broker{}, fmt.Errorf("broker URL is not a valid URL: %w", err)
	}
	if u.User != nil {
		return Broker{}, fmt.Errorf("broker URL must not contain credentials: %s", credentialsHint)
	}
	var b Broker
	var port string
	switch strings.ToLower(u.Scheme) {
	case "tcp", "mqtt":
		port = "1883"
	case "tls", "ssl", "mqtts":
		port = "8883"
		b.TLS = true
	case "":
		return Broker{}, fmt.Errorf("broker URL %q has no scheme: want tcp://host:port or tls://host:port", raw)
	default:
		return Broker{}, fmt.Errorf("broker URL %q: unsupported scheme %q: want tcp://, mqtt://, tls://, ssl:// or mqtts://", raw, u.Scheme)
	}
	if u.Opaque != "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return Broker{}, fmt.Errorf("broker URL %q: want scheme://host:port with no path or query", raw)
	}
	b.Host = u.Hostname()
	if b.Host == "" {
		return Broker{}, fmt.Errorf("broker URL %q has no host", raw)
	}
	if p := u.Port(); p != "" {
		port = p
	}
	b.HostPort = net.JoinHostPort(b.Host, port)
	scheme := "tcp"
	if b.TLS {
		scheme = "tls"
	}
	b.URL = &url.URL{Scheme: scheme, Host: b.HostPort}
	return b, nil
}

// CheckTLSFiles reports an error when CA, certificate or key files are given for a broker that
// is not TLS, or only one of the certificate and key files is given.
func (b Broker) CheckTLSFiles(caFile, certFile, keyFile string) error {
	if !b.TLS && (caFile != "" || certFile != "" || keyFile != "") {
		return fmt.Errorf("CA, certificate or key file given but broker %s is not TLS: use tls://", b)
	}
	if (certFile == "") != (keyFile == "") {
		return errUnpaired
	}
	return nil
}

// TLSConfig reads the CA, certificate and key files and builds a client TLS configuration
// (TLS 1.2 at least) for serverName. Without caFile the system roots verify the server;
// certFile and keyFile, both or neither, give the client certificate. The files are read on
// every call, so they can be rotated between connections. Errors name the file at fault.
func TLSConfig(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	if (certFile == "") != (keyFile == "") {
		return nil, errUnpaired
	}
	tc := &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: serverName,
	}
	if caFile != "" {
		data, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("CA file %s: no PEM certificate found", caFile)
		}
		tc.RootCAs = pool
	}
	if certFile != "" {
		certPEM, err := os.ReadFile(certFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate file: %w", err)
		}
		if !hasPEM(certPEM, func(t string) bool { return t == "CERTIFICATE" }) {
			return nil, fmt.Errorf("client certificate file %s: no PEM certificate found", certFile)
		}
		keyPEM, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, fmt.Errorf("client key file: %w", err)
		}
		if !hasPEM(keyPEM, func(t string) bool { return strings.HasSuffix(t, "PRIVATE KEY") }) {
			return nil, fmt.Errorf("client key file %s: no PEM private key found", keyFile)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("client certificate %s with key %s: %w", certFile, keyFile, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// hasPEM reports whether data holds a PEM block whose type satisfies ok.
func hasPEM(data []byte, ok func(string) bool) bool {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return false
		}
		if ok(b.Type) {
			return true
		}
	}
}

// Dial opens the connection to b: TCP, then the TLS handshake when tlsCfg is not nil. timeout
// bounds the two together, and ctx ends them. A TLS connection is a *tls.Conn, whose NetConn
// is the TCP socket under it.
func Dial(ctx context.Context, b Broker, tlsCfg *tls.Config, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", b.HostPort)
	if err != nil {
		return nil, err
	}
	if tlsCfg == nil {
		return raw, nil
	}
	tc := tls.Client(raw, tlsCfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", b.HostPort, err)
	}
	return tc, nil
}
