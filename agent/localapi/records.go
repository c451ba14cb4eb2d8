package localapi

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"station.dev/agent/agent/contract"
	"station.dev/agent/internal/pan"
)

// Submissions from the kiosk's software (docs/kiosk.md): every check that needs no store runs
// here, before the Backend sees the records. Bodies are never logged, and error messages never
// repeat a value of data.

// Defaults of Options.
const (
	DefaultSubmitRate  = 50  // records per second and client
	DefaultSubmitBurst = 200 // records a client may send at once: two full batches
)

// Options configure the handler. A nil *Options means all defaults.
type Options struct {
	// SubmitRate is the sustained rate of records (single or in batches) each client may submit,
	// per second; beyond it submissions are refused with 429 and Retry-After. A client is a uid
	// and systemd unit (or a uid alone, outside any unit). 0 means DefaultSubmitRate; negative
	// means no limit.
	SubmitRate float64
	// SubmitBurst is how many records a client may submit at once above the rate. 0 means
	// DefaultSubmitBurst; it is raised to MaxBatchRecords if lower, so a full batch can pass.
	SubmitBurst int
	// Now is the clock of the rate limit. nil means time.Now.
	Now func() time.Time
}

// submitError returns an *Error for a submission with its code, and the field it is about.
func submitError(status int, code, field, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Field: field, Message: fmt.Sprintf(format, args...)}
}

func (h *handler) submit(w http.ResponseWriter, r *http.Request) {
	src := sourceOf(r)
	body, err := readAtMost(r.Body, contract.MaxSubmitBytes)
	if err != nil {
		writeError(w, err)
		return
	}
	req, err := parseSubmit(body, r.Header.Get(contract.HeaderIdempotencyKey), true)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := h.limit.allow(src, 1); err != nil {
		writeError(w, err)
		return
	}
	res, err := h.b.Submit(src, []contract.SubmitRequest{req})
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res[0])
}

// batch takes up to MaxBatchRecords SubmitRequests as JSON lines, each with its key, and answers
// one SubmitResult line per record: all recorded (200), or none (the status of the first refusal,
// that record's error on its line, not_recorded on the others).
func (h *handler) batch(w http.ResponseWriter, r *http.Request) {
	src := sourceOf(r)
	if r.Header.Get(contract.HeaderIdempotencyKey) != "" {
		writeError(w, submitError(http.StatusBadRequest, contract.CodeKeyRequired, "",
			"a batch takes no Idempotency-Key header: give each record its own \"key\""))
		return
	}
	var reqs []contract.SubmitRequest
	var errs []*Error
	sc := bufio.NewScanner(r.Body)
	sc.Buffer(make([]byte, 0, 64<<10), contract.MaxSubmitBytes+1)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		if len(reqs) == contract.MaxBatchRecords {
			writeError(w, submitError(http.StatusRequestEntityTooLarge, contract.CodeTooLarge, "",
				"more than %d records in a batch: split it", contract.MaxBatchRecords))
			return
		}
		req, err := parseSubmit(line, "", false)
		var e *Error
		if err != nil && !errors.As(err, &e) {
			e = &Error{Status: http.StatusBadRequest, Code: contract.CodeBadRequest, Message: err.Error()}
		}
		reqs, errs = append(reqs, req), append(errs, e)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			writeError(w, submitError(http.StatusRequestEntityTooLarge, contract.CodeTooLarge, "",
				"record %d is over %d bytes: make it smaller", len(reqs)+1, contract.MaxSubmitBytes))
			return
		}
		writeError(w, Errorf(StatusBadRequest, "reading the batch: %v", err))
		return
	}
	if len(reqs) == 0 {
		writeError(w, submitError(http.StatusBadRequest, contract.CodeBadRequest, "",
			"empty batch: send one JSON record a line"))
		return
	}
	for i, e := range errs {
		if e != nil {
			writeBatch(w, reqs, nil, i, e)
			return
		}
	}
	if err := h.limit.allow(src, len(reqs)); err != nil {
		writeError(w, err)
		return
	}
	res, err := h.b.Submit(src, reqs)
	if err != nil {
		var e *Error
		if errors.As(err, &e) && e.Record > 0 && e.Record <= len(reqs) {
			writeBatch(w, reqs, nil, e.Record-1, e)
			return
		}
		writeError(w, err)
		return
	}
	writeBatch(w, reqs, res, -1, nil)
}

// writeBatch answers a batch: the results, or, when record bad (0-based) was refused with e,
// e's status, e on its line and not_recorded on the others.
func writeBatch(w http.ResponseWriter, reqs []contract.SubmitRequest, res []contract.SubmitResult, bad int, e *Error) {
	code := http.StatusOK
	if e != nil {
		code = e.Status
		if e.RetryAfter > 0 {
			w.Header().Set(contract.HeaderRetryAfter, strconv.Itoa(retrySeconds(e.RetryAfter)))
		}
		res = make([]contract.SubmitResult, len(reqs))
		for i, req := range reqs {
			res[i] = contract.SubmitResult{Key: req.Key, Code: contract.CodeNotRecorded,
				Error: fmt.Sprintf("not recorded: record %d of the batch was refused, and a batch is all or nothing", bad+1)}
		}
		res[bad] = contract.SubmitResult{Key: reqs[bad].Key, Code: e.Code, Field: e.Field, Error: e.Message}
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	for _, r := range res {
		if err := enc.Encode(r); err != nil {
			return
		}
	}
}

// readAtMost reads a body of at most limit bytes; a longer one is refused with 413.
func readAtMost(r io.Reader, limit int) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return nil, Errorf(StatusBadRequest, "reading the request: %v", err)
	}
	if len(b) > limit {
		return nil, submitError(http.StatusRequestEntityTooLarge, contract.CodeTooLarge, "",
			"record over %d bytes: make it smaller, or split it", limit)
	}
	return b, nil
}

// parseSubmit decodes and checks one submitted record: its key (headerKey, or the body's "key";
// required), its type (not the station's), the shape of data (an object, nested at most
// MaxSubmitDepth deep) and no card number anywhere. Numbers keep their digits (json.Number).
func parseSubmit(body []byte, headerKey string, single bool) (contract.SubmitRequest, error) {
	var raw struct {
		Key  string          `json:"key"`
		Type string          `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return contract.SubmitRequest{}, submitError(http.StatusBadRequest, contract.CodeBadRequest, "",
			"bad record: %v: send one JSON object with key, type and data", err)
	}
	if dec.More() {
		return contract.SubmitRequest{}, submitError(http.StatusBadRequest, contract.CodeBadRequest, "",
			"bad record: more than one JSON value: send one object (or use records:batch)")
	}
	req := contract.SubmitRequest{Key: raw.Key, Type: raw.Type}
	switch {
	case headerKey != "" && req.Key != "" && headerKey != req.Key:
		return req, submitError(http.StatusBadRequest, contract.CodeKeyRequired, "key",
			"the Idempotency-Key header and the body's key differ: send one of them")
	case headerKey != "":
		req.Key = headerKey
	}
	if req.Key == "" {
		where := `a "key" in the record`
		if single {
			where = `an Idempotency-Key header (or a "key" in the body)`
		}
		return req, submitError(http.StatusBadRequest, contract.CodeKeyRequired, "key",
			"no idempotency key: send %s, unique per transaction, and the same one when retrying", where)
	}
	if !contract.ValidKey(req.Key) {
		return req, submitError(http.StatusBadRequest, contract.CodeKeyRequired, "key",
			"bad idempotency key: 1 to %d printable ASCII characters", contract.MaxKeyLen)
	}
	if contract.ReservedType(req.Type) {
		return req, submitError(http.StatusUnprocessableEntity, contract.CodeReservedType, "type",
			"record type %q is the station's own: name yours kiosk.something", req.Type)
	}
	if !contract.ValidSubmittedType(req.Type) {
		return req, submitError(http.StatusBadRequest, contract.CodeBadRequest, "type",
			"bad record type %q: want dotted lower-case words like kiosk.receipt", req.Type)
	}
	if len(raw.Data) > 0 && !bytes.Equal(raw.Data, []byte("null")) {
		d := json.NewDecoder(bytes.NewReader(raw.Data))
		d.UseNumber()
		var v any
		if err := d.Decode(&v); err != nil {
			return req, submitError(http.StatusBadRequest, contract.CodeBadRequest, "data", "bad data: %v", err)
		}
		m, ok := v.(map[string]any)
		if !ok {
			return req, submitError(http.StatusUnprocessableEntity, contract.CodeInvalid, "data",
				"data must be a JSON object: put lists and values inside it")
		}
		if depth(m) > contract.MaxSubmitDepth {
			return req, submitError(http.StatusUnprocessableEntity, contract.CodeInvalid, "data",
				"data is nested more than %d levels deep: flatten it", contract.MaxSubmitDepth)
		}
		req.Data = m
	}
	// The key and type are sent on to the platform too: no card number there either.
	for _, f := range []struct{ path, v string }{{"key", req.Key}, {"type", req.Type}} {
		if pan.In(f.v) {
			return req, panError(f.path)
		}
	}
	if path, found := pan.Find(req.Data, "data"); found {
		return req, panError(path)
	}
	return req, nil
}

func panError(path string) *Error {
	return submitError(http.StatusUnprocessableEntity, contract.CodeCardNumber, path,
		"%s reads as a card number, which the station never stores: send the card token or the masked number", path)
}

// depth is the nesting depth of a decoded JSON value: 0 for a scalar, 1 for a flat object.
func depth(v any) int {
	d := 0
	switch v := v.(type) {
	case map[string]any:
		for _, e := range v {
			d = max(d, depth(e))
		}
	case []any:
		for _, e := range v {
			d = max(d, depth(e))
		}
	default:
		return 0
	}
	return d + 1
}

// limiter is a token bucket per client.
type limiter struct {
	rate  float64 // tokens per second; <= 0: no limit
	burst float64
	now   func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

// maxClients bounds the limiter's memory: past it, clients whose bucket has refilled are
// forgotten (they start again with a full bucket, which is what they have anyway).
const maxClients = 1024

func newLimiter(o *Options) *limiter {
	l := &limiter{rate: DefaultSubmitRate, burst: DefaultSubmitBurst, now: time.Now, buckets: map[string]*bucket{}}
	if o != nil {
		if o.SubmitRate != 0 {
			l.rate = o.SubmitRate
		}
		if o.SubmitBurst != 0 {
			l.burst = float64(o.SubmitBurst)
		}
		if o.Now != nil {
			l.now = o.Now
		}
	}
	l.burst = max(l.burst, contract.MaxBatchRecords)
	return l
}

// allow takes n tokens from src's bucket, or answers 429 with the wait until they are there.
func (l *limiter) allow(src contract.Source, n int) error {
	if l.rate <= 0 {
		return nil
	}
	client := strconv.Itoa(src.UID) + "/" + src.Unit
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[client]
	if b == nil {
		if len(l.buckets) >= maxClients {
			for k, o := range l.buckets {
				if o.tokens+now.Sub(o.at).Seconds()*l.rate >= l.burst {
					delete(l.buckets, k)
				}
			}
		}
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[client] = b
	}
	if el := now.Sub(b.at).Seconds(); el > 0 {
		b.tokens = min(l.burst, b.tokens+el*l.rate)
	}
	b.at = now
	if b.tokens >= float64(n) {
		b.tokens -= float64(n)
		return nil
	}
	wait := time.Duration((float64(n) - b.tokens) / l.rate * float64(time.Second))
	return &Error{Status: http.StatusTooManyRequests, Code: contract.CodeRateLimited, RetryAfter: wait,
		Message: fmt.Sprintf("over %g records per second for this program: retry after %d s with the same keys",
			l.rate, retrySeconds(wait))}
}

// retrySeconds rounds a wait up to whole seconds, at least 1.
func retrySeconds(d time.Duration) int {
	return max(1, int((d+time.Second-1)/time.Second))
}
