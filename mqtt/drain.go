package mqtt

import (
	"context"
	"fmt"
	"hash/fnv"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"station.dev/agent/internal/backoff"
)

const (
	// deleteBatch is the number of acknowledged items that triggers an
	// outbox Delete (each Delete is a commit, with its fsyncs, in the
	// store). While a backlog drains, acknowledgements come faster than
	// commits: a large batch makes few commits. A power cut may send up to
	// a batch again (duplicates, which consumers drop by id).
	deleteBatch = 2048
	// deleteDelay bounds how long an acknowledged item waits for its
	// Delete while the window is busy; once nothing is in flight the
	// acknowledged items are deleted at once.
	deleteDelay = 50 * time.Millisecond
)

// Kinds of flights that are not outbox items (those have kind >= 0: the
// index of their stream).
const (
	kindStatus    = -1 // online status
	kindSubscribe = -2 // the SUBSCRIBE of all filters
	kindShutdown  = -3 // shutdown status
	kindNow       = -4 // a PublishNow message
	kindEcho      = -5 // the SUBSCRIBE of the write check's echo topics
)

// flight is a paho operation awaiting its acknowledgement.
type flight struct {
	tok  paho.Token
	sent time.Time
	kind int // stream index, or one of the kinds above
	seq  uint64
	now  *nowMsg // kindNow only
}

// streamState is the per-connection drain state of one stream.
type streamState struct {
	Stream
	cursor    uint64   // highest seq read on this connection
	pending   []Item   // read, not yet published, ascending
	exhausted bool     // the last Read came back short: wait for Changed
	acks      []uint64 // acknowledged, not yet handed to the deleter

	// The write check (see Link): until the broker has delivered one of
	// this connection's publishes of the stream back to the link, its
	// acknowledged items are kept (acks) and at most a window of them is
	// published.
	verified bool
	probes   map[uint64]bool // hashes of the payloads published unverified
	unverif  int             // items published while unverified
	firstAck time.Time       // when the first unverified item was acknowledged
}

// drain publishes the outbox on one connection. It runs on Run's
// goroutine and calls paho directly: paho's writer goroutine is the only
// hand-off between the outbox and the socket. A paho call blocks at most
// the write timeout (KeepAlive/2) when the connection stalls under it.
type drain struct {
	l      *Link
	c      paho.Client
	s      *connState
	dels   *deleter
	window int

	streams  []streamState
	next     int  // round robin: the stream served next
	fifo     ring // flights in the order they were issued
	items    int  // outbox items in fifo: the window in use
	held     int  // outbox items in memory: items + pending
	nacks    int  // deletable items in streams' acks
	statusIn bool // an online status is in fifo
	wantStat bool // an online status is to be published
	subIn    bool // the SUBSCRIBE is in fifo: draining waits for it
	shutDone bool // the shutdown status was acknowledged
	echoSubs []string
	proven   bool // an acknowledgement came and every stream's writes are checked

	ackTimer    *time.Timer // fires when the oldest flight may have timed out
	ackArmed    bool
	flushTimer  *time.Timer
	flushArmed  bool
	retryTimer  *time.Timer // fires when a failed Read may be retried
	retryArmed  bool
	verifyTimer *time.Timer // fires when an unverified stream's echo is overdue
	verifyArmed bool
	readFails   int
}

func newDrain(l *Link, c paho.Client, s *connState, dels *deleter) *drain {
	d := &drain{
		l:           l,
		c:           c,
		s:           s,
		dels:        dels,
		window:      l.cfg.Window,
		streams:     make([]streamState, len(l.cfg.Streams)),
		ackTimer:    time.NewTimer(time.Hour),
		flushTimer:  time.NewTimer(time.Hour),
		retryTimer:  time.NewTimer(time.Hour),
		verifyTimer: time.NewTimer(time.Hour),
	}
	d.ackTimer.Stop()
	d.flushTimer.Stop()
	d.retryTimer.Stop()
	d.verifyTimer.Stop()
	for i, st := range l.cfg.Streams {
		// Every connection starts from the beginning of the outbox: all
		// unacknowledged items are sent again, in seq order.
		d.streams[i] = streamState{Stream: st}
		if st.QoS == 0 || l.cfg.SkipWriteCheck {
			d.streams[i].verified = true
		} else {
			d.streams[i].probes = make(map[uint64]bool)
			d.echoSubs = append(d.echoSubs, st.Topic)
		}
	}
	return d
}

// run serves the connection: status, subscriptions, then the outbox until
// the connection is lost or broken (error) or ctx is cancelled (clean
// shutdown, nil).
func (d *drain) run(ctx context.Context) error {
	defer func() {
		d.ackTimer.Stop()
		d.flushTimer.Stop()
		d.retryTimer.Stop()
		d.verifyTimer.Stop()
		// PUBACKed items of checked streams are acknowledged whatever
		// happens next; PublishNow messages without a PUBACK go back.
		d.flush()
		d.undelivered()
	}()

	// Deletes of items acknowledged on the previous connection must be
	// done before the outbox is read again, or they would be sent again.
	if d.dels.sync(ctx) != nil {
		return d.shutdown()
	}
	select { // a request made while disconnected is served right here
	case <-d.l.statusReq:
	default:
	}
	// The echo subscription first, then status, the subscriptions and the
	// outbox. The echo subscription goes before any publish: the broker handles a
	// connection's packets in order, so it is in place for the first one.
	if len(d.echoSubs) > 0 {
		filters := make(map[string]byte, len(d.echoSubs))
		for _, f := range d.echoSubs {
			filters[f] = 0
		}
		d.issue(flight{kind: kindEcho}, d.c.SubscribeMultiple(filters, d.s.onEcho))
	}
	subs := d.l.cfg.Subscriptions
	d.wantStat = d.l.cfg.StatusTopic != "" && d.l.cfg.Status != nil
	d.subIn = len(subs) > 0 // holds the outbox back
	d.fill()
	if len(subs) > 0 {
		filters := make(map[string]byte, len(subs))
		for _, f := range subs {
			filters[f] = 1
		}
		d.issue(flight{kind: kindSubscribe}, d.c.SubscribeMultiple(filters, nil)) // nil: the default handler
	}

	progress := time.NewTicker(ProgressInterval)
	defer progress.Stop()
	live := time.NewTicker(d.l.liveCheck())
	defer live.Stop()
	for {
		d.l.progress()
		changed := d.l.out.Changed()
		d.fill()
		var now <-chan *nowMsg
		if d.items < d.window { // PublishNow messages count against the window
			now = d.l.nowReq
		}
		select {
		case <-ctx.Done():
			return d.shutdown()
		case <-d.s.lost:
			return d.s.err()
		case <-d.ackedDone():
			if err := d.collect(); err != nil {
				return err
			}
		case h := <-d.s.echo:
			d.echoed(h)
		case m := <-now:
			d.items++
			d.issue(flight{kind: kindNow, now: m}, d.c.Publish(m.topic, 1, false, m.payload))
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
		case <-d.verifyTimer.C:
			d.verifyArmed = false
			if err := d.checkVerify(); err != nil {
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
		case <-live.C:
			if err := d.s.checkLive(d.l.cfg.KeepAlive); err != nil {
				return err
			}
		case <-progress.C:
		}
	}
}

// ackedDone returns the Done channel of the oldest flight, nil if none.
// The drain wakes for every acknowledgement and refills the window at
// once. (Waking once per batch of acknowledgements costs less CPU but
// stalls against brokers that leave Nagle's algorithm on, as Mosquitto
// does by default: while the link sends nothing its TCP ACKs are delayed,
// and the broker holds its PUBACKs back until they come.)
func (d *drain) ackedDone() <-chan struct{} {
	if d.fifo.len() == 0 {
		return nil
	}
	return d.fifo.front().tok.Done()
}

// issue appends a flight with its token to the FIFO.
func (d *drain) issue(f flight, tok paho.Token) {
	f.tok = tok
	f.sent = time.Now()
	d.fifo.push(f)
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
		d.issue(flight{kind: kindStatus}, d.c.Publish(cfg.StatusTopic, 1, true, cfg.Status()))
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
			if !st.verified && st.unverif >= d.window {
				continue // until the broker shows it keeps them
			}
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

// publish issues the next pending item of stream i. The payload goes to
// paho as it came from the outbox: no copy.
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
	if !st.verified {
		st.unverif++
		st.probes[payloadHash(it.Payload)] = true
	}
	d.issue(flight{kind: i, seq: it.Seq}, d.c.Publish(st.Topic, st.QoS, false, it.Payload))
}

// payloadHash identifies a payload for the write check.
func payloadHash(b []byte) uint64 {
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64()
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
	for d.fifo.len() > 0 {
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
		d.s.acked.Store(true)
		switch fl.kind {
		case kindStatus:
			d.statusIn = false
		case kindShutdown:
			d.shutDone = true
		case kindNow:
			d.items--
		case kindEcho:
			d.checkSubscribed(fl.tok, 0)
		case kindSubscribe:
			d.subIn = false
			d.checkSubscribed(fl.tok, 1)
		default:
			d.items--
			d.held--
			st := &d.streams[fl.kind]
			st.acks = append(st.acks, fl.seq)
			if st.verified {
				d.nacks++
			} else if st.firstAck.IsZero() {
				st.firstAck = time.Now()
				if !d.verifyArmed {
					d.verifyTimer.Reset(d.l.cfg.AckTimeout)
					d.verifyArmed = true
				}
			}
		}
	}
	d.checkProven()
	d.scheduleFlush()
	return nil
}

// echoed takes a payload hash the broker delivered back on an echo topic:
// the stream it was published on keeps what it acknowledges. The stream's
// echo topic is unsubscribed at once (the token is not awaited: a late
// echo is simply ignored): echoes would double the traffic. Streams that
// have not published yet keep theirs, which carries nothing meanwhile.
func (d *drain) echoed(h uint64) {
	for i := range d.streams {
		st := &d.streams[i]
		if !st.verified && st.probes[h] {
			st.verified, st.probes = true, nil
			d.nacks += len(st.acks)
			d.c.Unsubscribe(st.Topic)
			d.l.log.Debug("mqtt: write path checked", "stream", st.Name)
			if d.unverifiedWithAcks() == 0 {
				d.l.clearAlarm()
			}
		}
	}
	d.checkProven()
	d.scheduleFlush()
}

// unverifiedWithAcks counts the streams whose acknowledged items wait
// for the write check.
func (d *drain) unverifiedWithAcks() int {
	n := 0
	for i := range d.streams {
		if st := &d.streams[i]; !st.verified && st.unverif > 0 {
			n++
		}
	}
	return n
}

// checkProven marks the connection proven once something was
// acknowledged on it and every stream that published on it has had its
// writes checked.
func (d *drain) checkProven() {
	if d.proven || !d.s.acked.Load() {
		return
	}
	for i := range d.streams {
		if st := &d.streams[i]; !st.verified && st.unverif > 0 {
			return
		}
	}
	d.proven = true
	d.s.proven.Store(true)
}

// checkVerify fails the connection when a stream's acknowledged items
// have not come back on its echo topic within AckTimeout: the broker
// acknowledges but drops them (an ACL under MQTT 3.1.1, a quota). The
// items stay in the outbox; the next connection checks again.
func (d *drain) checkVerify() error {
	var oldest time.Time
	for i := range d.streams {
		st := &d.streams[i]
		if st.verified || st.firstAck.IsZero() {
			continue
		}
		if age := time.Since(st.firstAck); age >= d.l.cfg.AckTimeout {
			err := fmt.Errorf("mqtt: the broker acknowledged %d publishes on %s but did not deliver them back within %v "+
				"(publish denied by an ACL, a quota?): not delivered, kept in the outbox", len(st.acks), st.Topic, d.l.cfg.AckTimeout)
			d.l.setAlarm(err)
			return err
		}
		if oldest.IsZero() || st.firstAck.Before(oldest) {
			oldest = st.firstAck
		}
	}
	if !oldest.IsZero() {
		d.verifyTimer.Reset(d.l.cfg.AckTimeout - time.Since(oldest))
		d.verifyArmed = true
	}
	return nil
}

// checkSubscribed reports filters the broker refused or granted a lower
// QoS than asked for. They are not retried: the outbox must drain
// regardless.
func (d *drain) checkSubscribed(tok paho.Token, want byte) {
	st, ok := tok.(*paho.SubscribeToken)
	if !ok {
		return
	}
	for f, code := range st.Result() {
		switch {
		case code > 2: // 0x80: refused
			err := fmt.Errorf("mqtt: broker refused subscription %q", f)
			if want == 0 {
				err = fmt.Errorf("mqtt: broker refused the subscription %q that checks the station's own publishes: nothing is deleted until it can read them (grant read on its topics, or skip the write check)", f)
				d.l.setAlarm(err)
			}
			d.l.setLastError(err)
			d.l.log.Error("mqtt: subscription refused", "filter", f, "err", err)
		case code < want:
			err := fmt.Errorf("mqtt: broker granted subscription %q at QoS %d: messages sent while the station is away are lost", f, code)
			d.l.setLastError(err)
			d.l.log.Warn("mqtt: subscription downgraded", "filter", f, "qos", code)
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

// flush hands the acknowledged items of checked streams to the deleter.
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
		if st.verified && len(st.acks) > 0 {
			d.dels.submit(st.Name, st.acks)
			st.acks = nil
		}
	}
	d.nacks = 0
}

// undelivered hands PublishNow messages that got no PUBACK on this
// connection back to their sender.
func (d *drain) undelivered() {
	for d.fifo.len() > 0 {
		if f := d.fifo.pop(); f.kind == kindNow {
			d.l.undelivered(f.now)
		}
	}
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
// its PUBACK awaited at most shutdownWait), then DISCONNECT. If the
// shutdown status was not acknowledged the socket is closed without
// DISCONNECT instead, so that the broker publishes the will: a DISCONNECT
// would cancel it and leave "online" retained.
func (d *drain) shutdown() error {
	cfg := &d.l.cfg
	if cfg.StatusTopic != "" && cfg.ShutdownStatus != nil {
		d.issue(flight{kind: kindShutdown}, d.c.Publish(cfg.StatusTopic, 1, true, cfg.ShutdownStatus()))
		// Flights before it are collected on the way (brokers acknowledge
		// in order): their items are deleted now, not sent again later.
		t := time.NewTimer(shutdownWait)
	wait:
		for !d.shutDone {
			select {
			case <-d.ackedDone():
				if err := d.collect(); err != nil {
					d.l.log.Warn("mqtt: shutdown status not published", "err", err)
					break wait
				}
			case h := <-d.s.echo:
				d.echoed(h)
			case <-d.s.lost:
				break wait
			case <-t.C:
				d.l.log.Warn("mqtt: shutdown status not acknowledged: closing without DISCONNECT so the broker publishes the will", "waited", shutdownWait)
				break wait
			}
		}
		t.Stop()
		if !d.shutDone {
			d.s.kill()
			d.s.awaitLost(disconnectQuiesce * time.Millisecond)
			return nil
		}
	}
	d.c.Disconnect(disconnectQuiesce)
	d.l.log.Info("mqtt: disconnected", "broker", d.l.broker.String())
	return nil
}
