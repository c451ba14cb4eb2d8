package mqtt

import (
	"context"
	"fmt"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"station.dev/agent/internal/backoff"
)

const (
	// deleteBatch is the number of acknowledged items that triggers an
	// outbox Delete (each Delete is an fsync in the store).
	deleteBatch = 256
	// deleteDelay bounds how long an acknowledged item waits for its
	// Delete when the batch does not fill.
	deleteDelay = 5 * time.Millisecond
)

// Kinds of flights that are not outbox items (those have kind >= 0: the
// index of their stream).
const (
	kindStatus    = -1 // online status
	kindSubscribe = -2 // the SUBSCRIBE of all filters
	kindShutdown  = -3 // shutdown status
)

// flight is a paho operation awaiting its acknowledgement.
type flight struct {
	tok  paho.Token // nil until the publisher goroutine has issued it
	sent time.Time
	kind int // stream index, or one of the kinds above
	seq  uint64
}

// op is a paho operation for the publisher goroutine.
type op struct {
	topic    string
	qos      byte
	retained bool
	payload  []byte
	filters  map[string]byte // set: a SUBSCRIBE
}

// streamState is the per-connection drain state of one stream.
type streamState struct {
	Stream
	cursor    uint64   // highest seq read on this connection
	pending   []Item   // read, not yet published, ascending
	exhausted bool     // the last Read came back short: wait for Changed
	acks      []uint64 // acknowledged, not yet handed to the deleter
}

// drain publishes the outbox on one connection. It runs on Run's
// goroutine; the paho calls, which can block for up to the write timeout
// when the connection drops under them, run on a publisher goroutine so
// that the drain notices a lost connection at once.
type drain struct {
	l      *Link
	s      *connState
	dels   *deleter
	window int

	ops  chan op         // to the publisher, in order
	toks chan paho.Token // from the publisher, in the same order

	streams  []streamState
	next     int  // round robin: the stream served next
	fifo     ring // flights in the order they were issued
	issued   int  // flights at the head of fifo that have their token
	items    int  // outbox items in fifo: the window in use
	held     int  // outbox items in memory: items + pending
	nacks    int  // items in streams' acks
	statusIn bool // an online status is in fifo
	wantStat bool // an online status is to be published
	subIn    bool // the SUBSCRIBE is in fifo: draining waits for it
	shutDone bool // the shutdown status was acknowledged

	ackTimer   *time.Timer // fires when the oldest flight may have timed out
	ackArmed   bool
	flushTimer *time.Timer
	flushArmed bool
	retryTimer *time.Timer // fires when a failed Read may be retried
	retryArmed bool
	readFails  int
}

func newDrain(l *Link, c paho.Client, s *connState, dels *deleter) *drain {
	// Everything in fifo without a token is in ops or toks: at most the
	// window plus one status, the SUBSCRIBE and the shutdown status. So
	// neither channel ever blocks its sender.
	depth := l.cfg.Window + 3
	d := &drain{
		l:          l,
		s:          s,
		dels:       dels,
		window:     l.cfg.Window,
		ops:        make(chan op, depth),
		toks:       make(chan paho.Token, depth),
		streams:    make([]streamState, len(l.cfg.Streams)),
		ackTimer:   time.NewTimer(time.Hour),
		flushTimer: time.NewTimer(time.Hour),
		retryTimer: time.NewTimer(time.Hour),
	}
	d.ackTimer.Stop()
	d.flushTimer.Stop()
	d.retryTimer.Stop()
	for i, st := range l.cfg.Streams {
		// Every connection starts from the beginning of the outbox: all
		// unacknowledged items are sent again, in seq order.
		d.streams[i] = streamState{Stream: st}
	}
	l.pubs.Add(1)
	go publisher(c, d.ops, d.toks, &l.pubs)
	return d
}

// publisher issues the operations in order and returns their tokens in
// the same order. It ends when ops is closed.
func publisher(c paho.Client, ops <-chan op, toks chan<- paho.Token, wg *sync.WaitGroup) {
	defer wg.Done()
	for o := range ops {
		if o.filters != nil {
			toks <- c.SubscribeMultiple(o.filters, nil) // nil: the default handler
		} else {
			toks <- c.Publish(o.topic, o.qos, o.retained, o.payload)
		}
	}
}

// run serves the connection: status, subscriptions, then the outbox until
// the connection is lost or broken (error) or ctx is cancelled (clean
// shutdown, nil). c is used for the final Disconnect only.
func (d *drain) run(ctx context.Context, c paho.Client) error {
	defer func() {
		close(d.ops)
		d.ackTimer.Stop()
		d.flushTimer.Stop()
		d.retryTimer.Stop()
		// PUBACKed items are acknowledged whatever happens next.
		d.flush()
	}()

	// Deletes of items acknowledged on the previous connection must be
	// done before the outbox is read again, or they would be sent again.
	if d.dels.sync(ctx) != nil {
		return d.shutdown(c)
	}
	select { // a request made while disconnected is served right here
	case <-d.l.statusReq:
	default:
	}
	// Status first, then the subscriptions, then the outbox.
	subs := d.l.cfg.Subscriptions
	d.wantStat = d.l.cfg.StatusTopic != "" && d.l.cfg.Status != nil
	d.subIn = len(subs) > 0 // holds the outbox back
	d.fill()
	if len(subs) > 0 {
		filters := make(map[string]byte, len(subs))
		for _, f := range subs {
			filters[f] = 1
		}
		d.issue(flight{kind: kindSubscribe}, op{filters: filters})
	}

	progress := time.NewTicker(ProgressInterval)
	defer progress.Stop()
	for {
		d.l.progress()
		changed := d.l.out.Changed()
		d.fill()
		d.takeTokens()
		// Tokens are waited for only when the head has none: otherwise
		// they are taken along at the next wake-up, which saves one
		// wake-up per publish.
		var toks <-chan paho.Token
		if d.issued == 0 && d.fifo.len() > 0 {
			toks = d.toks
		}
		select {
		case <-ctx.Done():
			return d.shutdown(c)
		case <-d.s.lost:
			return d.s.err()
		case tok := <-toks:
			d.fifo.at(d.issued).tok = tok
			d.issued++
		case <-d.ackedDone():
			if err := d.collect(); err != nil {
				return err
			}
		case <-changed:
			for i := range d.streams {
				d.streams[i].exhausted = false
			}
		case <-d.l.statusReq:
			d.wantStat = true
		case <-d.ackTimer.C:
			d.ackArmed = false
			if err := d.checkAckTimeout(); err != nil {
				return err
			}
		case <-d.flushTimer.C:
			d.flushArmed = false
			d.flush()
		case <-d.retryTimer.C:
			d.retryArmed = false
			for i := range d.streams {
				d.streams[i].exhausted = false
			}
		case <-progress.C:
		}
	}
}

// takeTokens takes the tokens the publisher has returned so far.
func (d *drain) takeTokens() {
	for d.issued < d.fifo.len() {
		select {
		case tok := <-d.toks:
			d.fifo.at(d.issued).tok = tok
			d.issued++
		default:
			return
		}
	}
}

// ackedDone returns the Done channel of the oldest issued flight, nil if
// none. The drain wakes for every acknowledgement and refills the window
// at once. (Waking once per batch of acknowledgements costs less CPU but
// stalls against brokers that leave Nagle's algorithm on, as Mosquitto
// does by default: while the link sends nothing its TCP ACKs are delayed,
// and the broker holds its PUBACKs back until they come.)
func (d *drain) ackedDone() <-chan struct{} {
	if d.issued == 0 {
		return nil
	}
	return d.fifo.front().tok.Done()
}

// issue appends a flight to the FIFO and hands its operation to the
// publisher.
func (d *drain) issue(f flight, o op) {
	f.sent = time.Now()
	d.fifo.push(f)
	d.ops <- o
	if !d.ackArmed {
		d.ackTimer.Reset(d.l.cfg.AckTimeout)
		d.ackArmed = true
	}
}

// fill publishes the online status if one is wanted (one at a time: the
// latest wins), then outbox items, round robin over the streams, until
// the window is full or nothing is left to publish.
func (d *drain) fill() {
	if d.wantStat && !d.statusIn {
		cfg := &d.l.cfg
		d.issue(flight{kind: kindStatus}, op{topic: cfg.StatusTopic, qos: 1, retained: true, payload: cfg.Status()})
		d.statusIn, d.wantStat = true, false
	}
	if d.subIn {
		return // subscribed first, then drained
	}
	n := len(d.streams)
	for d.items < d.window {
		progressed := false
		for k := 0; k < n && d.items < d.window; k++ {
			i := (d.next + k) % n
			st := &d.streams[i]
			if len(st.pending) == 0 {
				if st.exhausted {
					continue
				}
				if err := d.read(st); err != nil {
					d.readFailed(st, err)
					continue
				}
				if len(st.pending) == 0 {
					continue
				}
			}
			d.publish(i)
			d.next = (i + 1) % n
			progressed = true
		}
		if !progressed {
			break
		}
	}
	d.l.inflight.Store(int64(d.items))
}

// readFailed reports a failed outbox Read and retries it later, with
// backoff. The connection stays up: the store, not the broker, failed.
func (d *drain) readFailed(st *streamState, err error) {
	d.l.setLastError(err)
	d.l.log.Error("mqtt: outbox read failed", "stream", st.Name, "err", err)
	st.exhausted = true
	if !d.retryArmed {
		cfg := &d.l.cfg
		d.retryTimer.Reset(max(time.Millisecond, backoff.Delay(d.readFails, cfg.BackoffMin, cfg.BackoffMax, d.l.rand())))
		d.retryArmed = true
		if d.readFails < 62 {
			d.readFails++
		}
	}
}

// read reads the next items of a stream after its cursor. At most
// 2×window items are held in memory (in flight + read ahead).
func (d *drain) read(st *streamState) error {
	want := min(d.window, 2*d.window-d.held)
	if want <= 0 {
		return nil
	}
	items, err := d.l.out.Read(st.Name, st.cursor, want)
	if err != nil {
		return fmt.Errorf("mqtt: read outbox stream %q: %w", st.Name, err)
	}
	d.readFails = 0
	if len(items) < want {
		st.exhausted = true
	}
	if len(items) > want {
		items = items[:want]
	}
	// Keep the order invariant even if the outbox breaks it: never go
	// back behind the cursor, never publish a seq twice per connection.
	kept := items[:0]
	for _, it := range items {
		if it.Seq > st.cursor {
			kept = append(kept, it)
			st.cursor = it.Seq
		}
	}
	st.pending = kept
	d.held += len(kept)
	return nil
}

// publish issues the next pending item of stream i.
func (d *drain) publish(i int) {
	st := &d.streams[i]
	it := st.pending[0]
	st.pending[0] = Item{}
	st.pending = st.pending[1:]
	if len(st.pending) == 0 {
		st.pending = nil
	}
	d.items++
	d.l.published.Add(1)
	d.issue(flight{kind: i, seq: it.Seq}, op{topic: st.Topic, qos: st.QoS, payload: it.Payload})
}

// collect takes completed flights off the head of the FIFO. Brokers
// acknowledge in order, so waiting on the head loses nothing. An item
// counts as acknowledged only if its own token completed without error;
// with one paho client per connection and auto-reconnect off, that
// happens only when its PUBACK arrived on this connection: paho v1.5.1
// leaves the tokens of a lost connection pending (it completes them with
// an error only on Disconnect), and a token it could not send fails.
func (d *drain) collect() error {
	defer d.l.inflight.Store(int64(d.items))
	d.takeTokens()
	for d.issued > 0 {
		f := d.fifo.front()
		select {
		case <-f.tok.Done():
		default:
			d.scheduleFlush()
			return nil
		}
		if err := f.tok.Error(); err != nil {
			select {
			case <-d.s.lost: // the cause, rather than its symptom
				return d.s.err()
			default:
				return fmt.Errorf("mqtt: publish: %w", err)
			}
		}
		fl := d.fifo.pop()
		d.issued--
		switch fl.kind {
		case kindStatus:
			d.statusIn = false
		case kindShutdown:
			d.shutDone = true
		case kindSubscribe:
			d.subIn = false
			d.checkSubscribed(fl.tok)
		default:
			d.items--
			d.held--
			st := &d.streams[fl.kind]
			st.acks = append(st.acks, fl.seq)
			d.nacks++
		}
	}
	d.scheduleFlush()
	return nil
}

// checkSubscribed reports filters the broker refused. They are not
// retried: the outbox must drain regardless.
func (d *drain) checkSubscribed(tok paho.Token) {
	st, ok := tok.(*paho.SubscribeToken)
	if !ok {
		return
	}
	for f, code := range st.Result() {
		if code > 1 { // 0x80: refused
			err := fmt.Errorf("mqtt: broker refused subscription %q", f)
			d.l.setLastError(err)
			d.l.log.Error("mqtt: subscription refused", "filter", f)
		}
	}
}

// scheduleFlush hands acknowledged items to the deleter when a batch is
// full or nothing is in flight, and otherwise makes sure they wait at
// most deleteDelay.
func (d *drain) scheduleFlush() {
	switch {
	case d.nacks == 0:
	case d.nacks >= deleteBatch || d.items == 0:
		d.flush()
	case !d.flushArmed:
		d.flushTimer.Reset(deleteDelay)
		d.flushArmed = true
	}
}

// flush hands all acknowledged items to the deleter.
func (d *drain) flush() {
	if d.flushArmed {
		d.flushTimer.Stop()
		d.flushArmed = false
	}
	if d.nacks == 0 {
		return
	}
	for i := range d.streams {
		st := &d.streams[i]
		if len(st.acks) > 0 {
			d.dels.submit(st.Name, st.acks)
			st.acks = nil
		}
	}
	d.nacks = 0
}

// checkAckTimeout fails the connection if the oldest flight has waited
// for its acknowledgement longer than AckTimeout, and re-arms the timer
// for the next oldest otherwise.
func (d *drain) checkAckTimeout() error {
	if err := d.collect(); err != nil {
		return err
	}
	if d.fifo.len() == 0 {
		return nil
	}
	age := time.Since(d.fifo.front().sent)
	if age >= d.l.cfg.AckTimeout {
		return fmt.Errorf("mqtt: no PUBACK within %v: connection considered broken", d.l.cfg.AckTimeout)
	}
	d.ackTimer.Reset(d.l.cfg.AckTimeout - age)
	d.ackArmed = true
	return nil
}

// shutdown ends the connection cleanly: shutdown status (retained, QoS 1,
// its PUBACK awaited at most shutdownWait), then DISCONNECT.
func (d *drain) shutdown(c paho.Client) error {
	cfg := &d.l.cfg
	if cfg.StatusTopic != "" && cfg.ShutdownStatus != nil {
		d.issue(flight{kind: kindShutdown}, op{topic: cfg.StatusTopic, qos: 1, retained: true, payload: cfg.ShutdownStatus()})
		// Flights before it are collected on the way (brokers acknowledge
		// in order): their items are deleted now, not sent again later.
		t := time.NewTimer(shutdownWait)
	wait:
		for !d.shutDone {
			var headDone <-chan struct{}
			if d.issued > 0 {
				headDone = d.fifo.front().tok.Done()
			}
			select {
			case tok := <-d.toks:
				d.fifo.at(d.issued).tok = tok
				d.issued++
			case <-headDone:
				if err := d.collect(); err != nil {
					d.l.log.Warn("mqtt: shutdown status not published", "err", err)
					break wait
				}
			case <-d.s.lost:
				break wait
			case <-t.C:
				d.l.log.Warn("mqtt: shutdown status not acknowledged", "waited", shutdownWait)
				break wait
			}
		}
		t.Stop()
	}
	c.Disconnect(disconnectQuiesce)
	d.l.log.Info("mqtt: disconnected", "broker", d.l.broker.String())
	return nil
}
