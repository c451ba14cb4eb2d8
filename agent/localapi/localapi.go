// Package localapi is the agent's local HTTP API (DESIGN §3.6): paths under /api/v0/ on a unix
// socket that only root and the station group can open. The `station` CLI is a thin client of it.
//
// The package knows HTTP and the contract's bodies; what the answers say comes from a Backend,
// which the agent implements. Errors are contract.APIError bodies with a fitting status.
package localapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"station.dev/agent/agent/contract"
)

// Backend is what the API serves: the agent, as the API sees it.
type Backend interface {
	// Status is the full status, link and indicator included.
	Status() contract.Status
	// Queue summarises the store.
	Queue() contract.QueueStatus
	// Recent returns up to n of the most recent records (JSON), oldest first.
	Recent(n int) [][]byte
	// Follow returns a channel of the records written from now on and a function that ends the
	// subscription. The channel is closed when the follower falls behind or stop is called.
	Follow() (records <-chan []byte, stop func())
	// Submit records typed records from other station software, checked by the handler (key,
	// type, data), all in one transaction or none: one result per request, in order. A record
	// whose key was seen before answers the record it made then, marked Repeat. An *Error with
	// Record set names the request that made it fail.
	Submit(src contract.Source, reqs []contract.SubmitRequest) ([]contract.SubmitResult, error)
	// EventsAfter returns up to max records of the events stream with a seq above after, in seq
	// order: those still on the station. A seq missing in between is no longer available.
	EventsAfter(after uint64, max int) ([]Event, error)
	// SelfTest checks every component.
	SelfTest() contract.SelfTest
	// Tap presents virtual cards to the emulated reader and calls emit with each result once the
	// presentation's record is durable (or refused). An error before the first emit refuses the
	// whole request.
	Tap(ctx context.Context, req contract.TapRequest, emit func(contract.TapResult) error) error
	// SimDoor sets the emulated door switch.
	SimDoor(open bool) error
	// SimEnv sets the emulated cabinet sensor.
	SimEnv(tempC float64, humidity *float64) error
}

// Error is an error with the HTTP status the API answers it with.
type Error struct {
	Status  int
	Message string
	// For submissions (records.go): the contract.Code*, the path of the offending value, the
	// wait answered as Retry-After, and the 1-based record of a batch the error is about.
	Code       string
	Field      string
	RetryAfter time.Duration
	Record     int
}

func (e *Error) Error() string { return e.Message }

// Errorf returns an *Error with the given status.
func Errorf(status int, format string, args ...any) *Error {
	return &Error{Status: status, Message: fmt.Sprintf(format, args...)}
}

// Statuses of a Backend's errors, by meaning.
const (
	StatusBadRequest = http.StatusBadRequest          // the request is malformed
	StatusConflict   = http.StatusConflict            // not possible in this agent (e.g. sim only)
	StatusFull       = http.StatusInsufficientStorage // the store has no room: not recorded
)

// Request body limits.
const (
	maxTapBody = 1 << 20  // a tap request may carry a scripted card profile
	maxSimBody = 64 << 10 // sim requests are tiny
)

// NewHandler returns the API's HTTP handler over b. A nil o means default Options.
func NewHandler(b Backend, o *Options) http.Handler {
	h := &handler{b: b, limit: newLimiter(o)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+contract.PathStatus, h.status)
	mux.HandleFunc("GET "+contract.PathQueue, h.queue)
	mux.HandleFunc("GET "+contract.PathEvents, h.events)
	mux.HandleFunc("POST "+contract.PathRecords, h.submit)
	mux.HandleFunc("POST "+contract.PathRecordsBatch, h.batch)
	mux.HandleFunc("POST "+contract.PathTap, h.tap)
	mux.HandleFunc("GET "+contract.PathSelfTest, h.selftest)
	mux.HandleFunc("POST "+contract.PathSimDoor, h.simDoor)
	mux.HandleFunc("POST "+contract.PathSimEnv, h.simEnv)
	return mux
}

type handler struct {
	b     Backend
	limit *limiter
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// writeError answers err: its own status for an *Error, 500 otherwise.
func writeError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	var e *Error
	body := contract.APIError{Error: err.Error()}
	if errors.As(err, &e) {
		code = e.Status
		body.Code, body.Field = e.Code, e.Field
		if e.RetryAfter > 0 {
			w.Header().Set(contract.HeaderRetryAfter, strconv.Itoa(retrySeconds(e.RetryAfter)))
		}
	}
	writeJSON(w, code, body)
}

func (h *handler) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.b.Status())
}

func (h *handler) queue(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.b.Queue())
}

func (h *handler) selftest(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.b.SelfTest())
}

// events writes recent records as JSON lines; with follow=1 it keeps the response open and
// streams new records as they are written. With after= or type= it is the tap feed (feed.go).
func (h *handler) events(w http.ResponseWriter, r *http.Request) {
	if q := r.URL.Query(); q.Has("after") || q.Has("type") {
		h.feed(w, r)
		return
	}
	n, _ := strconv.Atoi(r.URL.Query().Get("n"))
	if n <= 0 {
		n = 20
	}
	follow := r.URL.Query().Get("follow") == "1"
	var ch <-chan []byte
	if follow {
		var stop func()
		ch, stop = h.b.Follow()
		defer stop()
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	flusher, _ := w.(http.Flusher)
	for _, b := range h.b.Recent(n) {
		_, _ = w.Write(append(b[:len(b):len(b)], '\n'))
	}
	if !follow {
		return
	}
	if flusher != nil {
		flusher.Flush()
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case b, ok := <-ch:
			if !ok {
				return // fell behind; the client reconnects if it wants more
			}
			if _, err := w.Write(append(b[:len(b):len(b)], '\n')); err != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
	}
}

// tap streams one TapResult per presentation as JSON lines, each once its record is durable.
func (h *handler) tap(w http.ResponseWriter, r *http.Request) {
	var req contract.TapRequest
	if err := decodeBody(r, maxTapBody, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Count == 0 {
		req.Count = 1
	}
	if req.Count < 0 || req.Count > contract.MaxTapCount {
		writeError(w, Errorf(StatusBadRequest, "count must be 1 to %d", contract.MaxTapCount))
		return
	}
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	started := false
	err := h.b.Tap(r.Context(), req, func(res contract.TapResult) error {
		if !started {
			started = true
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.WriteHeader(http.StatusOK)
		}
		if err := enc.Encode(res); err != nil {
			return err
		}
		if flusher != nil {
			flusher.Flush()
		}
		return r.Context().Err()
	})
	if err != nil && !started {
		writeError(w, err)
	}
}

func (h *handler) simDoor(w http.ResponseWriter, r *http.Request) {
	var req contract.SimDoorRequest
	if err := decodeBody(r, maxSimBody, &req); err != nil {
		writeError(w, err)
		return
	}
	if err := h.b.SimDoor(req.Open); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

func (h *handler) simEnv(w http.ResponseWriter, r *http.Request) {
	var req contract.SimEnvRequest
	if err := decodeBody(r, maxSimBody, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.TempC < -40 || req.TempC > 85 || req.Humidity != nil && (*req.Humidity < 0 || *req.Humidity > 100) {
		writeError(w, Errorf(StatusBadRequest, "out of the sensor's range: -40 to 85 °C, 0 to 100 %% humidity"))
		return
	}
	if err := h.b.SimEnv(req.TempC, req.Humidity); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

// decodeBody reads a JSON request body of at most limit bytes into v; unknown fields are errors.
func decodeBody(r *http.Request, limit int64, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Errorf(StatusBadRequest, "bad request body: %v", err)
	}
	return nil
}
