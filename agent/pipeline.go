package agent

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"syscall"
	"time"

	"station.dev/agent/agent/contract"
	"station.dev/agent/drivers/cardreader"
	"station.dev/agent/mqtt"
	"station.dev/agent/store"
)

// outbox adapts the store to the link's Outbox interface.
type outbox struct{ s *store.Store }

func (o outbox) Read(stream string, after uint64, max int) ([]mqtt.Item, error) {
	recs, err := o.s.Read(store.Stream(stream), after, max)
	if err != nil {
		return nil, err
	}
	items := make([]mqtt.Item, len(recs))
	for i, r := range recs {
		items[i] = mqtt.Item{Seq: r.Seq, Payload: r.Payload}
	}
	return items, nil
}

func (o outbox) Delete(stream string, seqs ...uint64) error {
	return o.s.Delete(store.Stream(stream), seqs...)
}

func (o outbox) Changed() <-chan struct{} { return o.s.Changed() }

// newRecord fills the fields every record carries. Seq is assigned by the store.
func (a *Agent) newRecord(typ string) *contract.Record {
	return &contract.Record{
		ID:          newID(),
		Type:        typ,
		TS:          rfc3339(a.now()),
		ClockSynced: a.synced(),
		BootID:      a.bootID,
		UptimeMS:    time.Since(a.start).Milliseconds(),
	}
}

// appendRecord makes r durable on the events stream and returns it with its seq. It returns only
// once the record is committed and fsynced.
func (a *Agent) appendRecord(r *contract.Record, class store.Class) (*contract.Record, error) {
	var payload []byte
	_, err := a.store.Append(store.Events, class, func(seq uint64) ([]byte, error) {
		rr := *r // build may run more than once: keep it free of side effects on r
		rr.Seq = seq
		b, err := json.Marshal(&rr)
		payload = b
		return b, err
	})
	if err != nil {
		return nil, err
	}
	var out contract.Record
	if err := json.Unmarshal(payload, &out); err != nil {
		return nil, err
	}
	a.recent.add(payload)
	if class == store.Normal {
		a.fullMu.Lock()
		wasFull, pending := a.full != "", a.fullAlarmPending
		a.full, a.fullAlarmPending = "", nil
		a.fullMu.Unlock()
		if pending != nil {
			// The disk had no room even for the alarm: the fleet learns of it now.
			pending.Data = map[string]any{"over": rfc3339(a.now())}
			if _, err := a.appendRecord(pending, store.Critical); err != nil {
				a.log.Error("writing store.full alarm", "err", err)
			}
		}
		if wasFull {
			a.log.Info("store has room again: card records are accepted")
			a.link.UpdateStatus()
		}
	}
	return &out, nil
}

// refusal is what the person's tap (or a submitter) is told when the store has no room.
func refusal(err error) string {
	if errors.Is(err, store.ErrFull) {
		return "refused: the station's store is full"
	}
	return "refused: no space left on the station's disk"
}

// noRoom reports whether err means the store cannot take a record: at its cap, or out of disk.
func noRoom(err error) bool {
	return errors.Is(err, store.ErrFull) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// storeFull handles a refused record: one store.full alarm per full episode and a status update.
// When the disk itself is full the alarm cannot be stored either: it is written as soon as a record
// fits again, and meanwhile the retained status (sent over MQTT, not through the store) says so.
func (a *Agent) storeFull(cause error) {
	reason, detail := "store_full", "card records refused until the backlog drains"
	if !errors.Is(cause, store.ErrFull) {
		reason, detail = "disk_full", "the disk holding the store is full: card records refused"
	}
	a.fullMu.Lock()
	first := a.full == ""
	a.full = reason
	a.fullMu.Unlock()
	if !first {
		return
	}
	a.log.Error("store cannot take records: card records are refused", "reason", reason, "err", cause,
		"max_bytes", int64(a.cfg.Store.MaxBytes))
	r := a.newRecord(contract.TypeStoreFull)
	r.Error = &contract.RecordError{Code: reason, Detail: detail}
	if _, err := a.appendRecord(r, store.Critical); err != nil {
		a.log.Error("writing store.full alarm; it is sent once the store has room", "err", err)
		a.fullMu.Lock()
		a.fullAlarmPending = r
		a.fullMu.Unlock()
	}
	a.link.UpdateStatus()
}

// writeBootRecords writes station.boot, and store.recovered when the store was rebuilt.
func (a *Agent) writeBootRecords() {
	if rec := a.store.Recovered(); rec != nil {
		r := a.newRecord(contract.TypeStoreRecovered)
		r.Error = &contract.RecordError{Code: "store_broken", Detail: rec.Reason}
		r.Data = map[string]any{"moved_to": rec.MovedTo, "seq_restarted": true}
		if _, err := a.appendRecord(r, store.Critical); err != nil {
			a.log.Error("writing store.recovered alarm", "err", err)
		}
	}
	r := a.newRecord(contract.TypeBoot)
	r.Data = map[string]any{"version": a.version, "sim": a.cfg.Sim}
	if _, err := a.appendRecord(r, store.Critical); err != nil {
		a.log.Error("writing station.boot record", "err", err)
	}
}

// handlePresentation turns one presentation into a durable record, then tells the person.
func (a *Agent) handlePresentation(p cardreader.Presentation) contract.TapResult {
	var r *contract.Record
	if p.Card != nil {
		r = a.newRecord(contract.TypeCardTap)
		r.Card = cardOf(p.Card)
	} else {
		r = a.newRecord(contract.TypeCardError)
		r.Error = &contract.RecordError{Code: p.Error, Detail: p.Detail}
	}
	saved, err := a.appendRecord(r, store.Normal)
	switch {
	case noRoom(err):
		a.indicate(PatternRefused)
		a.storeFull(err)
		return contract.TapResult{Error: refusal(err)}
	case err != nil:
		a.indicate(PatternError)
		a.log.Error("recording card presentation", "err", err)
		return contract.TapResult{Error: "not recorded: " + err.Error()}
	}
	switch {
	case p.Card == nil:
		a.indicate(PatternError)
	case a.link.Stats().Connected:
		a.indicate(PatternRecorded)
	default:
		a.indicate(PatternRecordedOffline)
	}
	a.log.Debug("recorded", "type", saved.Type, "id", saved.ID, "seq", saved.Seq)
	return contract.TapResult{OK: p.Card != nil, ID: saved.ID, Seq: saved.Seq, Type: saved.Type,
		Error: errorText(p)}
}

func errorText(p cardreader.Presentation) string {
	if p.Card != nil {
		return ""
	}
	if p.Detail != "" {
		return "card not read: " + p.Error + ": " + p.Detail
	}
	return "card not read: " + p.Error
}

func (a *Agent) indicate(pattern string) {
	if a.ind != nil {
		a.ind.Show(pattern)
	}
}

// readerLoop reads presentations until ctx ends. A reader error is logged and retried with
// backoff; it never stops the agent.
func (a *Agent) readerLoop(ctx context.Context) error {
	if a.reader == nil {
		<-ctx.Done()
		return nil
	}
	// At most 10s between attempts: every attempt is progress for the watchdog, which allows 30s.
	backoff := newBackoff(100*time.Millisecond, 10*time.Second)
	for {
		a.readerBeat()
		p, err := a.reader.Next(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			d := backoff.next()
			a.log.Warn("card reader", "err", err, "retry_in", d)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(d):
			}
			continue
		}
		backoff.reset()
		res := a.handlePresentation(p)
		if a.sim != nil {
			a.sim.done(res)
		}
	}
}

// recentRecords keeps the last records written, for `station events`, and feeds followers.
type recentRecords struct {
	mu        sync.Mutex
	ring      [][]byte
	next      int
	full      bool
	followers map[chan []byte]struct{}
}

func newRecentRecords(n int) *recentRecords {
	return &recentRecords{ring: make([][]byte, n), followers: map[chan []byte]struct{}{}}
}

func (r *recentRecords) add(b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ring[r.next] = b
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
