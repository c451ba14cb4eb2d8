package localapi

import (
	"encoding/json"
	"net/http"
	"strconv"

	"station.dev/agent/agent/contract"
)

// Event is a record of the events stream as the Backend hands it to the feed.
type Event struct {
	Seq  uint64
	JSON []byte // the record (contract.Record)
}

// feedPage bounds the records read from the Backend at once.
const feedPage = 256

// feed serves GET /api/v0/events with after= or type=: the records after a known seq, filtered
// by type, as FeedEvent lines showing only what a kiosk screen may see; with follow=1 it goes on
// with new records. Records already gone from the station (the broker has them) are announced
// by a Missed line in their place, so a client that resumes knows what it cannot have.
func (h *handler) feed(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	types := map[string]bool{}
	for _, t := range q["type"] {
		types[t] = true
	}
	follow := q.Get("follow") == "1"
	// The last seq handed out, to start from now without after= and to tell a sequence that
	// restarted. Unknown (the store's counters could not be read): neither.
	events, known := h.b.Queue().Streams[eventsStream]
	last := events.LastSeq
	after := last // without after=: from now on
	if s := q.Get("after"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			writeError(w, Errorf(StatusBadRequest, "after=%q: want the seq of the last record you have, or 0", s))
			return
		}
		after = v
	}
	var ch <-chan []byte
	stop := func() {}
	defer func() { stop() }()
	if follow {
		ch, stop = h.b.Follow() // before reading, so that nothing written meanwhile is missed
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	if known && after > last {
		// The store was rebuilt and the sequence began again at 1: everything is new.
		if enc.Encode(contract.FeedEvent{Missed: &contract.Missed{From: last + 1, To: after, Restarted: true,
			Detail: "the station's sequence restarted (its store was rebuilt): records follow from seq 1"}}) != nil {
			return
		}
		after = 0
	}
	next := after + 1 // the next seq the client has not been told about
	pump := func() bool {
		for {
			evs, err := h.b.EventsAfter(next-1, feedPage)
			if err != nil {
				return false // the client asks again from its last seq
			}
			for _, e := range evs {
				if e.Seq < next {
					continue
				}
				if e.Seq > next {
					if enc.Encode(contract.FeedEvent{Missed: &contract.Missed{From: next, To: e.Seq - 1,
						Detail: "no longer on the station (delivered to the platform): some may have matched"}}) != nil {
						return false
					}
				}
				next = e.Seq + 1
				if fe, ok := feedEvent(e.JSON, types); ok {
					if enc.Encode(fe) != nil {
						return false
					}
				}
			}
			if flusher != nil {
				flusher.Flush()
			}
			if len(evs) < feedPage {
				return true
			}
		}
	}
	if !pump() || !follow {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case _, ok := <-ch:
			if !ok { // fell behind: subscribe again and catch up from the store
				stop()
				ch, stop = h.b.Follow()
			}
			if !pump() {
				return
			}
		}
	}
}

// eventsStream is the name of the events stream in QueueStatus.Streams.
const eventsStream = "events"

// feedEvent projects a record on what the feed shows, if its type is wanted.
func feedEvent(b []byte, types map[string]bool) (contract.FeedEvent, bool) {
	var rec contract.Record
	if err := json.Unmarshal(b, &rec); err != nil {
		return contract.FeedEvent{}, false
	}
	if len(types) > 0 && !types[rec.Type] {
		return contract.FeedEvent{}, false
	}
	fe := contract.FeedEvent{Seq: rec.Seq, ID: rec.ID, Type: rec.Type, TS: rec.TS}
	if rec.Card != nil {
		fe.Card = &contract.FeedCard{Token: rec.Card.Token, Masked: rec.Card.Masked, Scheme: rec.Card.Scheme}
	}
	return fe, true
}
