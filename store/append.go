package store

import (
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// maxGroup bounds the appends committed in one transaction, and so the
// memory a group holds (at most maxGroup·MaxPayload).
const maxGroup = 64

// appendReq is one Append waiting for, or taking part in, a group commit.
type appendReq struct {
	st      Stream
	class   Class
	build   func(seq uint64) ([]byte, error)
	respond *respondReq // set by Respond

	// Results, set by the goroutine that commits the group.
	rec      Record
	err      error
	evicted  uint64 // telemetry records this append evicted
	refused  bool   // err is ErrFull
	panicked bool   // build panicked with panicVal
	panicVal any
	// corrupt says why the group's transaction failed with a bbolt panic
	// or a memory fault: nothing was written, the file went bad.
	corrupt string
	// unsure is set when the group's commit failed with an error that
	// leaves it unknown whether rec reached the file (health.go).
	unsure bool

	// wake tells a waiting Append that its group is done (false) or that it
	// leads the next group (true). Buffered so the sender never blocks.
	wake chan bool
}

// Append stores one record of stream st, durably: when it returns without
// error the record is committed and fsynced.
//
// In one transaction it takes the next seq of st, calls build(seq) for the
// payload, makes room for it according to c (evicting the oldest Telemetry
// records if needed) and stores it. If build returns an error, or the record
// is refused, nothing is written and the seq is not used; the error from
// build is returned wrapped. If build panics, the panic is raised again in
// the caller of Append.
//
// build runs once, inside the write transaction and possibly on another
// Append's goroutine: it must be quick, must not call the Store, and should
// have no side effects, since what it built is discarded if the transaction
// fails.
//
// Appends from concurrent goroutines are committed together (one fsync for
// several records) without delaying a lone append.
func (s *Store) Append(st Stream, c Class, build func(seq uint64) ([]byte, error)) (Record, error) {
	if !st.valid() {
		return Record{}, fmt.Errorf("store: append: unknown stream %q", st)
	}
	switch c {
	case Normal, Critical:
	case Evictable:
		if st != Telemetry {
			return Record{}, fmt.Errorf("store: append: class %s is only for the %s stream, not %s", c, Telemetry, st)
		}
	default:
		return Record{}, fmt.Errorf("store: append: unknown class %d", int(c))
	}
	if build == nil {
		return Record{}, errors.New("store: append: nil build function")
	}
	return s.do(&appendReq{st: st, class: c, build: build, wake: make(chan bool, 1)})
}

// do commits r with the appends queued beside it and returns its outcome,
// contained (see health.go): when the file went bad, the store is salvaged
// and r appended once more to the new store; when the commit failed unsure,
// r's outcome is what the reopened file holds.
func (s *Store) do(r *appendReq) (Record, error) {
	for attempt := 0; ; attempt++ {
		if err := s.acquire(); err != nil {
			return Record{}, err
		}
		gen := s.gen
		r.corrupt, r.unsure = "", false
		s.submit(r)
		s.mu.RUnlock()
		switch {
		case r.panicked:
			panic(r.panicVal)
		case r.corrupt != "" && attempt == 0:
			if err := s.reopen(gen, r.corrupt); err != nil {
				return Record{}, fmt.Errorf("store: %s: not recorded: %w", r.op(), err)
			}
			continue
		case r.corrupt != "":
			return Record{}, fmt.Errorf("store: %s: not recorded: %s", r.op(), r.corrupt)
		case r.unsure:
			return s.settle(gen, r)
		}
		return r.rec, r.err
	}
}

// submit queues r and returns once r's group is committed. The first
// Append to find no commit running leads: it commits everything queued,
// then hands the lead to the oldest Append that queued meanwhile. A lone
// Append thus commits at once, and concurrent ones share a transaction.
func (s *Store) submit(r *appendReq) {
	s.qmu.Lock()
	s.queue = append(s.queue, r)
	if s.busy {
		s.qmu.Unlock()
		if lead := <-r.wake; !lead {
			return // a leader committed r's group
		}
		s.qmu.Lock()
	} else {
		s.busy = true
	}
	n := min(len(s.queue), maxGroup)
	group := make([]*appendReq, n)
	copy(group, s.queue)
	rest := copy(s.queue, s.queue[n:])
	clear(s.queue[rest:])
	s.queue = s.queue[:rest]
	s.qmu.Unlock()

	defer s.handOff()
	s.commitGroup(group, r)
}

// handOff passes the lead to the oldest queued Append, or ends the run.
func (s *Store) handOff() {
	s.qmu.Lock()
	if len(s.queue) > 0 {
		next := s.queue[0]
		s.qmu.Unlock()
		next.wake <- true
		return
	}
	s.busy = false
	s.qmu.Unlock()
}

// commitGroup appends every request of group in one transaction and sets
// their results. leader is the request of the calling goroutine; the others
// are woken when their results are set.
func (s *Store) commitGroup(group []*appendReq, leader *appendReq) {
	defer func() {
		for _, r := range group {
			if r != leader {
				r.wake <- false
			}
		}
	}()

	// Pending deletes ride in this commit (deletes.go).
	snap := s.pending.snapshot()
	var err error
	fault := guard(func() {
		err = s.db.Update(func(tx *bbolt.Tx) error {
			cs, err := loadCounters(tx)
			if err != nil {
				return err
			}
			if err := applyDeletes(tx, &cs, snap); err != nil {
				return err
			}
			stored := 0
			for _, r := range group {
				r.rec, r.err, r.evicted, r.refused, r.panicked, r.panicVal = Record{}, nil, 0, false, false, nil
				if err := s.appendOne(tx, &cs, r); err != nil {
					return err // a bbolt failure: the whole group fails
				}
				if r.err == nil && !r.panicked {
					stored++
				}
			}
			if stored == 0 {
				return errNothing
			}
			return cs.save(tx)
		})
	})
	if fault != nil {
		// bbolt panicked, or a page of the map faulted: the transaction
		// was rolled back, nothing of the group was written.
		for _, r := range group {
			if !r.panicked {
				r.rec, r.err, r.refused = Record{}, nil, false
				r.corrupt = fmt.Sprintf("corruption met at run time (append): %v", fault)
			}
		}
		return
	}
	switch {
	case err == nil:
		s.pending.done(snap)
		stored := false
		for _, r := range group {
			if r.err == nil && !r.panicked {
				s.evicted.Add(r.evicted)
				stored = true
			}
		}
		if stored {
			s.signal()
		}
	case err == errNothing:
	default:
		for _, r := range group {
			if r.err != nil || r.panicked {
				continue // its own outcome stands: nothing of it was written
			}
			if unsure(err) {
				// r.rec stays: settle looks for it in the reopened file.
				r.unsure = true
				r.err = fmt.Errorf("store: %s: %w", r.op(), err)
				continue
			}
			r.rec = Record{}
			if errors.Is(err, berrors.ErrMaxSizeReached) {
				r.err = fmt.Errorf("%w: the file reached its size limit: %w", ErrFull, err)
				r.refused = true
			} else {
				r.err = fmt.Errorf("store: %s: %w", r.op(), err)
			}
		}
	}
	for _, r := range group {
		if r.refused {
			s.refused.Add(1)
		}
	}
}

// op names r's operation in errors.
func (r *appendReq) op() string {
	if r.respond != nil {
		return "respond"
	}
	return "append " + string(r.st)
}

// appendOne adds r to the transaction, or sets r.err and leaves the
// transaction as it was. It returns an error only when bbolt fails, which
// aborts the whole group.
func (s *Store) appendOne(tx *bbolt.Tx, cs *counters, r *appendReq) error {
	// The bytes a Respond frees by deleting its inbox record.
	var credit int64
	if r.respond != nil {
		var err error
		if credit, err = inboxCredit(tx, r.respond.inboxSeq); err != nil {
			r.err = fmt.Errorf("store: respond: %w", err)
			return nil
		}
	}
	c := cs.get(r.st)
	seq := c.last + 1
	payload, err := s.callBuild(r, seq)
	if r.panicked {
		return nil
	}
	if err != nil {
		r.err = fmt.Errorf("store: %s: build record %d: %w", r.op(), seq, err)
		return nil
	}
	if len(payload) > MaxPayload {
		r.err = fmt.Errorf("%w: %s payload of %d bytes, limit %d", ErrTooLarge, r.st, len(payload), MaxPayload)
		return nil
	}

	// Make room. Telemetry goes first whatever the class; decide before
	// touching anything so that a refused record leaves the transaction as
	// it was.
	size := accounted(len(payload))
	total := cs.total() - credit
	limit := s.cfg.maxBytes
	if r.class == Critical {
		limit += s.cfg.reserve
	}
	tel := cs.get(Telemetry)
	if total-tel.bytes+size > limit {
		r.err = fmt.Errorf("%w: %s record of %d bytes (%s) does not fit: %d of %d bytes used",
			ErrFull, r.st, size, r.class, total, limit)
		r.refused = true
		return nil
	}
	// Evict until the record fits under MaxBytes, or telemetry is gone
	// (then a Critical record uses the reserve).
	if need := total + size - s.cfg.maxBytes; need > 0 {
		n, freed, err := evictTelemetry(tx, need)
		if err != nil {
			return err
		}
		tel.depth -= int64(n)
		tel.bytes -= freed
		cs.set(Telemetry, tel)
		r.evicted = uint64(n)
	}

	b, err := recordBucket(tx, r.st)
	if err != nil {
		return err
	}
	// Keys only ever grow: fill pages completely instead of splitting them
	// in half, which halves the file for the same backlog.
	b.FillPercent = 1.0
	added := s.cfg.now().UTC()
	v := encodeRecord(added, payload)
	if err := b.Put(seqKey(seq), v); err != nil {
		return err
	}
	c = cs.get(r.st) // after eviction, which may have changed this stream
	c.last = seq
	c.depth++
	c.bytes += size
	cs.set(r.st, c)
	if r.respond != nil {
		if err := s.respondTx(tx, cs, r.respond, payload); err != nil {
			return err
		}
	}
	r.rec = Record{
		Stream:  r.st,
		Seq:     seq,
		Payload: v[headerLen:],
		Added:   time.Unix(0, added.UnixNano()).UTC(),
	}
	return nil
}

// callBuild calls r.build, turning a panic into r.panicked so that the
// group goes on and the panic is raised in r's own goroutine.
func (s *Store) callBuild(r *appendReq, seq uint64) (payload []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			r.panicked, r.panicVal = true, p
		}
	}()
	return r.build(seq)
}

// evictTelemetry deletes the oldest telemetry records until at least need
// bytes are freed or none is left. It returns how many records and bytes it
// freed.
func evictTelemetry(tx *bbolt.Tx, need int64) (n int, freed int64, err error) {
	b, err := recordBucket(tx, Telemetry)
	if err != nil {
		return 0, 0, err
	}
	// Collect the keys first: deleting while a cursor iterates skips keys.
	var keys [][]byte
	c := b.Cursor()
	for k, v := c.First(); k != nil && freed < need; k, v = c.Next() {
		if len(v) < headerLen {
			return 0, 0, fmt.Errorf("telemetry record %x: %w", k, errShortRecord)
		}
		keys = append(keys, append([]byte(nil), k...))
		freed += accounted(len(v) - headerLen)
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return 0, 0, err
		}
	}
	return len(keys), freed, nil
}

// AppendBatch stores records of stream st, in the order of payloads, in
// one fsynced transaction: one commit for the whole batch, as for the
// heartbeats the agent keeps while offline. Each payload is placed and
// accounted as by Append with class c; a payload that does not fit is
// refused with ErrFull and the batch ends there: the records before it are
// stored and returned with the error.
func (s *Store) AppendBatch(st Stream, c Class, payloads [][]byte) ([]Record, error) {
	if len(payloads) == 0 {
		return nil, nil
	}
	var out []Record
	var refused error
	snap := s.pending.snapshot()
	err := s.withDB("append batch", func(db *bbolt.DB) error {
		out, refused = out[:0], nil
		return db.Update(func(tx *bbolt.Tx) error {
			cs, err := loadCounters(tx)
			if err != nil {
				return err
			}
			if err := applyDeletes(tx, &cs, snap); err != nil {
				return err
			}
			for _, p := range payloads {
				r := &appendReq{st: st, class: c, build: func(uint64) ([]byte, error) { return p, nil }}
				if err := s.appendOne(tx, &cs, r); err != nil {
					return err
				}
				if r.err != nil {
					refused = r.err
					if r.refused {
						s.refused.Add(1)
					}
					break
				}
				s.evicted.Add(r.evicted)
				out = append(out, r.rec)
			}
			if len(out) == 0 {
				return errNothing
			}
			return cs.save(tx)
		})
	})
	switch {
	case err == errNothing:
		return nil, refused
	case err != nil:
		return nil, fmt.Errorf("store: append batch %s: %w", st, err)
	}
	s.pending.done(snap)
	s.signal()
	return out, refused
}
