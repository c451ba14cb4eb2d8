//go:build faults

package faulttest

import (
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"station.dev/agent/internal/stationproc"
	"station.dev/agent/mqtt/brokertest"
)

// observer is a subscriber on the broker that keeps every message it receives, in arrival order.
type observer struct {
	t       testing.TB
	mu      sync.Mutex
	msgs    []observed
	changed chan struct{} // closed and replaced on every message
}

// observed is one message and when it came.
type observed struct {
	Topic   string
	Payload []byte
	At      time.Time
}

// observe subscribes to filter on the broker at url and keeps what arrives until the test ends.
func observe(t testing.TB, url, filter string) *observer {
	t.Helper()
	sub := brokertest.Subscribe(t, url, filter, 200000)
	o := &observer{t: t, changed: make(chan struct{})}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case m := <-sub.C:
				o.mu.Lock()
				o.msgs = append(o.msgs, observed{Topic: m.Topic, Payload: m.Payload, At: time.Now()})
				close(o.changed)
				o.changed = make(chan struct{})
				o.mu.Unlock()
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
	})
	return o
}

// snapshot returns the messages received so far and a channel closed at the next one.
func (o *observer) snapshot() ([]observed, <-chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.msgs[:len(o.msgs):len(o.msgs)], o.changed
}

// records decodes the messages received so far as records.
func (o *observer) records() []stationproc.Record {
	o.t.Helper()
	msgs, _ := o.snapshot()
	recs := make([]stationproc.Record, 0, len(msgs))
	for _, m := range msgs {
		r, err := stationproc.ParseRecord(m.Topic, m.Payload, m.At)
		if err != nil {
			o.t.Fatalf("message on %s is not a JSON record: %q", m.Topic, truncate(m.Payload, 200))
		}
		recs = append(recs, r)
	}
	return recs
}

// waitFor waits until cond holds for the messages received, failing the test after timeout.
func (o *observer) waitFor(timeout time.Duration, what string, cond func([]observed) bool) {
	o.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		msgs, changed := o.snapshot()
		if cond(msgs) {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			o.t.Fatalf("%s: not within %s (%d messages received)", what, timeout, len(msgs))
		}
	}
}

// waitEach feeds each record received, once and in arrival order from the first, to fn until
// fn returns true, failing the test after timeout.
func (o *observer) waitEach(timeout time.Duration, what string, fn func(stationproc.Record) bool) {
	o.t.Helper()
	n := 0
	o.waitFor(timeout, what, func(msgs []observed) bool {
		for n < len(msgs) {
			m := msgs[n]
			n++
			r, err := stationproc.ParseRecord(m.Topic, m.Payload, m.At)
			if err != nil {
				continue // records() reports it
			}
			if fn(r) {
				return true
			}
		}
		return false
	})
}

// waitIDs waits until every record id in want has arrived.
func (o *observer) waitIDs(want map[string]bool, timeout time.Duration) {
	o.t.Helper()
	seen := map[string]bool{}
	o.waitEach(timeout, fmt.Sprintf("%d recorded events reaching the broker", len(want)), func(r stationproc.Record) bool {
		if want[r.ID] {
			seen[r.ID] = true
		}
		return len(seen) == len(want)
	})
}

// waitType waits for a record of the given type and returns it.
func (o *observer) waitType(typ string, timeout time.Duration) stationproc.Record {
	o.t.Helper()
	var found stationproc.Record
	o.waitEach(timeout, "a "+typ+" record", func(r stationproc.Record) bool {
		found = r
		return r.Type == typ
	})
	return found
}

// waitSeq waits for the record with the given seq.
func (o *observer) waitSeq(seq uint64, timeout time.Duration) {
	o.t.Helper()
	o.waitEach(timeout, fmt.Sprintf("the record of seq %d", seq), func(r stationproc.Record) bool { return r.Seq == seq })
}

// duplicates counts the records that arrived more than once.
func duplicates(recs []stationproc.Record) int {
	seen := map[string]bool{}
	n := 0
	for _, r := range recs {
		if seen[r.ID] {
			n++
		}
		seen[r.ID] = true
	}
	return n
}

// countType counts the distinct records of a type.
func countType(recs []stationproc.Record, typ string) int {
	ids := map[string]bool{}
	for _, r := range recs {
		if r.Type == typ {
			ids[r.ID] = true
		}
	}
	return len(ids)
}

// perSecond buckets times into whole seconds after start and returns the counts.
func perSecond(start time.Time, times []time.Time) []int {
	var buckets []int
	for _, at := range times {
		i := max(0, int(at.Sub(start)/time.Second))
		for len(buckets) <= i {
			buckets = append(buckets, 0)
		}
		buckets[i]++
	}
	return buckets
}

func maxInt(xs []int) int {
	m := 0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

// percentile returns the p-th percentile (0..100) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
