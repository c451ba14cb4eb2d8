package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"station.dev/agent/agent/contract"
	"station.dev/agent/drivers/cardreader"
	"station.dev/agent/drivers/indicator"
	"station.dev/agent/internal/backoff"
	"station.dev/agent/store"
)

// newRecord fills the fields every record carries. Seq is assigned by the store.
func (a *Agent) newRecord(typ string) *contract.Record {
	return &contract.Record{
		ID:          newID(),
		Type:        typ,
		TS:          rfc3339(a.clk.Now()),
		ClockSynced: a.synced(),
		BootID:      a.bootID,
		UptimeMS:    a.uptime().Milliseconds(),
		Sim:         a.cfg.Sim,
	}
}

// uptime is the time since the agent was made, on the monotonic clock.
func (a *Agent) uptime() time.Duration { return a.clk.Monotonic() - a.mono0 }

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
		a.storeFailed(err)
		return nil, err
	}
	var out contract.Record
	if err := json.Unmarshal(payload, &out); err != nil {
		return nil, err
	}
	a.recent.add(payload)
	if class == store.Normal {
		a.roomAgain()
	}
	return &out, nil
}

// storeFailed ends Run when err says the store's file cannot be used any more (a failing disk:
// store.ErrUnavailable). The store has left the file as it is; the process ends with the error
// and systemd starts it again after RestartSec, which opens the file afresh (or fails at open with
// the same clear error), rather than the agent answering every tap "not recorded" for ever.
func (a *Agent) storeFailed(err error) {
	if errors.Is(err, store.ErrUnavailable) {
		a.log.Error("the store is unavailable: ending, to be restarted", "err", err)
		a.stop(fmt.Errorf("agent: the store is unavailable (is the disk failing?): %w", err))
	}
}

// fullState is the store-full episode: why the store refuses card records, and an alarm the full
// disk could not take yet.
type fullState struct {
	mu      sync.Mutex
	reason  string           // "" or contract.ErrStoreFull / contract.ErrDiskFull
	pending *contract.Record // a store.full alarm waiting for room
}

func (f *fullState) get() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reason
}

// roomAgain ends a full episode once a card record was accepted again, and writes the alarm the
// full disk could not take.
func (a *Agent) roomAgain() {
	a.full.mu.Lock()
	wasFull, pending := a.full.reason != "", a.full.pending
	a.full.reason, a.full.pending = "", nil
	a.full.mu.Unlock()
	if pending != nil {
		pending.Data = map[string]any{"over": rfc3339(a.clk.Now())}
		if _, err := a.appendRecord(pending, store.Critical); err != nil {
			a.log.Error("writing store.full alarm", "err", err)
		}
	}
	if wasFull {
		a.log.Info("store has room again: card records are accepted")
		a.link.UpdateStatus()
	}
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
	reason, detail := contract.ErrStoreFull, "card records refused until the backlog drains"
	if !errors.Is(cause, store.ErrFull) {
		reason, detail = contract.ErrDiskFull, "the disk holding the store is full: card records refused"
	}
	a.full.mu.Lock()
	first := a.full.reason == ""
	a.full.reason = reason
	a.full.mu.Unlock()
	if !first {
		return
	}
	a.log.Error("store cannot take records: card records are refused", "reason", reason, "err", cause,
		"max_bytes", int64(a.cfg.Store.MaxBytes))
	r := a.newRecord(contract.TypeStoreFull)
	r.Error = &contract.RecordError{Code: reason, Detail: detail}
	if _, err := a.appendRecord(r, store.Critical); err != nil {
		a.log.Error("writing store.full alarm; it is sent once the store has room", "err", err)
		a.full.mu.Lock()
		a.full.pending = r
		a.full.mu.Unlock()
	}
	a.link.UpdateStatus()
}

// NewBootID returns a boot id for Options.BootID.
func NewBootID() string { return newID() }

// RecoveryAlarm returns the builder of the store.recovered alarm, for store.Options.RecoveryAlarm.
// The store writes the alarm in the transaction that completes a store salvaged from a broken file
// (at open, or after corruption met at run time), so no failure between the salvage and the
// agent's start can lose it. The store opens before the agent exists: the alarm carries bootID
// (give the agent the same in Options.BootID), its uptime counts from start, and clock_synced is
// false (nothing has asked the kernel yet).
func RecoveryAlarm(bootID string, start time.Time) func(store.Recovery, uint64) ([]byte, error) {
	return func(rec store.Recovery, seq uint64) ([]byte, error) {
		r := contract.Record{
			ID: newID(), Seq: seq, Type: contract.TypeStoreRecovered, TS: rfc3339(time.Now()),
			BootID: bootID, UptimeMS: time.Since(start).Milliseconds(),
			Error: &contract.RecordError{Code: contract.ErrStoreBroken, Detail: rec.Reason},
			Data: map[string]any{"moved_to": rec.MovedTo, "salvaged": rec.Salvaged, "lost": rec.Lost,
				"seq_restarted": rec.SeqRestarted},
		}
		return json.Marshal(&r)
	}
}

// writeBootRecords writes station.boot, and store.recovered when the store was rebuilt without
// one (a store opened without RecoveryAlarm writes none itself).
func (a *Agent) writeBootRecords() {
	if rec := a.store.Recovered(); rec != nil && rec.AlarmSeq == 0 {
		r := a.newRecord(contract.TypeStoreRecovered)
		r.Error = &contract.RecordError{Code: contract.ErrStoreBroken, Detail: rec.Reason}
		r.Data = map[string]any{"moved_to": rec.MovedTo, "salvaged": rec.Salvaged, "lost": rec.Lost,
			"seq_restarted": rec.SeqRestarted}
		if _, err := a.appendRecord(r, store.Critical); err != nil {
			a.log.Error("writing store.recovered alarm", "err", err)
		}
	}
	r := a.newRecord(contract.TypeBoot)
	r.Data = map[string]any{"version": a.opts.Version, "sim": a.cfg.Sim}
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
		a.indicate(indicator.Refused)
		a.storeFull(err)
		return contract.TapResult{Error: refusal(err)}
	case err != nil:
		a.indicate(indicator.Error)
		a.log.Error("recording card presentation", "err", err)
		return contract.TapResult{Error: "not recorded: " + err.Error()}
	}
	switch {
	case p.Card == nil:
		a.indicate(indicator.Error)
	case a.link.Stats().Connected:
		a.indicate(indicator.Recorded)
	default:
		a.indicate(indicator.RecordedOffline)
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

// Reader retries: at most readerBackoffMax between attempts, so every attempt is progress for the
// watchdog (which allows 30s).
const (
	readerBackoffMin = 100 * time.Millisecond
	readerBackoffMax = 10 * time.Second
)

// readerLoop opens the card reader and reads presentations until ctx ends. A reader that fails
// to open, or reports itself down after an error, is (re)opened with backoff; a reader error
// never stops the agent.
func (a *Agent) readerLoop(ctx context.Context) error {
	if a.hw.Reader == nil {
		<-ctx.Done()
		return nil
	}
	beat := a.heartbeat("reader")
	bo := backoff.Backoff{Min: readerBackoffMin, Max: readerBackoffMax}
	for ctx.Err() == nil {
		beat()
		r := a.reader.get()
		if r == nil {
			var err error
			if r, err = a.hw.Reader(beat); err != nil {
				a.reader.down(err)
				d := bo.Next()
				a.log.Warn("card reader not available; retrying", "err", err, "retry_in", d)
				a.sleep(ctx, d)
				continue
			}
			a.reader.set(r)
			a.log.Info("card reader open", "firmware", r.Health().Firmware)
		}
		p, err := r.Next(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			d := bo.Next()
			a.log.Warn("card reader", "err", err, "retry_in", d)
			if r.Health().State == contract.HealthDown {
				a.reader.down(err) // opened again on the next turn
			}
			a.sleep(ctx, d)
			continue
		}
		bo.Reset()
		res := a.handlePresentation(p)
		if a.sim != nil {
			a.sim.done(res)
		}
	}
	return nil
}
