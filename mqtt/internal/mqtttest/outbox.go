package mqtttest

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"station.dev/agent/mqtt"
)

// MemOutbox is an in-memory mqtt.Outbox.
type MemOutbox struct {
	// BeforeDelete, if set, is called at the start of every Delete; a
	// non-nil error fails the Delete. Set it before the link runs.
	BeforeDelete func(stream string, seqs []uint64) error

	mu      sync.Mutex
	streams map[string][]mqtt.Item // ascending seq
	seq     map[string]uint64
	changed chan struct{}
	mut     chan struct{} // closed and replaced on every change
	reads   int
	deletes int
}

// NewMemOutbox returns an empty outbox.
func NewMemOutbox() *MemOutbox {
	return &MemOutbox{
		streams: make(map[string][]mqtt.Item),
		seq:     make(map[string]uint64),
		changed: make(chan struct{}, 1),
		mut:     make(chan struct{}),
	}
}

func (o *MemOutbox) mutatedLocked() {
	close(o.mut)
	o.mut = make(chan struct{})
}

// Add appends n items to stream, with payloads from mk, and signals
// Changed. It returns the last seq.
func (o *MemOutbox) Add(stream string, n int, mk func(seq uint64) []byte) uint64 {
	o.mu.Lock()
	for range n {
		o.seq[stream]++
		s := o.seq[stream]
		o.streams[stream] = append(o.streams[stream], mqtt.Item{Seq: s, Payload: mk(s)})
	}
	last := o.seq[stream]
	o.mutatedLocked()
	o.mu.Unlock()
	select {
	case o.changed <- struct{}{}:
	default:
	}
	return last
}

// Read implements mqtt.Outbox.
func (o *MemOutbox) Read(stream string, after uint64, max int) ([]mqtt.Item, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.reads++
	items := o.streams[stream]
	i := sort.Search(len(items), func(i int) bool { return items[i].Seq > after })
	j := min(len(items), i+max)
	return append([]mqtt.Item(nil), items[i:j]...), nil
}

// Delete implements mqtt.Outbox.
func (o *MemOutbox) Delete(stream string, seqs ...uint64) error {
	if o.BeforeDelete != nil {
		if err := o.BeforeDelete(stream, seqs); err != nil {
			return err
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.deletes++
	items := o.streams[stream]
	// Fast path: the link deletes in seq order, so usually a prefix.
	k := 0
	for k < len(seqs) && k < len(items) && items[k].Seq == seqs[k] {
		k++
	}
	items = items[k:]
	for _, s := range seqs[k:] {
		i := sort.Search(len(items), func(i int) bool { return items[i].Seq >= s })
		if i < len(items) && items[i].Seq == s {
			items = append(items[:i:i], items[i+1:]...)
		}
	}
	o.streams[stream] = items
	o.mutatedLocked()
	return nil
}

// Changed implements mqtt.Outbox.
func (o *MemOutbox) Changed() <-chan struct{} { return o.changed }

// Len returns the number of items left in stream.
func (o *MemOutbox) Len(stream string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.streams[stream])
}

// Counts returns the number of Read and Delete calls so far.
func (o *MemOutbox) Counts() (reads, deletes int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.reads, o.deletes
}

// WaitEmpty waits until every stream is empty.
func (o *MemOutbox) WaitEmpty(t testing.TB) {
	t.Helper()
	if err := o.waitEmpty(Timeout); err != nil {
		t.Fatal(err)
	}
}

func (o *MemOutbox) waitEmpty(d time.Duration) error {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		o.mu.Lock()
		left := 0
		for _, items := range o.streams {
			left += len(items)
		}
		ch := o.mut
		o.mu.Unlock()
		if left == 0 {
			return nil
		}
		select {
		case <-ch:
		case <-deadline.C:
			return fmt.Errorf("outbox not drained: %d items left", left)
		}
	}
}

// WaitEmptyB is WaitEmpty for benchmarks' hot loops (no testing.TB calls
// unless it fails).
func (o *MemOutbox) WaitEmptyB(b *testing.B) {
	if err := o.waitEmpty(5 * time.Minute); err != nil {
		b.Fatal(err)
	}
}

// Payload returns a test payload of size bytes (at least the header)
// that carries seq.
func Payload(seq uint64, size int) []byte {
	p := fmt.Appendf(nil, "seq=%010d;", seq)
	if len(p) < size {
		p = append(p, bytes.Repeat([]byte{'x'}, size-len(p))...)
	}
	return p
}

// SeqOf returns the seq carried by a Payload.
func SeqOf(payload []byte) (uint64, bool) {
	if len(payload) < 15 || !bytes.HasPrefix(payload, []byte("seq=")) || payload[14] != ';' {
		return 0, false
	}
	s, err := strconv.ParseUint(string(payload[4:14]), 10, 64)
	return s, err == nil
}
