package mqtttest

import (
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Tracker is a proxy hook that follows the QoS 1 publishes of outbox
// items (payloads made by Payload) on topics under a prefix: which seqs
// each connection sent, in order, and which PUBACKs were forwarded to the
// client. A PUBACK is recorded before it is forwarded, so by the time the
// link sees it the tracker already knows.
type Tracker struct {
	prefix string

	mu          sync.Mutex
	drop        func(Packet) bool
	sent        map[int][]uint64          // conn -> seqs in the order sent
	waiting     map[int]map[uint16]uint64 // conn -> packet id -> seq
	acked       map[uint64]int            // seq -> PUBACKs forwarded
	acks        counter                   // PUBACKs of tracked publishes
	clientAcks  counter                   // PUBACKs sent by clients
	subacks     counter                   // SUBACKs sent by the broker
	outstanding map[int]int
	maxOut      int
}

// counter counts events and wakes waiters; guarded by Tracker.mu.
type counter struct {
	n       int
	waiters []ackWaiter
}

type ackWaiter struct {
	n  int
	ch chan struct{}
}

func (c *counter) inc() {
	c.n++
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if c.n >= w.n {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	c.waiters = kept
}

func (c *counter) reached(n int) <-chan struct{} {
	ch := make(chan struct{})
	if c.n >= n {
		close(ch)
	} else {
		c.waiters = append(c.waiters, ackWaiter{n, ch})
	}
	return ch
}

// NewTracker follows publishes on topics starting with prefix.
func NewTracker(prefix string) *Tracker {
	return &Tracker{
		prefix:      prefix,
		sent:        make(map[int][]uint64),
		waiting:     make(map[int]map[uint16]uint64),
		acked:       make(map[uint64]int),
		outstanding: make(map[int]int),
	}
}

// Drop makes the tracker drop (not forward) every packet for which fn
// returns true; it is called with the tracker's lock held.
func (tr *Tracker) Drop(fn func(Packet) bool) {
	tr.mu.Lock()
	tr.drop = fn
	tr.mu.Unlock()
}

// Hook is the proxy hook.
func (tr *Tracker) Hook(pk Packet) bool {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.drop != nil && tr.drop(pk) {
		return false
	}
	switch {
	case pk.Dir == Up && pk.Type == PUBLISH:
		topic, qos, id, payload, ok := pk.Publish()
		if !ok || qos != 1 || !strings.HasPrefix(topic, tr.prefix) {
			break
		}
		seq, ok := SeqOf(payload)
		if !ok {
			break
		}
		tr.sent[pk.Conn] = append(tr.sent[pk.Conn], seq)
		if tr.waiting[pk.Conn] == nil {
			tr.waiting[pk.Conn] = make(map[uint16]uint64)
		}
		tr.waiting[pk.Conn][id] = seq
		tr.outstanding[pk.Conn]++
		tr.maxOut = max(tr.maxOut, tr.outstanding[pk.Conn])
	case pk.Dir == Down && pk.Type == PUBACK:
		seq, ok := tr.waiting[pk.Conn][pk.ID()]
		if !ok {
			break
		}
		delete(tr.waiting[pk.Conn], pk.ID())
		tr.outstanding[pk.Conn]--
		tr.acked[seq]++
		tr.acks.inc()
	case pk.Dir == Up && pk.Type == PUBACK:
		tr.clientAcks.inc()
	case pk.Dir == Down && pk.Type == SUBACK:
		tr.subacks.inc()
	}
	return true
}

// CheckAcked returns an error unless every seq was PUBACKed (at the
// proxy). Use it as MemOutbox.BeforeDelete.
func (tr *Tracker) CheckAcked(stream string, seqs []uint64) error {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, s := range seqs {
		if tr.acked[s] == 0 {
			return fmt.Errorf("stream %s: seq %d deleted without a PUBACK", stream, s)
		}
	}
	return nil
}

// AcksReached returns a channel closed once n PUBACKs were forwarded.
func (tr *Tracker) AcksReached(n int) <-chan struct{} {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.acks.reached(n)
}

// ClientAcksReached returns a channel closed once clients sent n PUBACKs
// (acknowledging messages the broker delivered), on any topic.
func (tr *Tracker) ClientAcksReached(n int) <-chan struct{} {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.clientAcks.reached(n)
}

// SubacksReached returns a channel closed once the broker sent n SUBACKs.
func (tr *Tracker) SubacksReached(n int) <-chan struct{} {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.subacks.reached(n)
}

// Sent returns, per connection index, the seqs sent in order.
func (tr *Tracker) Sent() map[int][]uint64 {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	out := make(map[int][]uint64, len(tr.sent))
	for c, s := range tr.sent {
		out[c] = slices.Clone(s)
	}
	return out
}

// MaxOutstanding returns the largest number of tracked publishes that
// were waiting for their PUBACK at once on one connection.
func (tr *Tracker) MaxOutstanding() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.maxOut
}
