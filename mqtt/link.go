// Package mqtt is the station agent's link to the central MQTT broker.
//
// A Link drains an Outbox to the broker: items are published in seq order
// per stream, with at most Config.Window QoS 1 publishes awaiting their
// PUBACK, and each item is deleted from the outbox only after its own
// PUBACK arrived. The Link runs its own connect loop with a fresh paho
// client per connection (paho's auto-reconnect can report a QoS 1 publish
// as complete although no PUBACK came), retries forever with capped
// exponential backoff and full jitter, and re-sends every unacknowledged
// item after each connect. Delivery is therefore at least once: an item
// may reach the broker twice, always with the same seq.
//
// The Link also publishes a retained status (online on connect, a last will
// when the connection is lost, a shutdown status on a clean stop) and keeps
// persistent-session subscriptions whose messages are acknowledged only
// when the receiver says so (Message.Ack).
//
// Only this package imports paho.
package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"station.dev/agent/internal/backoff"
	"station.dev/agent/mqtt/internal/brokerconn"
)

// Item is one stored record to publish.
type Item struct {
	Seq     uint64
	Payload []byte
}

// Outbox is what the link drains. Implementations must be safe for
// concurrent use.
type Outbox interface {
	// Read returns at most max items of stream with Seq > after, in
	// ascending Seq order. The link keeps the returned payloads until the
	// items are deleted or the connection ends: they must not be reused.
	Read(stream string, after uint64, max int) ([]Item, error)
	// Delete removes items of stream. The link calls it only for items
	// whose own PUBACK (or, on a QoS 0 stream, whose write) completed.
	Delete(stream string, seqs ...uint64) error
	// Changed returns a channel that receives (or is closed) after new
	// items are added. The link calls Changed before each round of Reads
	// and waits on the channel it got, so either a buffered coalescing
	// channel or a close-and-replace broadcast channel works.
	Changed() <-chan struct{}
}

// Stats is a snapshot of the link's state.
type Stats struct {
	Connected bool
	Since     time.Time // when the current state (connected or not) began
	Connects  uint64    // successful connects
	Failures  uint64    // failed connect attempts + lost connections
	LastError string    // the last connect, connection or outbox error
	InFlight  int       // outbox items published and not yet acknowledged
	Published uint64    // outbox items published (re-sends included)
	Acked     uint64    // outbox items acknowledged and deleted
}

const (
	// shutdownWait bounds the wait for the shutdown status's PUBACK.
	shutdownWait = 2 * time.Second
	// publisherWait bounds Run's wait for publisher goroutines.
	publisherWait = 500 * time.Millisecond
	// disconnectQuiesce is the time paho gets to send DISCONNECT.
	disconnectQuiesce = 250 // ms
	// stableMax caps the time after which a connection counts as stable
	// and resets the backoff.
	stableMax = time.Minute
)

// Link is the broker link. Create it with New and start it with Run.
type Link struct {
	cfg    Config
	broker brokerconn.Broker
	out    Outbox
	log    *slog.Logger
	rand   func() float64

	running   atomic.Bool
	statusReq chan struct{}  // coalesced UpdateStatus requests
	pubs      sync.WaitGroup // publisher goroutines, one per connection

	published atomic.Uint64
	acked     atomic.Uint64
	inflight  atomic.Int64

	mu        sync.Mutex
	client    paho.Client // the open connection; nil when not connected
	connected bool
	since     time.Time
	lastErr   string
	connects  uint64
	failures  uint64
	changed   chan struct{} // closed and replaced on every state change
}

// New validates cfg and returns a Link that drains out. Nothing connects
// until Run.
func New(cfg Config, out Outbox) (*Link, error) {
	if out == nil {
		return nil, errors.New("mqtt: no outbox given")
	}
	b, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	l := &Link{
		cfg:       cfg,
		broker:    b,
		out:       out,
		log:       cfg.Logger,
		rand:      cfg.Rand,
		statusReq: make(chan struct{}, 1),
		since:     time.Now(),
		changed:   make(chan struct{}),
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if l.rand == nil {
		l.rand = rand.Float64
	}
	return l, nil
}

// Run connects to the broker and drains the outbox until ctx is cancelled,
// reconnecting after every failure with backoff. The first connect is
// retried forever like any other. Cancellation is the normal stop: Run
// then publishes the shutdown status (waiting at most 2s for its PUBACK),
// disconnects, waits for pending outbox deletes and returns nil. Run
// returns an error only if the Link is already running.
func (l *Link) Run(ctx context.Context) error {
	if !l.running.CompareAndSwap(false, true) {
		return errors.New("mqtt: link is already running")
	}
	defer l.running.Store(false)

	dels := newDeleter(l)
	defer func() {
		dels.close()
		l.awaitPublishers()
	}()

	stable := min(l.cfg.BackoffMax, stableMax)
	failures := 0
	for {
		up, err := l.connect1(ctx, dels)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil { // cannot happen: connect1 returns nil only when cancelled
			err = errors.New("mqtt: connection ended")
		}
		if up >= stable {
			failures = 0
		}
		wait := backoff.Delay(failures, l.cfg.BackoffMin, l.cfg.BackoffMax, l.rand())
		l.noteFailure(err, up > 0, failures, wait)
		if failures < 62 {
			failures++
		}
		if !l.sleep(ctx, wait) {
			return nil
		}
	}
}

// ProgressInterval is the longest the link waits without calling Config.Progress.
const ProgressInterval = 5 * time.Second

// progress reports that the link's loop is alive.
func (l *Link) progress() {
	if l.cfg.Progress != nil {
		l.cfg.Progress()
	}
}

// sleep waits d, reporting progress meanwhile; false if ctx ended first.
func (l *Link) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	tick := time.NewTicker(ProgressInterval)
	defer tick.Stop()
	for {
		l.progress()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-tick.C:
		}
	}
}

// awaitPublishers waits for the connections' publisher goroutines, at
// most publisherWait. A publisher caught in a paho call when its
// connection dropped under it ends only when paho's write timeout
// (min(ConnectTimeout, AckTimeout)) expires: paho's Publish has no way
// to be cancelled. It holds nothing but the dead client.
func (l *Link) awaitPublishers() {
	done := make(chan struct{})
	go func() {
		l.pubs.Wait()
		close(done)
	}()
	t := time.NewTimer(publisherWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		l.log.Debug("mqtt: a publisher is still in a paho call of a lost connection; it ends on its own")
	}
}

// connect1 makes one connection: it connects, serves it until it is lost,
// broken or ctx is cancelled, and returns how long it was up. It returns
// a nil error only after a clean stop on cancellation.
func (l *Link) connect1(ctx context.Context, dels *deleter) (time.Duration, error) {
	var tlsCfg *tls.Config
	if l.broker.TLS {
		var err error
		if tlsCfg, err = l.cfg.tlsConfig(l.broker.Host); err != nil {
			return 0, err
		}
	}
	s := &connState{lost: make(chan struct{})}
	c := paho.NewClient(l.clientOptions(ctx, s, tlsCfg))

	// The connect token completes within ConnectTimeout (dial, handshake
	// and CONNACK are all bounded); cancellation closes the socket at once.
	tok := c.Connect()
	stop := context.AfterFunc(ctx, s.kill)
	<-tok.Done()
	if !stop() { // cancelled while connecting
		if tok.Error() == nil {
			s.awaitLost(l.cfg.ConnectTimeout) // the socket is closed: paho winds down
		}
		return 0, nil
	}
	if err := tok.Error(); err != nil {
		return 0, fmt.Errorf("mqtt: connect to %s: %w", l.broker, err)
	}

	start := time.Now()
	l.setConnected(c)
	l.log.Info("mqtt: connected", "broker", l.broker.String(), "client_id", l.cfg.ClientID,
		"session_present", tok.(*paho.ConnectToken).SessionPresent())

	d := newDrain(l, c, s, dels)
	err := d.run(ctx, c)
	if err != nil && ctx.Err() == nil {
		// Lost, or broken (no PUBACK in time, publish failed): make sure
		// the socket is closed and paho has stopped before the next client.
		s.kill()
		s.awaitLost(l.cfg.ConnectTimeout)
	}
	l.setDisconnected()
	return time.Since(start), err
}

// clientOptions returns the paho options for one connection.
func (l *Link) clientOptions(ctx context.Context, s *connState, tlsCfg *tls.Config) *paho.ClientOptions {
	o := paho.NewClientOptions()
	o.AddBroker(l.broker.URL.String())
	o.SetClientID(l.cfg.ClientID)
	o.SetUsername(l.cfg.Username)
	o.SetPassword(l.cfg.Password)
	o.SetProtocolVersion(4) // MQTT 3.1.1, no silent fallback to 3.1
	// The link owns reconnection: one client per connection, so no token
	// of an earlier connection can complete on a later one.
	o.SetAutoReconnect(false)
	o.SetConnectRetry(false)
	o.SetCleanSession(false) // keep subscriptions and queued commands
	o.SetResumeSubs(false)
	// Handlers run in order on the receive path: OnMessage must not block.
	o.SetOrderMatters(true)
	o.SetAutoAckDisabled(true) // Message.Ack sends the PUBACK
	// A fresh in-memory store per connection: paho's FileStore does not
	// fsync, and the outbox is the durable store.
	o.SetStore(paho.NewMemoryStore())
	o.SetKeepAlive(l.cfg.KeepAlive)
	o.SetPingTimeout(l.cfg.ConnectTimeout)
	o.SetConnectTimeout(l.cfg.ConnectTimeout)
	o.SetWriteTimeout(min(l.cfg.ConnectTimeout, l.cfg.AckTimeout))
	if l.cfg.StatusTopic != "" && l.cfg.WillPayload != nil {
		o.SetBinaryWill(l.cfg.StatusTopic, l.cfg.WillPayload, 1, true)
	}
	o.SetDefaultPublishHandler(l.onMessage)
	o.SetConnectionLostHandler(func(_ paho.Client, err error) { s.setLost(err) })
	o.SetCustomOpenConnectionFn(func(*url.URL, paho.ClientOptions) (net.Conn, error) {
		return l.dial(ctx, s, tlsCfg)
	})
	return o
}

// dial opens the network connection (TCP, then TLS if configured).
func (l *Link) dial(ctx context.Context, s *connState, tlsCfg *tls.Config) (net.Conn, error) {
	conn, err := brokerconn.Dial(ctx, l.broker, tlsCfg, l.cfg.ConnectTimeout)
	if err != nil {
		return nil, err
	}
	raw := conn
	if tc, ok := conn.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	kc := &killConn{Conn: conn, raw: raw}
	if !s.setConn(kc) {
		kc.kill()
		return nil, errKilled
	}
	return kc, nil
}

// onMessage is paho's handler for every received message.
func (l *Link) onMessage(_ paho.Client, m paho.Message) {
	if l.cfg.OnMessage == nil {
		m.Ack() // nobody wants it: do not let the broker redeliver it forever
		return
	}
	l.cfg.OnMessage(Message{Topic: m.Topic(), Payload: m.Payload(), Retained: m.Retained(), ack: m.Ack})
}

// UpdateStatus republishes the retained online status (Config.Status) now,
// if connected. It does not block; requests made while a publish is
// pending are coalesced.
func (l *Link) UpdateStatus() {
	if l.cfg.StatusTopic == "" || l.cfg.Status == nil {
		return
	}
	select {
	case l.statusReq <- struct{}{}:
	default:
	}
}

// PublishNow publishes payload on topic with QoS 0, not retained and not
// stored: best effort, for data that is worthless when late. It reports
// false if the link is not connected or the topic is invalid. It may
// block briefly while the connection is congested.
func (l *Link) PublishNow(topic string, payload []byte) bool {
	if checkTopic("topic", topic) != nil {
		return false
	}
	l.mu.Lock()
	c := l.client
	l.mu.Unlock()
	if c == nil || !c.IsConnectionOpen() {
		return false
	}
	tok := c.Publish(topic, 0, false, payload)
	select {
	case <-tok.Done():
		return tok.Error() == nil
	default:
		return true
	}
}

// Stats returns a snapshot of the link's state.
func (l *Link) Stats() Stats {
	l.mu.Lock()
	st := Stats{Connected: l.connected, Since: l.since, LastError: l.lastErr,
		Connects: l.connects, Failures: l.failures}
	l.mu.Unlock()
	st.InFlight = int(l.inflight.Load())
	st.Published = l.published.Load()
	st.Acked = l.acked.Load()
	return st
}

// StateChanged returns a channel that is closed at the next change of
// state: connected, disconnected, a failed connect attempt, or a new
// LastError. Get a new channel after each notification.
func (l *Link) StateChanged() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

// notifyLocked wakes StateChanged waiters. l.mu must be held.
func (l *Link) notifyLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *Link) setConnected(c paho.Client) {
	l.mu.Lock()
	l.client, l.connected, l.since = c, true, time.Now()
	l.connects++
	l.notifyLocked()
	l.mu.Unlock()
}

func (l *Link) setDisconnected() {
	l.inflight.Store(0)
	l.mu.Lock()
	l.client, l.connected, l.since = nil, false, time.Now()
	l.notifyLocked()
	l.mu.Unlock()
}

func (l *Link) setLastError(err error) {
	l.mu.Lock()
	l.lastErr = err.Error()
	l.notifyLocked()
	l.mu.Unlock()
}

// noteFailure records a failed connect attempt or a lost connection.
func (l *Link) noteFailure(err error, wasUp bool, streak int, wait time.Duration) {
	l.mu.Lock()
	l.failures++
	l.lastErr = err.Error()
	l.notifyLocked()
	l.mu.Unlock()
	switch {
	case wasUp:
		l.log.Warn("mqtt: connection lost", "broker", l.broker.String(), "err", err, "retry_in", wait)
	case streak == 0:
		l.log.Warn("mqtt: cannot connect", "broker", l.broker.String(), "err", err, "retry_in", wait)
	default:
		l.log.Debug("mqtt: cannot connect", "broker", l.broker.String(), "err", err,
			"attempt", streak+1, "retry_in", wait)
	}
}

// connState is the state of one connection shared with paho's callbacks.
type connState struct {
	lost     chan struct{} // closed when paho reports the connection lost
	lostOnce sync.Once

	mu      sync.Mutex
	lostErr error
	conn    *killConn
	killed  bool
}

func (s *connState) setLost(err error) {
	s.lostOnce.Do(func() {
		if err == nil {
			err = errors.New("connection lost")
		}
		s.mu.Lock()
		s.lostErr = err
		s.mu.Unlock()
		close(s.lost)
	})
}

// err returns why the connection was lost.
func (s *connState) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Errorf("mqtt: connection lost: %w", s.lostErr)
}

// setConn records the dialled connection; false if it was already
// killed.
func (s *connState) setConn(c *killConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.killed {
		return false
	}
	s.conn = c
	return true
}

// kill closes the connection's socket abruptly (the broker publishes the
// last will). paho then reports the connection lost.
func (s *connState) kill() {
	s.mu.Lock()
	s.killed = true
	c := s.conn
	s.mu.Unlock()
	if c != nil {
		c.kill()
	}
}

// awaitLost waits, at most d, for paho to report the connection lost.
func (s *connState) awaitLost(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.lost:
	case <-t.C:
	}
}

// errKilled is the read/write error of a connection the link closed itself.
var errKilled = errors.New("mqtt: connection closed by the link")

// killConn lets the link close a connection so that paho sees an error.
// paho ignores "use of closed network connection" errors (it expects them
// only after its own DISCONNECT) and would then never report the loss, so
// after kill the read and write errors are replaced with errKilled.
type killConn struct {
	net.Conn          // what paho reads and writes (TLS or TCP)
	raw      net.Conn // the TCP socket
	killed   atomic.Bool
}

func (c *killConn) kill() {
	c.killed.Store(true)
	c.raw.Close() // not a TLS close_notify: the peer may not be reading
}

// Read reads from the connection; after kill it fails with errKilled.
func (c *killConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil && c.killed.Load() {
		err = errKilled
	}
	return n, err
}

// Write writes to the connection; after kill it fails with errKilled.
func (c *killConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err != nil && c.killed.Load() {
		err = errKilled
	}
	return n, err
}
