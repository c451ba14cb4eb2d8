package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"station.dev/agent/agent/config"
	"station.dev/agent/agent/contract"
	"station.dev/agent/agent/localapi"
	"station.dev/agent/store"
)

// Submissions by the kiosk's software and the tap feed (docs/kiosk.md), through the real socket
// and store. Card numbers here are synthetic and pass Luhn; none is a real card.
const (
	testPAN   = "6228480000000007" // synthetic, Luhn-valid; no real card
	testPAN13 = "4000000000006"
)

// apiClient talks to the harness's socket.
func apiClient(socket string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
}

type apiAnswer struct {
	status int
	header http.Header
	body   []byte
}

func (a apiAnswer) result(t *testing.T) contract.SubmitResult {
	t.Helper()
	var r contract.SubmitResult
	if err := json.Unmarshal(a.body, &r); err != nil {
		t.Fatalf("answer %d %q: %v", a.status, a.body, err)
	}
	return r
}

func (a apiAnswer) apiError(t *testing.T) contract.APIError {
	t.Helper()
	var e contract.APIError
	if err := json.Unmarshal(a.body, &e); err != nil {
		t.Fatalf("answer %d %q: %v", a.status, a.body, err)
	}
	return e
}

// lines decodes a JSON-lines answer.
func (a apiAnswer) lines(t *testing.T) []contract.SubmitResult {
	t.Helper()
	var out []contract.SubmitResult
	dec := json.NewDecoder(bytes.NewReader(a.body))
	for dec.More() {
		var r contract.SubmitResult
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("answer %d %q: %v", a.status, a.body, err)
		}
		out = append(out, r)
	}
	return out
}

func post(t *testing.T, c *http.Client, path, key string, body []byte) apiAnswer {
	t.Helper()
	req, err := http.NewRequest("POST", "http://station"+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set(contract.HeaderIdempotencyKey, key)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return apiAnswer{resp.StatusCode, resp.Header, b}
}

func mustJSONBytes(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// storedEvents reads every record still in the store.
func storedEvents(t *testing.T, h *harness) []contract.Record {
	t.Helper()
	recs, err := h.a.store.Read(store.Events, 0, 100000)
	if err != nil {
		t.Fatal(err)
	}
	var out []contract.Record
	for _, r := range recs {
		var rec contract.Record
		if err := json.Unmarshal(r.Payload, &rec); err != nil {
			t.Fatal(err)
		}
		out = append(out, rec)
	}
	return out
}

func countTypeOf(recs []contract.Record, typ string) int {
	n := 0
	for _, r := range recs {
		if r.Type == typ {
			n++
		}
	}
	return n
}

// A retry with the same key answers the same record, marked a repeat; the same key for other
// data is refused; no key is refused.
func TestSubmitIdempotencyKey(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	c := apiClient(h.socket)
	body := []byte(`{"type":"kiosk.receipt","data":{"amount":"12.50","lines":[{"sku":"A1","n":2}]}}`)
	first := post(t, c, contract.PathRecords, "txn-0001", body)
	if first.status != http.StatusOK {
		t.Fatalf("first submission: %d %s", first.status, first.body)
	}
	r1 := first.result(t)
	if !r1.OK || r1.Repeat || r1.Seq == 0 || r1.ID == "" {
		t.Fatalf("first submission: %+v", r1)
	}
	// The retry may be spaced differently and carry the key in the body: the same record.
	again := post(t, c, contract.PathRecords, "",
		[]byte(`{ "key": "txn-0001", "data": {"lines":[{"n":2,"sku":"A1"}], "amount":"12.50"}, "type":"kiosk.receipt" }`))
	r2 := again.result(t)
	if again.status != http.StatusOK || !r2.Repeat || r2.ID != r1.ID || r2.Seq != r1.Seq {
		t.Fatalf("retry: %d %+v, want a repeat of %+v", again.status, r2, r1)
	}
	other := post(t, c, contract.PathRecords, "txn-0001", []byte(`{"type":"kiosk.receipt","data":{"amount":"99.00"}}`))
	if other.status != http.StatusConflict || other.apiError(t).Code != contract.CodeKeyConflict {
		t.Fatalf("same key, other data: %d %s, want 409 key_conflict", other.status, other.body)
	}
	for name, tc := range map[string]struct {
		key  string
		body string
	}{
		"no key":           {"", `{"type":"kiosk.receipt","data":{}}`},
		"key too long":     {strings.Repeat("k", contract.MaxKeyLen+1), `{"type":"kiosk.receipt"}`},
		"key not ascii":    {"", `{"key":"交易-1","type":"kiosk.receipt"}`},
		"keys that differ": {"a", `{"key":"b","type":"kiosk.receipt"}`},
	} {
		a := post(t, c, contract.PathRecords, tc.key, []byte(tc.body))
		if a.status != http.StatusBadRequest || a.apiError(t).Code != contract.CodeKeyRequired {
			t.Errorf("%s: %d %s, want 400 key_required", name, a.status, a.body)
		}
	}
	if n := countTypeOf(storedEvents(t, h), "kiosk.receipt"); n != 1 {
		t.Fatalf("%d kiosk.receipt records stored, want 1", n)
	}
	// The record says who sent it, and under which key.
	for _, rec := range storedEvents(t, h) {
		if rec.Type != "kiosk.receipt" {
			continue
		}
		if rec.Key != "txn-0001" || rec.Source == nil || rec.Source.UID != os.Getuid() || rec.Source.PID != os.Getpid() ||
			rec.Source.Unit != unitOfSelf() {
			t.Fatalf("record key %q source %+v: want key txn-0001, uid %d, pid %d, unit %q",
				rec.Key, rec.Source, os.Getuid(), os.Getpid(), unitOfSelf())
		}
	}
}

// unitOfSelf is the systemd unit this test runs in, as the agent should read it, or "".
func unitOfSelf() string {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			parts := strings.Split(p, "/")
			for i := len(parts) - 1; i >= 0; i-- {
				if strings.HasSuffix(parts[i], ".service") || strings.HasSuffix(parts[i], ".scope") {
					return parts[i]
				}
			}
		}
	}
	return ""
}

// The station's own record types cannot be submitted: nobody hides a door.close or forges a tap.
func TestSubmitForgedTypesRefused(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	c := apiClient(h.socket)
	for i, typ := range []string{"card.tap", "card.error", "door.close", "door.open", "station.boot",
		"store.recovered", "store.full", "config.changed", "clock.jump", "env.alarm", "update.done",
		"cmd.ping", "cards.tap", "station_x.boot"} {
		a := post(t, c, contract.PathRecords, fmt.Sprint("forge-", i),
			mustJSONBytes(t, map[string]any{"type": typ, "data": map[string]any{"x": 1}}))
		if a.status != http.StatusUnprocessableEntity || a.apiError(t).Code != contract.CodeReservedType {
			t.Errorf("type %s: %d %s, want 422 reserved_type", typ, a.status, a.body)
		}
	}
	for _, rec := range storedEvents(t, h) {
		if rec.Source != nil {
			t.Errorf("a submitted record was stored: %s", rec.Type)
		}
	}
	if a := post(t, c, contract.PathRecords, "ok-1", []byte(`{"type":"kiosk.subsidy.confirmed","data":{"x":1}}`)); a.status != http.StatusOK {
		t.Fatalf("kiosk type: %d %s", a.status, a.body)
	}
}

// No card number gets in, whatever its form, and the refusal names the field, not the number.
func TestSubmitCardNumbersRefused(t *testing.T) {
	var logBuf syncBuffer
	h := startHarness(t, harnessOpts{parts: func(p *Parts) {
		p.Logger = slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}})
	c := apiClient(h.socket)
	spaced := testPAN[:4] + " " + testPAN[4:8] + " " + testPAN[8:12] + " " + testPAN[12:]
	dashed := strings.ReplaceAll(spaced, " ", "-")
	for i, tc := range []struct{ body, field string }{
		{`{"type":"kiosk.receipt","data":{"pan":"` + testPAN + `"}}`, "data.pan"},
		{`{"type":"kiosk.receipt","data":{"card":"` + spaced + `"}}`, "data.card"},    // split by spaces
		{`{"type":"kiosk.receipt","data":{"card":"` + dashed + `"}}`, "data.card"},    // by dashes
		{`{"type":"kiosk.receipt","data":{"amount":` + testPAN + `}}`, "data.amount"}, // a JSON number
		{`{"type":"kiosk.receipt","data":{"n":` + testPAN13 + `}}`, "data.n"},
		{`{"type":"kiosk.receipt","data":{"lines":[{"sku":"A"},{"note":"paid by ` + spaced + ` thanks"}]}}`, "data.lines[1].note"},
		{`{"type":"kiosk.receipt","data":{"` + testPAN + `":true}}`, "data." + testPAN},
		{`{"key":"k-` + testPAN + `","type":"kiosk.receipt"}`, "key"},
	} {
		key := fmt.Sprint("pan-", i)
		if strings.Contains(tc.body, `"key"`) {
			key = ""
		}
		a := post(t, c, contract.PathRecords, key, []byte(tc.body))
		e := a.apiError(t)
		if a.status != http.StatusUnprocessableEntity || e.Code != contract.CodeCardNumber || e.Field != tc.field {
			t.Errorf("case %d: %d %s, want 422 card_number at %s", i, a.status, a.body, tc.field)
		}
		if strings.Contains(strings.ReplaceAll(strings.ReplaceAll(string(a.body), " ", ""), "-", ""), testPAN) &&
			tc.field != "data."+testPAN {
			t.Errorf("case %d: the answer repeats the card number", i)
		}
	}
	// A batch with one card number is refused whole.
	batch := `{"key":"b1","type":"kiosk.receipt","data":{"x":1}}` + "\n" +
		`{"key":"b2","type":"kiosk.receipt","data":{"x":"` + spaced + `"}}` + "\n"
	a := post(t, c, contract.PathRecordsBatch, "", []byte(batch))
	lines := a.lines(t)
	if a.status != http.StatusUnprocessableEntity || len(lines) != 2 || lines[1].Code != contract.CodeCardNumber ||
		lines[1].Field != "data.x" || lines[0].Code != contract.CodeNotRecorded {
		t.Fatalf("batch with a card number: %d %s", a.status, a.body)
	}
	for _, rec := range storedEvents(t, h) {
		if rec.Source != nil {
			t.Fatalf("a record with a card number was stored (%s)", rec.Type)
		}
	}
	if strings.Contains(strings.ReplaceAll(strings.ReplaceAll(logBuf.String(), " ", ""), "-", ""), testPAN) {
		t.Fatal("the log holds a card number")
	}
}

// syncBuffer is a bytes.Buffer safe for the agent's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Limits: 16 KiB a record, 16 levels, an object at the top.
func TestSubmitLimits(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	c := apiClient(h.socket)
	big := mustJSONBytes(t, map[string]any{"type": "kiosk.receipt", "data": map[string]any{"s": strings.Repeat("x", 16<<10)}})
	if a := post(t, c, contract.PathRecords, "big", big); a.status != http.StatusRequestEntityTooLarge {
		t.Errorf("17 KiB record: %d %s, want 413", a.status, a.body)
	}
	nest := func(levels int) []byte {
		return []byte(`{"type":"kiosk.receipt","data":` + strings.Repeat(`{"a":`, levels-1) + `{}` + strings.Repeat(`}`, levels-1) + `}`)
	}
	if a := post(t, c, contract.PathRecords, "deep16", nest(16)); a.status != http.StatusOK {
		t.Errorf("16 levels: %d %s, want 200", a.status, a.body)
	}
	if a := post(t, c, contract.PathRecords, "deep17", nest(17)); a.status != http.StatusUnprocessableEntity {
		t.Errorf("17 levels: %d %s, want 422", a.status, a.body)
	}
	for _, data := range []string{`[1,2]`, `"x"`, `3`} {
		if a := post(t, c, contract.PathRecords, "top-"+data, []byte(`{"type":"kiosk.receipt","data":`+data+`}`)); a.status != http.StatusUnprocessableEntity {
			t.Errorf("data %s: %d %s, want 422", data, a.status, a.body)
		}
	}
}

func batchBody(t *testing.T, prefix string, n, size int) []byte {
	var b bytes.Buffer
	for i := range n {
		b.Write(mustJSONBytes(t, map[string]any{"key": fmt.Sprintf("%s-%03d", prefix, i), "type": "kiosk.receipt.line",
			"data": map[string]any{"i": i, "text": strings.Repeat("r", size)}}))
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// A batch is one transaction: all of it, one answer line per record, and a retry repeats it.
func TestSubmitBatch(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	c := apiClient(h.socket)
	a := post(t, c, contract.PathRecordsBatch, "", batchBody(t, "r1", 5, 10))
	lines := a.lines(t)
	if a.status != http.StatusOK || len(lines) != 5 {
		t.Fatalf("batch: %d %s", a.status, a.body)
	}
	for i, l := range lines {
		if !l.OK || l.Repeat || l.Key != fmt.Sprintf("r1-%03d", i) || i > 0 && l.Seq != lines[i-1].Seq+1 {
			t.Fatalf("line %d: %+v", i, l)
		}
	}
	a = post(t, c, contract.PathRecordsBatch, "", batchBody(t, "r1", 5, 10))
	for i, l := range a.lines(t) {
		if !l.Repeat || l.ID != lines[i].ID || l.Seq != lines[i].Seq {
			t.Fatalf("retried line %d: %+v, want a repeat of %+v", i, l, lines[i])
		}
	}
	if a := post(t, c, contract.PathRecordsBatch, "", batchBody(t, "many", contract.MaxBatchRecords+1, 1)); a.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("101 records: %d %s", a.status, a.body)
	}
	if n := countTypeOf(storedEvents(t, h), "kiosk.receipt.line"); n != 5 {
		t.Fatalf("%d lines stored, want 5", n)
	}
}

// A batch that fills the store is refused whole, with a Retry-After, and nothing of it stays.
func TestSubmitBatchAllOrNothingWhenFull(t *testing.T) {
	h := startHarness(t, harnessOpts{config: func(c *config.Config) { c.Store.MaxBytes = 1 << 20 }})
	c := apiClient(h.socket)
	before := storedEvents(t, h)
	// 100 records of about 12 KiB: the store fills after about 80 of them.
	a := post(t, c, contract.PathRecordsBatch, "", batchBody(t, "full", 100, 12<<10))
	lines := a.lines(t)
	if a.status != http.StatusInsufficientStorage || a.header.Get(contract.HeaderRetryAfter) == "" || len(lines) != 100 {
		t.Fatalf("batch over the cap: %d (Retry-After %q) %d lines", a.status, a.header.Get(contract.HeaderRetryAfter), len(lines))
	}
	bad := -1
	for i, l := range lines {
		if l.OK {
			t.Fatalf("line %d answered ok in a refused batch", i)
		}
		if l.Code == contract.CodeStoreFull {
			bad = i
		}
	}
	if bad < 50 {
		t.Fatalf("the store was full at record %d, want it to fill mid-batch", bad+1)
	}
	after := storedEvents(t, h)
	if n := countTypeOf(after, "kiosk.receipt.line"); n != 0 {
		t.Fatalf("%d records of a refused batch were stored", n)
	}
	for _, r := range after[len(before):] {
		if r.Type != contract.TypeStoreFull {
			t.Fatalf("stored after the refusal: %s", r.Type)
		}
	}
	// A retry of what fits goes through, numbered right after what was there.
	a = post(t, c, contract.PathRecordsBatch, "", batchBody(t, "full", 10, 12<<10))
	if ls := a.lines(t); a.status != http.StatusOK || ls[0].Seq != after[len(after)-1].Seq+1 {
		t.Fatalf("smaller batch: %d %s", a.status, a.body)
	}
}

// A program over its rate is told when to come back.
func TestSubmitRateLimited(t *testing.T) {
	h := startHarness(t, harnessOpts{config: func(c *config.Config) {
		c.LocalAPI.SubmitRate = 0.001 // one record every 1000 s: the burst is all the test has
		c.LocalAPI.SubmitBurst = 100
	}})
	c := apiClient(h.socket)
	if a := post(t, c, contract.PathRecordsBatch, "", batchBody(t, "rate", 100, 1)); a.status != http.StatusOK {
		t.Fatalf("a full batch within the burst: %d %s", a.status, a.body)
	}
	a := post(t, c, contract.PathRecords, "rate-x", []byte(`{"type":"kiosk.receipt"}`))
	if a.status != http.StatusTooManyRequests || a.apiError(t).Code != contract.CodeRateLimited ||
		a.header.Get(contract.HeaderRetryAfter) == "" {
		t.Fatalf("over the rate: %d %q %s, want 429 with Retry-After", a.status, a.header.Get(contract.HeaderRetryAfter), a.body)
	}
}

// The store closing under the API answers 503 with Retry-After.
func TestSubmitStoreUnavailable(t *testing.T) {
	h := startHarness(t, harnessOpts{noRun: true})
	var e *localapi.Error
	if err := h.a.submitError(fmt.Errorf("append: %w", store.ErrClosed)); !errors.As(err, &e) ||
		e.Status != http.StatusServiceUnavailable || e.RetryAfter <= 0 || e.Code != contract.CodeStoreBusy {
		t.Fatalf("closed store: %v, want 503 with a Retry-After", err)
	}
}

// feedLines reads JSON lines from an open feed until n have come.
func feedLines(t *testing.T, sc *bufio.Scanner, n int) []contract.FeedEvent {
	t.Helper()
	var out []contract.FeedEvent
	for len(out) < n {
		if !sc.Scan() {
			t.Fatalf("feed ended after %d lines: %v", len(out), sc.Err())
		}
		var fe contract.FeedEvent
		if err := json.Unmarshal(sc.Bytes(), &fe); err != nil {
			t.Fatalf("feed line %q: %v", sc.Bytes(), err)
		}
		out = append(out, fe)
	}
	return out
}

func getFeed(t *testing.T, c *http.Client, query string) (*bufio.Scanner, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://station"+contract.PathEvents+"?"+query, nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", query, resp.StatusCode)
	}
	return bufio.NewScanner(resp.Body), func() { cancel(); resp.Body.Close() }
}

// The tap feed resumes from a seq, shows only taps and only what a kiosk may see, and follows.
func TestTapFeedResumesFromAfter(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	c := apiClient(h.socket)
	var taps []contract.TapResult
	for i := range 4 {
		taps = append(taps, h.a.handlePresentation(card(i)))
		post(t, c, contract.PathRecords, fmt.Sprint("feed-", i), []byte(`{"type":"kiosk.screen"}`))
	}
	// The kiosk app saw the second tap, then restarted: it asks for what came after.
	sc, stop := getFeed(t, c, fmt.Sprintf("type=card.tap&after=%d&follow=1", taps[1].Seq))
	defer stop()
	got := feedLines(t, sc, 2)
	for i, fe := range got {
		want := taps[2+i]
		if fe.Seq != want.Seq || fe.Type != contract.TypeCardTap || fe.Card == nil || fe.Card.Token != fmt.Sprint("token-", 2+i) {
			t.Fatalf("feed line %d: %+v, want tap seq %d", i, fe, want.Seq)
		}
	}
	// Then it follows: a new tap comes, a submitted record does not.
	post(t, c, contract.PathRecords, "feed-x", []byte(`{"type":"kiosk.screen"}`))
	next := h.a.handlePresentation(card(9))
	if fe := feedLines(t, sc, 1)[0]; fe.Seq != next.Seq || fe.Card == nil || fe.Card.Token != "token-9" {
		t.Fatalf("followed line: %+v, want seq %d", fe, next.Seq)
	}
	// What the feed shows of a card: token, masked number, scheme; never the AID or kind.
	raw, stop2 := getFeed(t, c, "type=card.tap&after=0")
	defer stop2()
	for raw.Scan() {
		var m map[string]any
		if err := json.Unmarshal(raw.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		if card, ok := m["card"].(map[string]any); ok {
			for k := range card {
				if k != "token" && k != "masked" && k != "scheme" {
					t.Fatalf("the feed shows card.%s: %s", k, raw.Bytes())
				}
			}
		}
		if _, ok := m["data"]; ok {
			t.Fatalf("the feed shows data: %s", raw.Bytes())
		}
	}
}

// Records that left the station (acknowledged by the broker, and no longer among the recent
// ones kept in memory) are announced in the feed, not silently skipped.
func TestTapFeedSaysWhatIsGone(t *testing.T) {
	h := startHarness(t, harnessOpts{config: func(c *config.Config) { c.LocalAPI.SubmitRate = -1 }})
	c := apiClient(h.socket)
	for b := range 3 { // 300 records: more than the agent keeps in memory
		if a := post(t, c, contract.PathRecordsBatch, "", batchBody(t, fmt.Sprint("gone", b), 100, 1)); a.status != http.StatusOK {
			t.Fatalf("batch: %d %s", a.status, a.body)
		}
	}
	var taps []contract.TapResult
	for i := range 3 {
		taps = append(taps, h.a.handlePresentation(card(i)))
	}
	// The broker acknowledged everything before the taps.
	var seqs []uint64
	for s := uint64(1); s < taps[0].Seq; s++ {
		seqs = append(seqs, s)
	}
	if err := h.a.store.Delete(store.Events, seqs...); err != nil {
		t.Fatal(err)
	}
	sc, stop := getFeed(t, c, "type=card.tap&after=0")
	defer stop()
	got := feedLines(t, sc, 4)
	if m := got[0].Missed; m == nil || m.From != 1 || m.To == 0 || m.To >= taps[0].Seq || m.Restarted {
		t.Fatalf("first line %+v, want records from 1 missed", got[0])
	}
	for i, fe := range got[1:] {
		if fe.Seq != taps[i].Seq || fe.Missed != nil {
			t.Fatalf("line %d: %+v, want seq %d", i+1, fe, taps[i].Seq)
		}
	}
	// A position past the station's sequence (its store was rebuilt) is announced too.
	sc2, stop2 := getFeed(t, c, fmt.Sprintf("type=card.tap&after=%d", taps[2].Seq+1000))
	defer stop2()
	if m := feedLines(t, sc2, 1)[0].Missed; m == nil || !m.Restarted {
		t.Fatalf("after past the end: %+v, want restarted", m)
	}
}
