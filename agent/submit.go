package agent

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"station.dev/agent/agent/contract"
	"station.dev/agent/agent/localapi"
	"station.dev/agent/store"
)

// Records from the kiosk's software (docs/kiosk.md). The handler has checked each request (key,
// type, data, no card number); here they are stored under their keys in one transaction.

// Retry-After answers of refused submissions.
const (
	retryFullOnline  = 10 * time.Second // the backlog drains while the broker is reachable
	retryFullOffline = 60 * time.Second
	retryUnavailable = 5 * time.Second // the store is closing or being reopened
)

// faultSubmitCommitted is the fault point (fault.go) where submitted records are committed and
// fsynced and the client is not answered yet.
const faultSubmitCommitted = "submit-committed"

// apiOptions are the local API's options from the configuration.
func (a *Agent) apiOptions() *localapi.Options {
	return &localapi.Options{SubmitRate: a.cfg.LocalAPI.SubmitRate, SubmitBurst: a.cfg.LocalAPI.SubmitBurst}
}

// Submit records typed records from other station software, all in one transaction or none,
// each under its idempotency key: a key seen before answers the record it made then.
func (a *Agent) Submit(src contract.Source, reqs []contract.SubmitRequest) ([]contract.SubmitResult, error) {
	items := make([]store.Keyed, len(reqs))
	payloads := make([][]byte, len(reqs))
	for i, req := range reqs {
		rec := a.newRecord(req.Type)
		rec.Data = req.Data
		rec.Source = &src
		rec.Key = req.Key
		items[i] = store.Keyed{Key: req.Key, Digest: submitDigest(req), Ref: []byte(rec.ID),
			Build: func(seq uint64) ([]byte, error) {
				rr := *rec // build may run more than once: keep it free of side effects on rec
				rr.Seq = seq
				b, err := json.Marshal(&rr)
				payloads[i] = b
				return b, err
			}}
	}
	res, err := a.store.AppendKeyed(store.Events, store.Normal, items)
	if err != nil {
		return nil, a.submitError(err)
	}
	out := make([]contract.SubmitResult, len(reqs))
	stored := false
	for i, r := range res {
		out[i] = contract.SubmitResult{OK: true, Key: reqs[i].Key, ID: string(r.Entry.Ref), Seq: r.Entry.Seq,
			Type: reqs[i].Type, Repeat: r.Repeat}
		if !r.Repeat {
			a.recent.add(payloads[i])
			stored = true
		}
	}
	if stored {
		a.roomAgain()
		a.log.Debug("records submitted", "count", len(reqs), "uid", src.UID, "unit", src.Unit)
	}
	faultPoint(faultSubmitCommitted) // a test build may die here: committed, not yet answered
	return out, nil
}

// submitDigest identifies what a request asks to record, whatever program sends it and however
// its JSON is spaced: the same key with the same digest is a retry. Maps marshal with sorted
// keys and numbers keep their text, so equal data gives equal bytes.
func submitDigest(req contract.SubmitRequest) []byte {
	b, _ := json.Marshal(struct {
		Type string         `json:"type"`
		Data map[string]any `json:"data"`
	}{req.Type, req.Data})
	d := sha256.Sum256(b)
	return d[:]
}

// submitError turns a store error into the API's answer.
func (a *Agent) submitError(err error) error {
	var ie *store.ItemError
	rec := 0
	if errors.As(err, &ie) {
		rec = ie.Index + 1
	}
	switch {
	case errors.Is(err, store.ErrKeyConflict):
		return &localapi.Error{Status: http.StatusConflict, Code: contract.CodeKeyConflict, Field: "key", Record: rec,
			Message: "this key was used for a different record: use a new key for a new transaction"}
	case noRoom(err):
		a.storeFull(err)
		wait := retryFullOffline
		if a.link.Stats().Connected {
			wait = retryFullOnline
		}
		return &localapi.Error{Status: localapi.StatusFull, Code: contract.CodeStoreFull, Record: rec, RetryAfter: wait,
			Message: refusal(err) + ": retry later with the same keys"}
	case errors.Is(err, store.ErrTooLarge):
		return &localapi.Error{Status: http.StatusRequestEntityTooLarge, Code: contract.CodeTooLarge, Record: rec,
			Message: "record too large to store: make it smaller"}
	case errors.Is(err, store.ErrClosed), errors.Is(err, store.ErrLocked):
		return &localapi.Error{Status: http.StatusServiceUnavailable, Code: contract.CodeStoreBusy, RetryAfter: retryUnavailable,
			Message: "the station's store is not available (restarting or recovering): retry later with the same keys"}
	}
	a.log.Error("recording submitted records", "err", err)
	return &localapi.Error{Status: http.StatusInternalServerError, Code: contract.CodeNotRecorded, Record: rec,
		Message: fmt.Sprintf("not recorded: %v: retry with the same keys", err)}
}

// EventsAfter returns up to max records of the events stream with a seq above after, in seq
// order: those still in the store (not yet acknowledged by the broker) and the recent ones kept
// in memory, which may have left the store already.
func (a *Agent) EventsAfter(after uint64, max int) ([]localapi.Event, error) {
	recs, err := a.store.Read(store.Events, after, max)
	if err != nil {
		return nil, err
	}
	evs := make([]localapi.Event, 0, len(recs))
	for _, r := range recs {
		evs = append(evs, localapi.Event{Seq: r.Seq, JSON: r.Payload})
	}
	for _, r := range a.recent.after(after) {
		evs = append(evs, localapi.Event{Seq: r.seq, JSON: r.b})
	}
	slices.SortStableFunc(evs, func(x, y localapi.Event) int {
		switch {
		case x.Seq < y.Seq:
			return -1
		case x.Seq > y.Seq:
			return 1
		}
		return 0
	})
	evs = slices.CompactFunc(evs, func(x, y localapi.Event) bool { return x.Seq == y.Seq })
	if len(evs) > max {
		evs = evs[:max]
	}
	return evs, nil
}
