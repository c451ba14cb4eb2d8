package mqtt

import (
	"errors"
	"sync"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// inbox takes the messages of one connection off paho's receive path: paho
// calls onMessage, which only queues the message, so a slow receiver (a
// store stalled by a worn SD card) never holds up PINGRESPs and PUBACKs.
// One goroutine hands the messages to Config.OnMessage one at a time, in
// receive order, and PUBACKs go out in receive order whatever order the
// receiver acknowledges in: an acknowledged message waits for the ones
// received before it. At most maxUnacked messages wait for their Ack: a
// broker that sends more (one with no limit on messages in flight) is
// held back (paho stops reading) until the receiver catches up.
type inbox struct {
	l *Link
	s *connState

	mu     sync.Mutex
	queue  []*inMsg // received, not yet handed to OnMessage
	order  []*inMsg // received, PUBACK not yet sent, in receive order
	closed bool
	wake   chan struct{}
	room   chan struct{} // closed and replaced whenever PUBACKs leave

	acks    []*inMsg      // handled in receive order, PUBACK not yet handed to paho
	ackWake chan struct{} // wakes the acker
}

type inMsg struct {
	m     paho.Message
	acked bool
}

func newInbox(l *Link, s *connState) *inbox {
	return &inbox{l: l, s: s, wake: make(chan struct{}, 1), room: make(chan struct{}), ackWake: make(chan struct{}, 1)}
}

// onMessage is paho's handler for the subscribed topics. It never blocks
// but while maxUnacked messages wait.
func (ib *inbox) onMessage(c paho.Client, m paho.Message) {
	if ib.l.streamTopics[m.Topic()] {
		// A late echo of the write check, come after its topic was
		// unsubscribed (paho then has no route for it): never a command.
		ib.s.onEcho(c, m)
		if m.Qos() > 0 {
			m.Ack()
		}
		return
	}
	if ib.l.cfg.OnMessage == nil {
		m.Ack() // nobody wants it: do not let the broker redeliver it forever
		return
	}
	ib.mu.Lock()
	for len(ib.order) >= maxUnacked && !ib.closed {
		room := ib.room
		ib.mu.Unlock()
		select {
		case <-room:
		case <-ib.s.dead:
			return // the broker delivers it again on the next connection
		}
		ib.mu.Lock()
	}
	if ib.closed {
		ib.mu.Unlock()
		return // the broker delivers it again on the next connection
	}
	im := &inMsg{m: m}
	ib.queue = append(ib.queue, im)
	ib.order = append(ib.order, im)
	ib.mu.Unlock()
	select {
	case ib.wake <- struct{}{}:
	default:
	}
}

// run hands the queued messages to OnMessage until the inbox is closed.
func (ib *inbox) run(wg *sync.WaitGroup) {
	defer wg.Done()
	wg.Add(1)
	go ib.acker(wg)
	for {
		ib.mu.Lock()
		if ib.closed {
			ib.mu.Unlock()
			return
		}
		var im *inMsg
		if len(ib.queue) > 0 {
			im = ib.queue[0]
			ib.queue[0] = nil
			ib.queue = ib.queue[1:]
		}
		ib.mu.Unlock()
		if im == nil {
			<-ib.wake
			continue
		}
		ib.l.cfg.OnMessage(Message{Topic: im.m.Topic(), Payload: im.m.Payload(), Retained: im.m.Retained(),
			ack: func() { ib.ack(im) }, nack: func() { ib.nack(im) }})
	}
}

// close ends the connection's inbox: queued messages are dropped and
// later Acks go nowhere (the broker delivers the unacknowledged messages
// again on the next connection).
func (ib *inbox) close() {
	ib.mu.Lock()
	ib.closed = true
	ib.queue, ib.order, ib.acks = nil, nil, nil
	ib.mu.Unlock()
	for _, c := range []chan struct{}{ib.wake, ib.ackWake} {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// acker hands the PUBACKs to paho in receive order. paho's Ack waits for
// its writer, which waits for the socket: on its own goroutine, so that
// neither the receiver nor the room for more messages waits for the
// network (a broker blocked writing to the station would otherwise never
// read the PUBACKs that unblock it).
func (ib *inbox) acker(wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		ib.mu.Lock()
		if ib.closed {
			ib.mu.Unlock()
			return
		}
		ready := ib.acks
		ib.acks = nil
		ib.mu.Unlock()
		if len(ready) == 0 {
			select {
			case <-ib.ackWake:
			case <-ib.s.dead:
				return
			}
			continue
		}
		for _, r := range ready {
			r.m.Ack()
		}
	}
}

// ack marks im handled and sends the PUBACKs of the handled messages at
// the head of the receive order.
func (ib *inbox) ack(im *inMsg) {
	ib.mu.Lock()
	if ib.closed || im.acked {
		ib.mu.Unlock()
		return
	}
	im.acked = true
	n := 0
	for n < len(ib.order) && ib.order[n].acked {
		n++
	}
	if n == 0 {
		ib.mu.Unlock()
		return
	}
	ib.acks = append(ib.acks, ib.order[:n]...)
	ib.order = ib.order[n:]
	close(ib.room)
	ib.room = make(chan struct{})
	ib.mu.Unlock()
	select {
	case ib.ackWake <- struct{}{}:
	default:
	}
}

// errNotStored is why a connection is dropped after a Nack.
var errNotStored = errors.New("mqtt: a received message could not be handled: connection dropped so that the broker delivers it again")

// nack drops the connection: the broker delivers im (and everything not
// acknowledged before it) again on the next connection.
func (ib *inbox) nack(*inMsg) {
	ib.s.nacked.Store(true)
	ib.s.killFor(errNotStored)
}
