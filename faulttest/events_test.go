//go:build faults

package faulttest

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"station.dev/agent/mqtt/brokertest"
)

// wireRecord is a record as it arrives on the events topic.
type wireRecord struct {
	ID          string         `json:"id"`
	Seq         uint64         `json:"seq"`
	Type        string         `json:"type"`
	TS          string         `json:"ts"`
	ClockSynced bool           `json:"clock_synced"`
	BootID      string         `json:"boot_id"`
	Data        map[string]any `json:"data"`
	Error       *struct {
		Code   string `json:"code"`
		Detail string `json:"detail"`
	} `json:"error"`
	Card *struct {
		Kind   string `json:"kind"`
		Token  string `json:"token"`
		Masked string `json:"masked"`
	} `json:"card"`

	Station string    `json:"-"` // from the topic
	At      time.Time `json:"-"` // when the observer received it
}

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
func (o *observer) records() []wireRecord {
	o.t.Helper()
	msgs, _ := o.snapshot()
	recs := make([]wireRecord, 0, len(msgs))
	for _, m := range msgs {
		var r wireRecord
		if err := json.Unmarshal(m.Payload, &r); err != nil {
			o.t.Fatalf("message on %s is not a JSON record: %q", m.Topic, truncate(m.Payload, 200))
		}
		r.Station = stationOf(m.Topic)
		r.At = m.At
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
func (o *observer) waitEach(timeout time.Duration, what string, fn func(wireRecord) bool) {
	o.t.Helper()
	n := 0
	o.waitFor(timeout, what, func(msgs []observed) bool {
		for n < len(msgs) {
			m := msgs[n]
			n++
			var r wireRecord
			if err := json.Unmarshal(m.Payload, &r); err != nil {
				continue // records() reports it
			}
			r.Station, r.At = stationOf(m.Topic), m.At
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
	o.waitEach(timeout, fmt.Sprintf("%d recorded events reaching the broker", len(want)), func(r wireRecord) bool {
		if want[r.ID] {
			seen[r.ID] = true
		}
		return len(seen) == len(want)
	})
}

// waitType waits for a record of the given type and returns it.
func (o *observer) waitType(typ string, timeout time.Duration) wireRecord {
	o.t.Helper()
	var found wireRecord
	o.waitEach(timeout, "a "+typ+" record", func(r wireRecord) bool {
		found = r
		return r.Type == typ
	})
	return found
}

// waitSeq waits for the record with the given seq.
func (o *observer) waitSeq(seq uint64, timeout time.Duration) {
	o.t.Helper()
	o.waitEach(timeout, fmt.Sprintf("the record of seq %d", seq), func(r wireRecord) bool { return r.Seq == seq })
}

// stationOf returns the station id of a topic {prefix}/{id}/{kind}.
func stationOf(topic string) string {
	parts := strings.Split(topic, "/")
	if len(parts) < 2 {
		return ""
	}
	return parts[len(parts)-2]
}

// checkSeq checks the records of one station: seq covers 1..max without gaps, a seq seen twice
// always carries the same id, and an id always the same seq. It returns max.
func checkSeq(t testing.TB, recs []wireRecord) uint64 {
	t.Helper()
	bySeq := map[uint64]string{}
	byID := map[string]uint64{}
	var maxSeq uint64
	for _, r := range recs {
		if id, ok := bySeq[r.Seq]; ok && id != r.ID {
			t.Fatalf("station %s: seq %d carried two ids: %s and %s", r.Station, r.Seq, id, r.ID)
		}
		if s, ok := byID[r.ID]; ok && s != r.Seq {
			t.Fatalf("station %s: id %s came with seq %d and %d", r.Station, r.ID, s, r.Seq)
		}
		bySeq[r.Seq], byID[r.ID] = r.ID, r.Seq
		maxSeq = max(maxSeq, r.Seq)
	}
	var missing []uint64
	for s := uint64(1); s <= maxSeq; s++ {
		if _, ok := bySeq[s]; !ok {
			missing = append(missing, s)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("seq gap in the events stream (max %d): %d missing, first %v", maxSeq, len(missing), missing[:min(10, len(missing))])
	}
	return maxSeq
}

// duplicates counts the records that arrived more than once.
func duplicates(recs []wireRecord) int {
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
func countType(recs []wireRecord, typ string) int {
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
