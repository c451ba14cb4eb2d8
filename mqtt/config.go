package mqtt

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"station.dev/agent/mqtt/internal/brokerconn"
)

// Defaults applied by New to zero fields of Config.
const (
	DefaultKeepAlive      = 30 * time.Second
	DefaultConnectTimeout = 10 * time.Second
	DefaultBackoffMin     = 1 * time.Second
	DefaultBackoffMax     = 2 * time.Minute
	DefaultWindow         = 32
)

// MaxWindow is the largest accepted Config.Window. MQTT packet identifiers
// are 16 bits; far fewer in flight already saturate any station uplink.
const MaxWindow = 1024

// Stream maps an outbox stream to a topic. Items of a stream are published
// in seq order with QoS 1, or QoS 0 when QoS is 0.
type Stream struct {
	Name  string // outbox stream name
	Topic string // MQTT topic the stream's items are published on
	QoS   byte   // 1 (at least once) or 0 (best effort: deleted once written)
}

// Config configures a Link. Zero durations and Window take the defaults
// above. Only Broker and ClientID are required.
type Config struct {
	// Broker is the broker URL: tcp://host[:1883], mqtt://host[:1883],
	// tls://host[:8883], ssl://host[:8883] or mqtts://host[:8883].
	// Credentials do not belong in the URL: use Username and Password.
	Broker string
	// ClientID is the stable MQTT client id (the station id). The broker
	// keeps the session (subscriptions, queued commands) under it.
	ClientID string
	Username string
	Password string

	// CAFile, CertFile and KeyFile configure TLS for tls://, ssl:// and
	// mqtts:// brokers. Without CAFile the system roots are used; CertFile
	// and KeyFile (both or neither) give a client certificate. The files
	// are read again on every connect attempt, so they can be rotated
	// without a restart.
	CAFile, CertFile, KeyFile string

	// KeepAlive is the MQTT keep-alive interval (whole seconds, at least
	// 1s; default 30s). It also sets how fast a dead connection is
	// noticed: after KeepAlive without a packet from the broker (the link
	// pings after KeepAlive/3 of silence), and bounds every socket write
	// to KeepAlive/2.
	KeepAlive time.Duration
	// ConnectTimeout bounds the TCP dial, the TLS handshake and the wait
	// for CONNACK (default 10s).
	ConnectTimeout time.Duration
	// AckTimeout: a publish or subscribe that gets no acknowledgement for
	// this long means the connection is broken; the link drops it and
	// reconnects. It also bounds the write check (see Link). Default:
	// KeepAlive.
	AckTimeout time.Duration
	// BackoffMin and BackoffMax bound the wait between connect attempts:
	// exponential from BackoffMin, capped at BackoffMax and at half the
	// time since the last proven connection was lost, with full jitter
	// (defaults 1s and 2m). The backoff starts again from BackoffMin once
	// a connection has proved itself: CONNACK, an acknowledgement, and the
	// write check passed.
	BackoffMin, BackoffMax time.Duration
	// Window is the maximum number of outbox items (and PublishNow
	// messages) published and not yet acknowledged, over all streams
	// (default 32). The link holds at most
	// 2×Window items in memory; the backlog stays in the outbox.
	Window int

	// StatusTopic is the retained status topic. Empty disables the online
	// status, the last will and the shutdown status.
	StatusTopic string
	// Status returns the online status payload. It is called on every
	// connect and on UpdateStatus, and published retained with QoS 1.
	Status func() []byte
	// WillPayload is the last will, published retained with QoS 1 on
	// StatusTopic by the broker when the connection is lost without a
	// clean DISCONNECT. Nil means no will.
	WillPayload []byte
	// Will, if set, returns the last will for each new connection (so
	// that its timestamp is the connection's) instead of WillPayload.
	Will func() []byte
	// ShutdownStatus returns the status published retained with QoS 1
	// when Run stops cleanly, before DISCONNECT.
	ShutdownStatus func() []byte

	// Streams are drained from the outbox in seq order, round robin.
	Streams []Stream
	// Subscriptions are topic filters subscribed with QoS 1 after every
	// connect. The session is persistent: messages published while the
	// link is away are delivered when it comes back.
	Subscriptions []string
	// OnMessage receives messages on the subscribed topics, one at a
	// time in receive order, on a goroutine of the link's (not paho's
	// receive path: it may take its time). Call Message.Ack once the
	// message is safely handled (stored), or Message.Nack if it could not
	// be: the connection is then dropped so that the broker delivers it
	// again at once. Required with Subscriptions.
	OnMessage func(Message)

	// OnUndelivered receives the PublishNow messages that were handed to
	// a connection that was lost before their PUBACK came. It must not
	// block.
	OnUndelivered func(topic string, payload []byte)

	// SkipWriteCheck turns the write check off (see Link): items are then
	// deleted on their PUBACK alone. Only for brokers that reject what
	// they do not keep, or where the station may not read its own topics.
	SkipWriteCheck bool

	// Logger receives connection events; nil means quiet.
	Logger *slog.Logger
	// Rand is the jitter source, returning values in [0,1); nil means
	// math/rand/v2.
	Rand func() float64

	// Progress, if set, is called each time the link's loop turns and at least every
	// ProgressInterval while it waits (for the broker, or before reconnecting), so a service
	// watchdog can tell a working link from a stuck one. It must not block.
	Progress func()
}

// checkTopic validates a topic name for publishing.
func checkTopic(what, topic string) error {
	switch {
	case topic == "":
		return fmt.Errorf("mqtt: %s is empty", what)
	case len(topic) > 65535:
		return fmt.Errorf("mqtt: %s is longer than 65535 bytes", what)
	case !utf8.ValidString(topic) || strings.ContainsRune(topic, 0):
		return fmt.Errorf("mqtt: %s %q is not valid UTF-8 without NUL", what, topic)
	case strings.ContainsAny(topic, "+#"):
		return fmt.Errorf("mqtt: %s %q must not contain wildcards", what, topic)
	}
	return nil
}

// checkFilter validates a subscription topic filter.
func checkFilter(filter string) error {
	if filter == "" || len(filter) > 65535 || !utf8.ValidString(filter) || strings.ContainsRune(filter, 0) {
		return fmt.Errorf("mqtt: subscription %q is not a valid topic filter", filter)
	}
	levels := strings.Split(filter, "/")
	for i, lv := range levels {
		if strings.Contains(lv, "#") && (lv != "#" || i != len(levels)-1) {
			return fmt.Errorf("mqtt: subscription %q: '#' must be a whole last level", filter)
		}
		if strings.Contains(lv, "+") && lv != "+" {
			return fmt.Errorf("mqtt: subscription %q: '+' must be a whole level", filter)
		}
	}
	return nil
}

// normalize validates cfg and fills in defaults. It returns the parsed broker.
func (cfg *Config) normalize() (brokerconn.Broker, error) {
	b, err := brokerconn.Parse(cfg.Broker, "set the username and password instead")
	if err != nil {
		return brokerconn.Broker{}, fmt.Errorf("mqtt: %w", err)
	}
	if cfg.ClientID == "" {
		return brokerconn.Broker{}, errors.New("mqtt: no client id configured")
	}
	if len(cfg.ClientID) > 65535 || !utf8.ValidString(cfg.ClientID) {
		return brokerconn.Broker{}, errors.New("mqtt: client id is not valid UTF-8 of at most 65535 bytes")
	}
	if cfg.Password != "" && cfg.Username == "" {
		return brokerconn.Broker{}, errors.New("mqtt: a password needs a username (MQTT 3.1.1)")
	}
	if err := b.CheckTLSFiles(cfg.CAFile, cfg.CertFile, cfg.KeyFile); err != nil {
		return brokerconn.Broker{}, fmt.Errorf("mqtt: %w", err)
	}

	durations := []struct {
		name string
		d    *time.Duration
		def  time.Duration
	}{
		{"keep-alive", &cfg.KeepAlive, DefaultKeepAlive},
		{"connect timeout", &cfg.ConnectTimeout, DefaultConnectTimeout},
		{"ack timeout", &cfg.AckTimeout, 0},
		{"minimum backoff", &cfg.BackoffMin, DefaultBackoffMin},
		{"maximum backoff", &cfg.BackoffMax, DefaultBackoffMax},
	}
	for _, d := range durations {
		if *d.d < 0 {
			return brokerconn.Broker{}, fmt.Errorf("mqtt: %s %v is negative", d.name, *d.d)
		}
		if *d.d == 0 {
			*d.d = d.def
		}
	}
	if cfg.KeepAlive < time.Second || cfg.KeepAlive > 65535*time.Second {
		return brokerconn.Broker{}, fmt.Errorf("mqtt: keep-alive %v is outside 1s..65535s", cfg.KeepAlive)
	}
	if cfg.AckTimeout == 0 {
		cfg.AckTimeout = cfg.KeepAlive
	}
	if cfg.BackoffMin > cfg.BackoffMax {
		return brokerconn.Broker{}, fmt.Errorf("mqtt: minimum backoff %v is larger than maximum backoff %v", cfg.BackoffMin, cfg.BackoffMax)
	}
	switch {
	case cfg.Window < 0 || cfg.Window > MaxWindow:
		return brokerconn.Broker{}, fmt.Errorf("mqtt: window %d is outside 1..%d", cfg.Window, MaxWindow)
	case cfg.Window == 0:
		cfg.Window = DefaultWindow
	}

	if cfg.StatusTopic != "" {
		if err := checkTopic("status topic", cfg.StatusTopic); err != nil {
			return brokerconn.Broker{}, err
		}
	} else if cfg.Status != nil || cfg.WillPayload != nil || cfg.Will != nil || cfg.ShutdownStatus != nil {
		return brokerconn.Broker{}, errors.New("mqtt: status, last will or shutdown status given without a status topic")
	}

	names := make(map[string]bool, len(cfg.Streams))
	for _, s := range cfg.Streams {
		if s.Name == "" {
			return brokerconn.Broker{}, errors.New("mqtt: stream with an empty name")
		}
		if names[s.Name] {
			return brokerconn.Broker{}, fmt.Errorf("mqtt: stream %q configured twice", s.Name)
		}
		names[s.Name] = true
		if err := checkTopic(fmt.Sprintf("topic of stream %q", s.Name), s.Topic); err != nil {
			return brokerconn.Broker{}, err
		}
		if s.QoS > 1 {
			return brokerconn.Broker{}, fmt.Errorf("mqtt: stream %q: QoS %d not supported (0 or 1)", s.Name, s.QoS)
		}
	}
	for _, f := range cfg.Subscriptions {
		if err := checkFilter(f); err != nil {
			return brokerconn.Broker{}, err
		}
	}
	if len(cfg.Subscriptions) > 0 && cfg.OnMessage == nil {
		return brokerconn.Broker{}, errors.New("mqtt: subscriptions given without an OnMessage handler")
	}
	cfg.Streams = append([]Stream(nil), cfg.Streams...)
	cfg.Subscriptions = append([]string(nil), cfg.Subscriptions...)
	cfg.WillPayload = append([]byte(nil), cfg.WillPayload...)
	return b, nil
}

// tlsConfig reads the CA, certificate and key files and builds the client
// TLS configuration for one connect attempt.
func (cfg *Config) tlsConfig(serverName string) (*tls.Config, error) {
	tc, err := brokerconn.TLSConfig(cfg.CAFile, cfg.CertFile, cfg.KeyFile, serverName)
	if err != nil {
		return nil, fmt.Errorf("mqtt: %w", err)
	}
	return tc, nil
}
