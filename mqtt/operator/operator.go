// Package operator is the fleet operator's MQTT client (DESIGN §3.2, §3.5): it lists the
// stations' retained status, sends commands, collects their responses and follows status and
// events. `station fleet` is built on it.
//
// A Client is one MQTT connection with a clean session and a random client id, so several
// operators can work at once. It does not reconnect: when the connection is lost every call in
// progress returns an error and the caller dials again. Every wait honours its context.
//
// The package knows the topic layout and the few payload members it needs (a status's state, a
// response's id); it leaves the full payloads to the caller.
package operator

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"station.dev/agent/agent/contract"
	"station.dev/agent/mqtt/internal/brokerconn"
)

// Defaults applied to zero fields of Options.
const (
	DefaultConnectTimeout = 10 * time.Second
	DefaultKeepAlive      = 30 * time.Second
	// DefaultListWait is ListStatus's quiet period when none is given.
	DefaultListWait = time.Second
)

// WatchBuffer is how many messages Watch holds for a slow callback before it drops some (and
// says so in Message.Dropped).
const WatchBuffer = 4096

// FleetTarget is the target that addresses every station: Send publishes it on {p}/_fleet/cmd.
const FleetTarget = contract.FleetTarget

// Options configures the connection to the broker.
type Options struct {
	// Broker is the broker URL: tcp://host[:1883] (also mqtt://) or tls://host[:8883] (also
	// ssl://, mqtts://). Credentials do not belong in the URL.
	Broker string
	// ClientID is the MQTT client id; empty means "fleet-" and 16 random hex digits.
	ClientID string
	// Username and Password authenticate with the broker (both optional; a password needs a
	// username).
	Username, Password string
	// CAFile verifies the broker's certificate (system roots when empty); CertFile and KeyFile
	// (both or neither) are the operator's client certificate. TLS brokers only.
	CAFile, CertFile, KeyFile string
	// ConnectTimeout bounds the dial, the TLS handshake and the wait for CONNACK, and the wait
	// for a PINGRESP (default 10s).
	ConnectTimeout time.Duration
	// KeepAlive is the MQTT keep-alive interval (default 30s, at least 1s).
	KeepAlive time.Duration
	// Logger receives connection events; nil means quiet.
	Logger *slog.Logger
}

// Client is a connection to the broker. Its methods may be called concurrently.
type Client struct {
	pc     paho.Client
	broker string
	log    *slog.Logger

	lost     chan struct{} // closed when the connection ends
	lostOnce sync.Once
	lostErr  error // set before lost is closed

	mu   sync.Mutex
	subs map[*sub]struct{} // active subscriptions, matched by the default handler
	refs map[string]int    // subscribers per topic filter
}

// sub is one subscriber: messages whose topic matches filter go to fn, on paho's receive path
// (fn must not block).
type sub struct {
	filter string
	fn     func(paho.Message)
}

var (
	// ErrClosed is returned by calls on a Client that was closed.
	ErrClosed = errors.New("operator: client closed")
)

func checkPrefix(prefix string) error {
	if !contract.ValidTopicPrefix(prefix) {
		return fmt.Errorf("operator: topic prefix %q: %s", prefix, contract.TopicPrefixSyntax)
	}
	return nil
}

// Dial connects to the broker. It returns when the broker has accepted the connection, when
// ctx ends, or with the error that stopped it.
func Dial(ctx context.Context, opts Options) (*Client, error) {
	b, err := brokerconn.Parse(opts.Broker, "use the username and password file")
	if err != nil {
		return nil, fmt.Errorf("operator: %w", err)
	}
	if err := b.CheckTLSFiles(opts.CAFile, opts.CertFile, opts.KeyFile); err != nil {
		return nil, fmt.Errorf("operator: %w", err)
	}
	if opts.Password != "" && opts.Username == "" {
		return nil, errors.New("operator: a password needs a username")
	}
	if opts.ConnectTimeout < 0 || opts.KeepAlive < 0 {
		return nil, errors.New("operator: negative timeout")
	}
	if opts.ConnectTimeout == 0 {
		opts.ConnectTimeout = DefaultConnectTimeout
	}
	if opts.KeepAlive == 0 {
		opts.KeepAlive = DefaultKeepAlive
	}
	if opts.KeepAlive < time.Second {
		return nil, fmt.Errorf("operator: keep-alive %v is shorter than 1s", opts.KeepAlive)
	}
	if opts.ClientID == "" {
		var r [8]byte
		_, _ = rand.Read(r[:]) // crypto/rand.Read does not fail
		opts.ClientID = "fleet-" + hex.EncodeToString(r[:])
	}
	var tlsCfg *tls.Config
	if b.TLS {
		if tlsCfg, err = brokerconn.TLSConfig(opts.CAFile, opts.CertFile, opts.KeyFile, b.Host); err != nil {
			return nil, fmt.Errorf("operator: %w", err)
		}
	}
	c := &Client{
		broker: b.String(),
		log:    opts.Logger,
		lost:   make(chan struct{}),
		subs:   make(map[*sub]struct{}),
		refs:   make(map[string]int),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}

	// The socket is kept so that cancelling ctx can close it while paho waits for CONNACK.
	var conn atomic.Pointer[net.Conn]
	o := paho.NewClientOptions()
	o.AddBroker(b.String())
	o.SetClientID(opts.ClientID)
	o.SetUsername(opts.Username)
	o.SetPassword(opts.Password)
	o.SetProtocolVersion(4)
	o.SetCleanSession(true)
	o.SetAutoReconnect(false)
	o.SetConnectRetry(false)
	// Handlers run one at a time, in order, on the receive path; ours only hand messages over.
	o.SetOrderMatters(true)
	o.SetKeepAlive(opts.KeepAlive)
	o.SetPingTimeout(opts.ConnectTimeout)
	o.SetConnectTimeout(opts.ConnectTimeout)
	o.SetWriteTimeout(opts.ConnectTimeout)
	o.SetDefaultPublishHandler(c.dispatch)
	o.SetConnectionLostHandler(func(_ paho.Client, err error) {
		c.setLost(fmt.Errorf("operator: connection to %s lost: %w", c.broker, err))
	})
	o.SetCustomOpenConnectionFn(func(*url.URL, paho.ClientOptions) (net.Conn, error) {
		nc, err := brokerconn.Dial(ctx, b, tlsCfg, opts.ConnectTimeout)
		if err == nil {
			conn.Store(&nc)
		}
		return nc, err
	})
	c.pc = paho.NewClient(o)
	tok := c.pc.Connect()
	stop := context.AfterFunc(ctx, func() {
		if p := conn.Load(); p != nil {
			(*p).Close()
		}
	})
	<-tok.Done() // bounded by ConnectTimeout; closing the socket ends it at once
	stop()
	if err := ctx.Err(); err != nil {
		if tok.Error() == nil {
			c.pc.Disconnect(0)
		}
		return nil, fmt.Errorf("operator: connect to %s: %w", c.broker, err)
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("operator: connect to %s: %w", c.broker, err)
	}
	c.log.Debug("operator: connected", "broker", c.broker, "client_id", opts.ClientID)
	return c, nil
}

// Broker returns the broker URL the client is connected to.
func (c *Client) Broker() string { return c.broker }

// Close disconnects cleanly. Calls in progress return ErrClosed.
func (c *Client) Close() error {
	c.setLost(ErrClosed)
	c.pc.Disconnect(250)
	return nil
}

// Lost returns a channel closed when the connection has ended (lost or closed); Err then says
// why.
func (c *Client) Lost() <-chan struct{} { return c.lost }

// Err returns why the connection ended, or nil while it is up.
func (c *Client) Err() error {
	select {
	case <-c.lost:
		return c.lostErr
	default:
		return nil
	}
}

func (c *Client) setLost(err error) {
	c.lostOnce.Do(func() {
		c.lostErr = err
		close(c.lost)
		if !errors.Is(err, ErrClosed) {
			c.log.Warn("operator: connection lost", "broker", c.broker, "err", err)
		}
	})
}

// await waits for a paho token, ctx or the end of the connection.
func (c *Client) await(ctx context.Context, tok paho.Token, what string) error {
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("operator: %s: %w", what, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("operator: %s: %w", what, ctx.Err())
	case <-c.lost:
		return c.lostErr
	}
}

// dispatch is paho's handler for every message: it hands the message to each matching
// subscriber. It runs on the receive path and does not block.
func (c *Client) dispatch(_ paho.Client, m paho.Message) {
	c.mu.Lock()
	var fns []func(paho.Message)
	for s := range c.subs {
		if topicMatch(s.filter, m.Topic()) {
			fns = append(fns, s.fn)
		}
	}
	c.mu.Unlock()
	for _, fn := range fns {
		fn(m)
	}
}

// subscribe registers fn for filter and subscribes at QoS 1; it returns once the broker has
// acknowledged the subscription (and granted it), so nothing published after it returns is
// missed. The returned function unsubscribes.
func (c *Client) subscribe(ctx context.Context, filter string, fn func(paho.Message)) (func(), error) {
	if err := c.Err(); err != nil {
		return nil, err
	}
	s := &sub{filter: filter, fn: fn}
	c.mu.Lock()
	c.subs[s] = struct{}{}
	c.refs[filter]++
	c.mu.Unlock()
	unsub := func() {
		c.mu.Lock()
		delete(c.subs, s)
		c.refs[filter]--
		last := c.refs[filter] == 0
		if last {
			delete(c.refs, filter)
		}
		c.mu.Unlock()
		if last && c.Err() == nil {
			// Best effort, bounded: the subscriber is already gone from the dispatch table.
			tok := c.pc.Unsubscribe(filter)
			ctx, cancel := context.WithTimeout(context.Background(), DefaultConnectTimeout)
			defer cancel()
			_ = c.await(ctx, tok, "unsubscribe")
		}
	}
	tok := c.pc.Subscribe(filter, 1, nil) // nil: messages go to dispatch
	if err := c.await(ctx, tok, "subscribe to "+filter); err != nil {
		unsub()
		return nil, err
	}
	if st, ok := tok.(*paho.SubscribeToken); ok {
		if q, ok := st.Result()[filter]; ok && q == 0x80 {
			unsub()
			return nil, fmt.Errorf("operator: the broker refused the subscription to %s: check the operator's ACL", filter)
		}
	}
	return unsub, nil
}

// topicMatch reports whether topic matches the MQTT topic filter.
func topicMatch(filter, topic string) bool {
	fl, tl := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fl {
		if f == "#" {
			return true
		}
		if i >= len(tl) || (f != "+" && f != tl[i]) {
			return false
		}
	}
	return len(fl) == len(tl)
}

// StationStatus is a station's retained status (DESIGN §3.3), as far as the fleet view needs it.
type StationStatus struct {
	ID         string // the station id, from the topic
	State      string // "online" or "offline"; "" when the payload is unreadable
	Reason     string // why offline: "lost" (last will), "shutdown"
	Version    string
	BootID     string
	Since      string // when the agent started (online status)
	TS         string // when the status was published
	QueueDepth int    // records waiting for the broker
	QueueFull  bool   // the store refuses card records
	Reader     string // the card reader's state ("ok", "absent", …)
	// Payload is the status object as received.
	Payload json.RawMessage
	// Unreadable is set when Payload is not a JSON object; only ID and Payload are then set.
	Unreadable bool
}

// ParseStatus reads a status payload received on {p}/{id}/status.
func ParseStatus(id string, payload []byte) StationStatus {
	st := StationStatus{ID: id, Payload: append(json.RawMessage(nil), payload...)}
	var s contract.Status
	if len(payload) == 0 || payload[0] != '{' || json.Unmarshal(payload, &s) != nil {
		st.Unreadable = true
		return st
	}
	st.State, st.Reason, st.Version, st.BootID, st.Since, st.TS = s.State, s.Reason, s.Version, s.BootID, s.Since, s.TS
	st.QueueDepth, st.QueueFull, st.Reader = s.Queue.Depth, s.Queue.Full, s.Reader.State
	return st
}

// ListStatus returns the status of every station that has one under prefix: it subscribes to
// {prefix}/+/status and collects the retained messages (and any live update) until wait passes
// with no new one (DefaultListWait when wait is zero or less). The list is sorted by station id.
func (c *Client) ListStatus(ctx context.Context, prefix string, wait time.Duration) ([]StationStatus, error) {
	if err := checkPrefix(prefix); err != nil {
		return nil, err
	}
	if wait <= 0 {
		wait = DefaultListWait
	}
	var mu sync.Mutex
	got := make(map[string]StationStatus)
	news := make(chan struct{}, 1)
	unsub, err := c.subscribe(ctx, contract.Topic(prefix, "+", contract.KindStatus), func(m paho.Message) {
		id := contract.StationOf(prefix, contract.KindStatus, m.Topic())
		if id == "" {
			return
		}
		mu.Lock()
		if len(m.Payload()) == 0 { // a cleared retained status
			delete(got, id)
		} else {
			got[id] = ParseStatus(id, m.Payload())
		}
		mu.Unlock()
		select {
		case news <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return nil, err
	}
	defer unsub()

	quiet := time.NewTimer(wait)
	defer quiet.Stop()
	for done := false; !done; {
		select {
		case <-news:
			quiet.Reset(wait)
		case <-quiet.C:
			done = true
		case <-ctx.Done():
			return nil, fmt.Errorf("operator: list status: %w", ctx.Err())
		case <-c.lost:
			return nil, c.lostErr
		}
	}
	mu.Lock()
	defer mu.Unlock()
	out := make([]StationStatus, 0, len(got))
	for _, st := range got {
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// CommandTopic returns the topic a command for target is published on: {prefix}/{target}/cmd,
// or {prefix}/_fleet/cmd for FleetTarget ("*").
func CommandTopic(prefix, target string) (string, error) {
	if err := checkPrefix(prefix); err != nil {
		return "", err
	}
	if target != FleetTarget && !contract.ValidStationID(target) {
		return "", fmt.Errorf("operator: %q is not a station id (%s) or %q", target, contract.StationIDSyntax, FleetTarget)
	}
	return contract.CommandTopic(prefix, target), nil
}

// Send publishes a command payload with QoS 1 (not retained) to target's command topic (see
// CommandTopic) and returns once the broker has acknowledged it. An acknowledgement means the
// broker took the message, not that a station got it: a broker may drop a publish its ACL
// denies and still acknowledge it (MQTT 3.1.1).
func (c *Client) Send(ctx context.Context, prefix, target string, payload []byte) error {
	topic, err := CommandTopic(prefix, target)
	if err != nil {
		return err
	}
	if err := c.Err(); err != nil {
		return err
	}
	return c.await(ctx, c.pc.Publish(topic, 1, false, payload), "publish to "+topic)
}

// Response is one station's response to a command, as received on {p}/{id}/resp.
type Response struct {
	Station string
	Payload json.RawMessage // the response object (DESIGN §3.5)
}

// Responses collects the responses to one command. Create it with WaitResponses before sending
// the command, then call Wait.
type Responses struct {
	unsub func()
	fn    func(Response)
	want  map[string]bool // nil: any station

	mu     sync.Mutex
	queue  []Response
	seen   map[string]bool
	notify chan struct{}
	closed atomic.Bool
	c      *Client
}

// WaitResponses subscribes to {prefix}/+/resp and returns once the broker has acknowledged the
// subscription, so a command sent after it returns cannot be answered unseen. It keeps the
// responses whose id is cmdID, from the stations in ids (from any station when ids is empty),
// the first from each station only (delivery is at least once). Wait hands them to fn. Close
// the Responses when done.
func (c *Client) WaitResponses(ctx context.Context, prefix string, ids []string, cmdID string, fn func(Response)) (*Responses, error) {
	if err := checkPrefix(prefix); err != nil {
		return nil, err
	}
	if cmdID == "" {
		return nil, errors.New("operator: wait for responses: empty command id")
	}
	if fn == nil {
		fn = func(Response) {}
	}
	r := &Responses{fn: fn, seen: make(map[string]bool), notify: make(chan struct{}, 1), c: c}
	if len(ids) > 0 {
		r.want = make(map[string]bool, len(ids))
		for _, id := range ids {
			r.want[id] = true
		}
	}
	unsub, err := c.subscribe(ctx, contract.Topic(prefix, "+", contract.KindResp), func(m paho.Message) {
		id := contract.StationOf(prefix, contract.KindResp, m.Topic())
		if id == "" || (r.want != nil && !r.want[id]) {
			return
		}
		var head contract.Response
		if json.Unmarshal(m.Payload(), &head) != nil || head.ID != cmdID {
			return
		}
		r.mu.Lock()
		if !r.seen[id] {
			r.seen[id] = true
			r.queue = append(r.queue, Response{Station: id, Payload: append(json.RawMessage(nil), m.Payload()...)})
		}
		r.mu.Unlock()
		select {
		case r.notify <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return nil, err
	}
	r.unsub = unsub
	return r, nil
}

// Wait calls fn, on the calling goroutine, for each response as it arrives, until every station
// in ids has answered or ctx is done. missing lists, sorted, the stations of ids that did not
// answer (always nil when ids was empty). err is set only when the connection was lost or
// closed; the end of ctx is the normal end of a wait for every station.
func (r *Responses) Wait(ctx context.Context) (missing []string, err error) {
	for {
		r.mu.Lock()
		batch := r.queue
		r.queue = nil
		r.mu.Unlock()
		for _, resp := range batch {
			r.fn(resp)
		}
		if r.want != nil && r.answered() == len(r.want) {
			return nil, nil
		}
		select {
		case <-r.notify:
		case <-ctx.Done():
			return r.missing(), nil
		case <-r.c.lost:
			return r.missing(), r.c.lostErr
		}
	}
}

func (r *Responses) answered() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

func (r *Responses) missing() []string {
	if r.want == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var m []string
	for id := range r.want {
		if !r.seen[id] {
			m = append(m, id)
		}
	}
	sort.Strings(m)
	return m
}

// Close unsubscribes. Calling it again is a no-op.
func (r *Responses) Close() error {
	if r.closed.CompareAndSwap(false, true) {
		r.unsub()
	}
	return nil
}

// Message is a status or event message from Watch.
type Message struct {
	Station  string
	Kind     string // "status" or "events": the topic's last level
	Payload  json.RawMessage
	Retained bool
	// Dropped counts messages lost since the previous one because fn did not keep up.
	Dropped uint64
}

// Watch follows the status and the events of the station named by filter (every station when
// filter is empty or "+"): it subscribes to {prefix}/{filter}/status and {prefix}/{filter}/events
// and calls fn, on the calling goroutine, for each message. Events are subscribed first, so the
// retained statuses come once both subscriptions are in place. It returns nil when ctx is done,
// or the error that ended the connection.
func (c *Client) Watch(ctx context.Context, prefix, filter string, fn func(Message)) error {
	if err := checkPrefix(prefix); err != nil {
		return err
	}
	if filter == "" {
		filter = "+"
	}
	if filter != "+" && !contract.ValidStationID(filter) {
		return fmt.Errorf("operator: watch: %q is not a station id", filter)
	}
	ch := make(chan Message, WatchBuffer)
	var dropped atomic.Uint64
	for _, kind := range []string{contract.KindEvents, contract.KindStatus} {
		unsub, err := c.subscribe(ctx, contract.Topic(prefix, filter, kind), func(m paho.Message) {
			id := contract.StationOf(prefix, kind, m.Topic())
			if id == "" {
				return
			}
			msg := Message{Station: id, Kind: kind, Payload: append(json.RawMessage(nil), m.Payload()...), Retained: m.Retained()}
			select {
			case ch <- msg:
			default:
				dropped.Add(1)
			}
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		defer unsub()
	}
	for {
		select {
		case m := <-ch:
			m.Dropped = dropped.Swap(0)
			fn(m)
		case <-ctx.Done():
			return nil
		case <-c.lost:
			return c.lostErr
		}
	}
}
