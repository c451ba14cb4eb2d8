package agent

import (
	"encoding/json"
	"sync"
)

// recentRecords keeps the last records written, for `station events`, and feeds followers.
type recentRecords struct {
	mu        sync.Mutex
	ring      [][]byte
	seqs      []uint64 // the seq of each record of ring, for the feed (EventsAfter)
	next      int
	full      bool
	followers map[chan []byte]struct{}
}

func newRecentRecords(n int) *recentRecords {
	return &recentRecords{ring: make([][]byte, n), seqs: make([]uint64, n), followers: map[chan []byte]struct{}{}}
}

func (r *recentRecords) add(b []byte) {
	var head struct{ Seq uint64 }
	_ = json.Unmarshal(b, &head)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ring[r.next] = b
	r.seqs[r.next] = head.Seq
	r.next = (r.next + 1) % len(r.ring)
	if r.next == 0 {
		r.full = true
	}
	for ch := range r.followers {
		select {
		case ch <- b:
		default: // a follower that does not keep up is dropped rather than slowing the agent
			delete(r.followers, ch)
			close(ch)
		}
	}
}

// last returns up to n most recent records, oldest first.
func (r *recentRecords) last(n int) [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	size := r.next
	if r.full {
		size = len(r.ring)
	}
	if n > size || n <= 0 {
		n = size
	}
	out := make([][]byte, 0, n)
	for i := n; i > 0; i-- {
		out = append(out, r.ring[(r.next-i+len(r.ring))%len(r.ring)])
	}
	return out
}

// follow registers a follower; the channel is closed when it falls behind or on unfollow.
func (r *recentRecords) follow() chan []byte {
	ch := make(chan []byte, 64)
	r.mu.Lock()
	r.followers[ch] = struct{}{}
	r.mu.Unlock()
	return ch
}

func (r *recentRecords) unfollow(ch chan []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.followers[ch]; ok {
		delete(r.followers, ch)
		close(ch)
	}
}

// after returns the records kept whose seq is above seq, in no particular order.
func (r *recentRecords) after(seq uint64) []seqRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []seqRecord
	for i, b := range r.ring {
		if b != nil && r.seqs[i] > seq {
			out = append(out, seqRecord{r.seqs[i], b})
		}
	}
	return out
}

type seqRecord struct {
	seq uint64
	b   []byte
}
