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
// A PUBACK is not proof that the broker kept a publish: under MQTT 3.1.1
// Mosquitto acknowledges and drops a publish its ACL denies. So on every
// connection the link checks the write path before it deletes anything:
// it subscribes (QoS 0) to the topics of its QoS 1 streams, and keeps the
// acknowledged items of a stream until the broker has delivered one of
// this connection's publishes of that stream back to it; then it
// unsubscribes. If none comes back within AckTimeout, the items stay, the
// link raises an alarm (Stats.Alarm, LastError, the log) and reconnects
// after backoff to check again. Until a stream is checked at most a window
// of its items is published on the connection.
//
// A dead connection is noticed within KeepAlive (plus KeepAlive/6): the
// link sends its own PINGREQ after KeepAlive/3 without a packet from the
// broker and drops the connection after KeepAlive without one, before the
// broker fires the will (1.5 × KeepAlive). Every socket write has a
// deadline (KeepAlive/2). The backoff's failure count starts again once a
// connection has proved itself (CONNACK, an acknowledgement and its
// writes checked), and while the broker is away the wait is also capped at
// half the time since the connection was lost, so a broker that is back
// within seconds is used within seconds.
//
// The Link also publishes a retained status (online on connect, a last will
// when the connection is lost, a shutdown status on a clean stop) and keeps
// persistent-session subscriptions whose messages are handed to
// Config.OnMessage off paho's receive path, one at a time in receive
// order, and acknowledged to the broker in receive order once the receiver
// says so (Message.Ack).
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
	InFlight  int       // outbox items and PublishNow messages published and not yet acknowledged
	Published uint64    // outbox items published (re-sends included)
	Acked     uint64    // outbox items acknowledged and deleted
	// Alarm is set while the broker acknowledges the station's publishes
	// without delivering them (see Link): nothing is deleted meanwhile.
	Alarm string
}

const (
	// shutdownWait bounds the wait for the shutdown status's PUBACK.
	shutdownWait = 2 * time.Second
	// publisherWait bounds Run's wait for publisher goroutines.
	publisherWait = 500 * time.Millisecond
	// disconnectQuiesce is the time paho gets to send DISCONNECT.
	disconnectQuiesce = 250 // ms
	// maxUnacked bounds the received messages awaiting their Ack (and so
	// the memory they hold: commands are at most 64 KiB); while it is
	// reached paho stops reading (see inbox). Mosquitto sends at most 20
	// unacknowledged by default anyway.
	maxUnacked = 64
	// nowQueue is the number of PublishNow messages waiting for the drain.
	nowQueue = 16
)

// Link is the broker link. Create it with New and start it with Run.
type Link struct {
	cfg    Config
	broker brokerconn.Broker
	out    Outbox
	log    *slog.Logger
	rand   func() float64

	running   atomic.Bool
	statusReq chan struct{} // coalesced UpdateStatus requests
	nowReq    chan *nowMsg  // PublishNow messages for the drain
	// streamTopics are the topics the link publishes its streams on: what
	// arrives on them is an echo of the write check, never a command.
	streamTopics map[string]bool
	pubs         sync.WaitGroup // receiver goroutines, one per connection

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
	alarm     string
	changed   chan struct{} // closed and replaced on every state change
}

// nowMsg is a PublishNow message.
type nowMsg struct {
	topic   string
	payload []byte
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
		cfg:          cfg,
		broker:       b,
		out:          out,
		log:          cfg.Logger,
		rand:         cfg.Rand,
		statusReq:    make(chan struct{}, 1),
		nowReq:       make(chan *nowMsg, nowQueue),
		streamTopics: make(map[string]bool),
		since:        time.Now(),
		changed:      make(chan struct{}),
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	for _, st := range l.cfg.Streams {
		l.streamTopics[st.Topic] = true
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

	failures := 0
	outage := time.Now() // when the last proven connection was lost
	for {
		up, proven, err := l.connect1(ctx, dels)
		if ctx.Err() != nil {
			l.undeliveredQueue()
			return nil
		}
		if err == nil { // cannot happen: connect1 returns nil only when cancelled
			err = errors.New("mqtt: connection ended")
		}
		if proven {
			failures, outage = 0, time.Now()
		}
		wait := l.retryDelay(failures, time.Since(outage))
		l.noteFailure(err, up > 0, failures, wait)
		if failures < 62 {
			failures++
		}
		if !l.sleep(ctx, wait) {
			l.undeliveredQueue()
			return nil
		}
	}
}

// retryDelay is the wait before the next connect attempt after failures
// consecutive failures, out for the given time since the last proven
// connection was lost: exponential from BackoffMin with full jitter,
// capped at BackoffMax and at half the outage so far (at least
// BackoffMin). A broker back after a short outage is thus found within
// about half that outage, a long outage backs off to BackoffMax, and a
// fleet that lost its broker at once still spreads over the whole
// interval.
func (l *Link) retryDelay(failures int, out time.Duration) time.Duration {
	hi := min(l.cfg.BackoffMax, max(l.cfg.BackoffMin, out/2))
	return max(time.Millisecond, backoff.Delay(failures, l.cfg.BackoffMin, hi, l.rand()))
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

// awaitPublishers waits for the connections' receiver goroutines, at
// most publisherWait. A receiver caught in Config.OnMessage ends when it
// returns; its Ack then goes nowhere.
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
		l.log.Debug("mqtt: a receiver is still in OnMessage for a lost connection; it ends on its own")
	}
}

// connect1 makes one connection: it connects, serves it until it is lost,
// broken or ctx is cancelled, and returns how long it was up and whether
// it proved itself. It returns a nil error only after a clean stop on
// cancellation.
func (l *Link) connect1(ctx context.Context, dels *deleter) (time.Duration, bool, error) {
	var tlsCfg *tls.Config
	if l.broker.TLS {
		var err error
		if tlsCfg, err = l.cfg.tlsConfig(l.broker.Host); err != nil {
			return 0, false, err
		}
	}
	s := newConnState(l)
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
		return 0, false, nil
	}
	if err := tok.Error(); err != nil {
		return 0, false, fmt.Errorf("mqtt: connect to %s: %w", l.broker, err)
	}

	start := time.Now()
	l.setConnected(c)
	l.log.Info("mqtt: connected", "broker", l.broker.String(), "client_id", l.cfg.ClientID,
		"session_present", tok.(*paho.ConnectToken).SessionPresent())

	l.pubs.Add(1)
	go s.in.run(&l.pubs)
	d := newDrain(l, c, s, dels)
	err := d.run(ctx)
	if err != nil && ctx.Err() == nil {
		// Lost, or broken (no PUBACK in time, publish failed): make sure
		// the socket is closed and paho has stopped before the next client.
		s.kill()
		s.awaitLost(l.cfg.ConnectTimeout)
	}
	s.in.close()
	if e := s.failure(); e != nil && err != nil && ctx.Err() == nil {
		err = e // the link's own reason for closing the socket
	}
	l.setDisconnected()
	return time.Since(start), s.proven.Load() && !s.nacked.Load(), err
}

// liveCheck is how often a connection's liveness is checked.
func (l *Link) liveCheck() time.Duration {
	return max(10*time.Millisecond, l.cfg.KeepAlive/6)
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
	// paho pings after KeepAlive without traffic and gives up after
	// another KeepAlive; the link's own check (connState.checkLive) is
	// faster and decides.
	o.SetKeepAlive(l.cfg.KeepAlive)
	o.SetPingTimeout(l.cfg.KeepAlive)
	o.SetConnectTimeout(l.cfg.ConnectTimeout)
	o.SetWriteTimeout(l.writeTimeout())
	if will := l.will(); l.cfg.StatusTopic != "" && will != nil {
		o.SetBinaryWill(l.cfg.StatusTopic, will, 1, true)
	}
	o.SetDefaultPublishHandler(s.in.onMessage)
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
	kc := &killConn{Conn: conn, raw: raw, timeout: l.writeTimeout()}
	kc.lastRead.Store(time.Now().UnixNano())
	if !s.setConn(kc) {
		kc.kill()
		return nil, errKilled
	}
	return kc, nil
}

// writeTimeout bounds every write to the socket.
func (l *Link) writeTimeout() time.Duration {
	return max(10*time.Millisecond, l.cfg.KeepAlive/2)
}

// will returns the last will for a new connection.
func (l *Link) will() []byte {
	if l.cfg.Will != nil {
		return l.cfg.Will()
	}
	return l.cfg.WillPayload
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

// PublishNow publishes payload on topic with QoS 1, not retained and not
// stored, for data the caller keeps elsewhere when it cannot go now. It
// never blocks. It reports false if the link is not connected, the topic
// is invalid or too many messages wait; true means the message was handed
// to the connection, and if its PUBACK does not come on that connection
// (a dead socket takes writes for a while) it is handed back to
// Config.OnUndelivered.
func (l *Link) PublishNow(topic string, payload []byte) bool {
	if checkTopic("topic", topic) != nil {
		return false
	}
	l.mu.Lock()
	up := l.connected
	l.mu.Unlock()
	if !up {
		return false
	}
	select {
	case l.nowReq <- &nowMsg{topic: topic, payload: payload}:
		return true
	default:
		return false
	}
}

// undelivered hands a PublishNow message back.
func (l *Link) undelivered(m *nowMsg) {
	if l.cfg.OnUndelivered != nil {
		l.cfg.OnUndelivered(m.topic, m.payload)
	}
}

// undeliveredQueue hands back the PublishNow messages still queued when
// Run ends.
func (l *Link) undeliveredQueue() {
	for {
		select {
		case m := <-l.nowReq:
			l.undelivered(m)
		default:
			return
		}
	}
}

// Stats returns a snapshot of the link's state.
func (l *Link) Stats() Stats {
	l.mu.Lock()
	st := Stats{Connected: l.connected, Since: l.since, LastError: l.lastErr,
		Connects: l.connects, Failures: l.failures, Alarm: l.alarm}
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

// setAlarm raises the write-path alarm (see Link).
func (l *Link) setAlarm(err error) {
	l.mu.Lock()
	first := l.alarm == ""
	l.alarm, l.lastErr = err.Error(), err.Error()
	l.notifyLocked()
	l.mu.Unlock()
	if first {
		l.log.Error("mqtt: ALARM: the broker accepts but drops the station's publishes; nothing is deleted", "err", err)
	}
}

// clearAlarm ends the write-path alarm once a connection's writes are
// checked.
func (l *Link) clearAlarm() {
	l.mu.Lock()
	was := l.alarm
	l.alarm = ""
	if was != "" {
		l.notifyLocked()
	}
	l.mu.Unlock()
	if was != "" {
		l.log.Warn("mqtt: the broker delivers the station's publishes again: alarm over")
	}
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
	echo     chan uint64   // payload hashes delivered on the echo topics
	dead     chan struct{} // closed when the link closes the socket
	in       *inbox

	acked  atomic.Bool // something was acknowledged on this connection
	proven atomic.Bool // and the writes of every stream used were checked
	nacked atomic.Bool // a received message could not be handled

	mu       sync.Mutex
	lostErr  error
	why      error // why the link closed the socket itself
	conn     *killConn
	killed   bool
	lastPing time.Time
}

func newConnState(l *Link) *connState {
	s := &connState{lost: make(chan struct{}), echo: make(chan uint64, 64), dead: make(chan struct{})}
	s.in = newInbox(l, s)
	return s
}

// onEcho is paho's handler for the echo topics of the write check. It
// must not block: a hash that does not fit is dropped (others follow).
func (s *connState) onEcho(_ paho.Client, m paho.Message) {
	select {
	case s.echo <- payloadHash(m.Payload()):
	default:
	}
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
	if s.why != nil {
		return s.why
	}
	return fmt.Errorf("mqtt: connection lost: %w", s.lostErr)
}

// failure returns why the link closed the socket itself, if it did.
func (s *connState) failure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.why
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
	if !s.killed {
		close(s.dead)
	}
	s.killed = true
	c := s.conn
	s.mu.Unlock()
	if c != nil {
		c.kill()
	}
}

// killFor closes the socket for the given reason (the first one stays).
func (s *connState) killFor(err error) {
	s.mu.Lock()
	if s.why == nil {
		s.why = err
	}
	s.mu.Unlock()
	s.kill()
}

// checkLive drops the connection when nothing came from the broker for
// keepAlive, and sends a PINGREQ of its own when nothing came for a third
// of it. A healthy broker answers within a round trip, so on a live
// connection a packet arrives at least every keepAlive/3 plus a round
// trip; a dead one is noticed within keepAlive plus a check interval,
// before the broker's will (1.5 × keepAlive after the last packet it got).
func (s *connState) checkLive(keepAlive time.Duration) error {
	s.mu.Lock()
	c := s.conn
	s.mu.Unlock()
	if c == nil {
		return nil
	}
	quiet := time.Since(time.Unix(0, c.lastRead.Load()))
	if quiet >= keepAlive {
		err := fmt.Errorf("mqtt: nothing from the broker for %v (keepalive %v): connection considered dead", quiet.Round(time.Millisecond), keepAlive)
		s.killFor(err)
		return err
	}
	if quiet >= keepAlive/3 {
		s.mu.Lock()
		due := time.Since(s.lastPing) >= keepAlive/3
		if due {
			s.lastPing = time.Now()
		}
		s.mu.Unlock()
		if due {
			// PINGREQ, written whole in one Write like every paho packet;
			// paho takes the PINGRESP. On its own goroutine: the write
			// may wait for its deadline on a stalled socket.
			go c.Write(pingreq)
		}
	}
	return nil
}

var pingreq = []byte{0xC0, 0x00}

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
// after kill the read and write errors are replaced with errKilled. It
// also puts a deadline on every write (paho has none on its pings and
// acknowledgements) and notes when the broker last sent something.
type killConn struct {
	net.Conn          // what paho reads and writes (TLS or TCP)
	raw      net.Conn // the TCP socket
	timeout  time.Duration
	killed   atomic.Bool
	lastRead atomic.Int64 // UnixNano of the last read that returned data
}

func (c *killConn) kill() {
	c.killed.Store(true)
	c.raw.Close() // not a TLS close_notify: the peer may not be reading
}

// Read reads from the connection; after kill it fails with errKilled.
func (c *killConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.lastRead.Store(time.Now().UnixNano())
	}
	if err != nil && c.killed.Load() {
		err = errKilled
	}
	return n, err
}

// Write writes to the connection within the write timeout; after kill it
// fails with errKilled. A write that times out leaves the stream broken
// mid-packet: the connection is closed.
func (c *killConn) Write(b []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	n, err := c.Conn.Write(b)
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			c.kill()
			return n, fmt.Errorf("mqtt: socket write blocked for %v: %w", c.timeout, err)
		}
		if c.killed.Load() {
			err = errKilled
		}
	}
	return n, err
}

// SetWriteDeadline is ignored: every Write sets its own deadline (paho
// clears it after a publish, which would leave its pings without one).
func (c *killConn) SetWriteDeadline(time.Time) error { return nil }
