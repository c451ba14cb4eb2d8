package mqtt

import (
	"context"
	"fmt"
	"sync"
)

// ring is a FIFO of flights.
type ring struct {
	buf  []flight
	head int
	n    int
}

func (r *ring) len() int { return r.n }

func (r *ring) front() *flight { return &r.buf[r.head] }

// at returns the i-th flight from the head.
func (r *ring) at(i int) *flight { return &r.buf[(r.head+i)%len(r.buf)] }

func (r *ring) push(f flight) {
	if r.n == len(r.buf) {
		nb := make([]flight, max(16, 2*len(r.buf)))
		for i := 0; i < r.n; i++ {
			nb[i] = r.buf[(r.head+i)%len(r.buf)]
		}
		r.buf, r.head = nb, 0
	}
	r.buf[(r.head+r.n)%len(r.buf)] = f
	r.n++
}

func (r *ring) pop() flight {
	f := r.buf[r.head]
	r.buf[r.head] = flight{}
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	return f
}

// delReq is a batch of acknowledged items to delete, or (done != nil) a
// barrier closed once all earlier batches are done.
type delReq struct {
	stream string
	seqs   []uint64
	done   chan struct{}
}

// deleter runs the outbox Deletes on its own goroutine, so publishing
// continues while the store syncs.
type deleter struct {
	l  *Link
	q  chan delReq
	wg sync.WaitGroup
}

func newDeleter(l *Link) *deleter {
	dl := &deleter{l: l, q: make(chan delReq, 4)}
	dl.wg.Add(1)
	go dl.run()
	return dl
}

func (dl *deleter) run() {
	defer dl.wg.Done()
	for r := range dl.q {
		if r.done != nil {
			close(r.done)
			continue
		}
		if err := dl.l.out.Delete(r.stream, r.seqs...); err != nil {
			// The items stay in the outbox and are sent again on the
			// next connection: a duplicate, not a loss.
			err = fmt.Errorf("mqtt: delete %d acknowledged items of stream %q: %w", len(r.seqs), r.stream, err)
			dl.l.setLastError(err)
			dl.l.log.Error("mqtt: outbox delete failed", "err", err)
			continue
		}
		dl.l.acked.Add(uint64(len(r.seqs)))
	}
}

// submit queues a batch; it blocks while the deleter is behind.
func (dl *deleter) submit(stream string, seqs []uint64) {
	dl.q <- delReq{stream: stream, seqs: seqs}
}

// sync waits until all batches submitted so far are done.
func (dl *deleter) sync(ctx context.Context) error {
	done := make(chan struct{})
	select {
	case dl.q <- delReq{done: done}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close waits for all submitted batches and stops the deleter.
func (dl *deleter) close() {
	close(dl.q)
	dl.wg.Wait()
}
