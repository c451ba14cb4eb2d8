package localapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"station.dev/agent/agent/contract"
)

// fakeBackend answers with what the test sets and remembers what it was asked.
type fakeBackend struct {
	mu        sync.Mutex
	recent    [][]byte
	asked     []int // Recent's n
	follow    chan []byte
	stopped   chan struct{}
	submitted []contract.SubmitRequest
	submitErr error
	taps      []contract.TapRequest
	tapErr    error // returned before the first emit
	tapAfter  error // returned after the emits
	door      []bool
	env       []contract.SimEnvRequest
	simErr    error
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{follow: make(chan []byte, 10), stopped: make(chan struct{})}
}

func (f *fakeBackend) Status() contract.Status {
	return contract.Status{State: contract.StateOnline, StationID: "s1", Reader: contract.ComponentHealth{State: contract.HealthOK}}
}

func (f *fakeBackend) Queue() contract.QueueStatus {
	return contract.QueueStatus{Depth: 7, MaxBytes: 1 << 20}
}

func (f *fakeBackend) Recent(n int) [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, n)
	return f.recent[len(f.recent)-min(n, len(f.recent)):]
}

func (f *fakeBackend) Follow() (<-chan []byte, func()) {
	var once sync.Once
	return f.follow, func() { once.Do(func() { close(f.stopped) }) }
}

func (f *fakeBackend) Submit(_ contract.Source, reqs []contract.SubmitRequest) ([]contract.SubmitResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.submitErr != nil {
		return nil, f.submitErr
	}
	var out []contract.SubmitResult
	for _, req := range reqs {
		f.submitted = append(f.submitted, req)
		out = append(out, contract.SubmitResult{OK: true, Key: req.Key, ID: "r1", Seq: 9, Type: req.Type})
	}
	return out, nil
}

func (f *fakeBackend) EventsAfter(after uint64, max int) ([]Event, error) { return nil, nil }

func (f *fakeBackend) SelfTest() contract.SelfTest {
	return contract.SelfTest{OK: true, Checks: []contract.Check{{Name: "store", OK: true}}}
}

func (f *fakeBackend) Tap(ctx context.Context, req contract.TapRequest, emit func(contract.TapResult) error) error {
	f.mu.Lock()
	f.taps = append(f.taps, req)
	before, after := f.tapErr, f.tapAfter
	f.mu.Unlock()
	if before != nil {
		return before
	}
	for i := 0; i < req.Count; i++ {
		if err := emit(contract.TapResult{OK: true, ID: "t", Seq: uint64(i + 1), Type: contract.TypeCardTap}); err != nil {
			return err
		}
	}
	return after
}

func (f *fakeBackend) SimDoor(open bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.simErr != nil {
		return f.simErr
	}
	f.door = append(f.door, open)
	return nil
}

func (f *fakeBackend) SimEnv(tempC float64, humidity *float64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.simErr != nil {
		return f.simErr
	}
	f.env = append(f.env, contract.SimEnvRequest{TempC: tempC, Humidity: humidity})
	return nil
}

// do serves one request with the handler and returns the recorded response.
func do(t *testing.T, b Backend, method, path, body string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	w := httptest.NewRecorder()
	NewHandler(b, nil).ServeHTTP(w, req)
	return w
}

// wantError checks an error answer: its status and an APIError body that mentions msg.
func wantError(t *testing.T, w *httptest.ResponseRecorder, code int, msg string) {
	t.Helper()
	if w.Code != code {
		t.Fatalf("status %d %s, want %d", w.Code, w.Body, code)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error content type %q", ct)
	}
	var e contract.APIError
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
		t.Fatalf("error body %s: %v", w.Body, err)
	}
	if !strings.Contains(e.Error, msg) {
		t.Fatalf("error %q does not mention %q", e.Error, msg)
	}
}

func decode(t *testing.T, w *httptest.ResponseRecorder, v any) {
	t.Helper()
	if w.Code != http.StatusOK {
		t.Fatalf("status %d %s", w.Code, w.Body)
	}
	if err := json.Unmarshal(w.Body.Bytes(), v); err != nil {
		t.Fatalf("body %s: %v", w.Body, err)
	}
}

func TestStatusQueueSelfTest(t *testing.T) {
	b := newFakeBackend()
	var st contract.Status
	decode(t, do(t, b, "GET", contract.PathStatus, ""), &st)
	if st.StationID != "s1" || st.Reader.State != contract.HealthOK {
		t.Fatalf("status %+v", st)
	}
	var q contract.QueueStatus
	decode(t, do(t, b, "GET", contract.PathQueue, ""), &q)
	if q.Depth != 7 {
		t.Fatalf("queue %+v", q)
	}
	var self contract.SelfTest
	decode(t, do(t, b, "GET", contract.PathSelfTest, ""), &self)
	if !self.OK || len(self.Checks) != 1 {
		t.Fatalf("selftest %+v", self)
	}
	if w := do(t, b, "POST", contract.PathStatus, ""); w.Code != http.StatusMethodNotAllowed {
		t.Fatalf("POST status: %d", w.Code)
	}
	if w := do(t, b, "GET", "/api/v1/status", ""); w.Code != http.StatusNotFound {
		t.Fatalf("unknown version: %d", w.Code)
	}
}

func TestEvents(t *testing.T) {
	b := newFakeBackend()
	for i := 0; i < 30; i++ {
		b.recent = append(b.recent, []byte(`{"seq":`+string(rune('0'+i%10))+`}`))
	}
	for _, c := range []struct {
		query string
		n     int
	}{{"", 20}, {"?n=3", 3}, {"?n=0", 20}, {"?n=-4", 20}, {"?n=lots", 20}} {
		w := do(t, b, "GET", contract.PathEvents+c.query, "")
		if w.Code != 200 || w.Header().Get("Content-Type") != "application/x-ndjson" {
			t.Fatalf("events%s: %d %q", c.query, w.Code, w.Header().Get("Content-Type"))
		}
		lines := strings.Split(strings.TrimSuffix(w.Body.String(), "\n"), "\n")
		if len(lines) != c.n || lines[len(lines)-1] != string(b.recent[29]) {
			t.Fatalf("events%s: %d lines ending %q, want %d", c.query, len(lines), lines[len(lines)-1], c.n)
		}
		if asked := b.asked[len(b.asked)-1]; asked != c.n {
			t.Fatalf("events%s asked the backend for %d", c.query, asked)
		}
	}
	// The recent records are written whole, and not changed by the newline.
	if string(b.recent[0]) != `{"seq":0}` {
		t.Fatalf("the backend's record was changed: %q", b.recent[0])
	}
}

func TestEventsFollow(t *testing.T) {
	b := newFakeBackend()
	b.recent = [][]byte{[]byte(`{"seq":1}`)}
	srv := httptest.NewServer(NewHandler(b, nil))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", srv.URL+contract.PathEvents+"?n=5&follow=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	next := func() string {
		t.Helper()
		if !sc.Scan() {
			t.Fatalf("stream ended: %v", sc.Err())
		}
		return sc.Text()
	}
	if l := next(); l != `{"seq":1}` {
		t.Fatalf("first line %q", l)
	}
	b.follow <- []byte(`{"seq":2}`)
	if l := next(); l != `{"seq":2}` {
		t.Fatalf("followed line %q", l)
	}
	// The backend drops a follower that falls behind by closing its channel: the stream ends.
	close(b.follow)
	if sc.Scan() {
		t.Fatalf("stream goes on after the follow channel closed: %q", sc.Text())
	}
	select {
	case <-b.stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the follow subscription was not stopped")
	}
}

func TestEventsFollowEndsWithClient(t *testing.T) {
	b := newFakeBackend()
	srv := httptest.NewServer(NewHandler(b, nil))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", srv.URL+contract.PathEvents+"?follow=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	select {
	case <-b.stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the follow subscription outlived its client")
	}
}

func TestSubmit(t *testing.T) {
	b := newFakeBackend()
	var res contract.SubmitResult
	decode(t, do(t, b, "POST", contract.PathRecords, `{"type":"kiosk.receipt","key":"k1","data":{"amount":3}}`), &res)
	if !res.OK || res.Seq != 9 || res.Type != "kiosk.receipt" {
		t.Fatalf("submit %+v", res)
	}
	if len(b.submitted) != 1 || fmt.Sprint(b.submitted[0].Data["amount"]) != "3" || b.submitted[0].Key != "k1" {
		t.Fatalf("backend got %+v", b.submitted)
	}

	wantError(t, do(t, b, "POST", contract.PathRecords, `{"type":"kiosk.receipt"}`), 400, "key")
	wantError(t, do(t, b, "POST", contract.PathRecords, `{"type":"receipt","key":"k2"}`), 400, "type")
	wantError(t, do(t, b, "POST", contract.PathRecords, `{"type":"card.tap","key":"k2"}`), 422, "")
	wantError(t, do(t, b, "POST", contract.PathRecords, `{"type":"kiosk.receipt","key":"k2","extra":1}`), 400, "unknown field")
	wantError(t, do(t, b, "POST", contract.PathRecords, `{"type":`), 400, "")
	wantError(t, do(t, b, "POST", contract.PathRecords, ``), 400, "")
	wantError(t, do(t, b, "POST", contract.PathRecords, `{"type":"kiosk.receipt","key":"k2","data":{"x":"`+strings.Repeat("x", contract.MaxSubmitBytes)+`"}}`), 413, "")
	if len(b.submitted) != 1 {
		t.Fatalf("refused bodies reached the backend: %+v", b.submitted[1:])
	}

	b.submitErr = Errorf(StatusFull, "refused: the station's store is full")
	wantError(t, do(t, b, "POST", contract.PathRecords, `{"type":"kiosk.receipt","key":"k3"}`), http.StatusInsufficientStorage, "store is full")
	b.submitErr = errors.New("not recorded: disk on fire")
	wantError(t, do(t, b, "POST", contract.PathRecords, `{"type":"kiosk.receipt","key":"k4"}`), http.StatusInternalServerError, "disk on fire")
}

func TestTap(t *testing.T) {
	b := newFakeBackend()
	w := do(t, b, "POST", contract.PathTap, `{"card":"ntag","count":3,"same":true}`)
	if w.Code != 200 || w.Header().Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("tap: %d %q", w.Code, w.Header().Get("Content-Type"))
	}
	lines := strings.Split(strings.TrimSuffix(w.Body.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("tap count 3: %q", lines)
	}
	for i, l := range lines {
		var r contract.TapResult
		if err := json.Unmarshal([]byte(l), &r); err != nil || !r.OK || r.Seq != uint64(i+1) {
			t.Fatalf("line %d %q: %v", i, l, err)
		}
	}
	if got := b.taps[0]; got.Card != "ntag" || got.Count != 3 || !got.Same {
		t.Fatalf("backend got %+v", got)
	}

	// Count 0 means one; the profile is passed on as it is.
	w = do(t, b, "POST", contract.PathTap, `{"profile":{"name":"x","kind":"uid","uid":"04A1B2C3D4E5F6"}}`)
	if w.Code != 200 || strings.Count(w.Body.String(), "\n") != 1 {
		t.Fatalf("default count: %d %q", w.Code, w.Body)
	}
	if got := b.taps[1]; got.Count != 1 || !strings.Contains(string(got.Profile), `"uid":"04A1B2C3D4E5F6"`) {
		t.Fatalf("backend got %+v", got)
	}

	wantError(t, do(t, b, "POST", contract.PathTap, `{"count":-1}`), 400, "count must be 1 to 100000")
	wantError(t, do(t, b, "POST", contract.PathTap, `{"count":100001}`), 400, "count must be 1 to 100000")
	wantError(t, do(t, b, "POST", contract.PathTap, `{"colour":"red"}`), 400, "unknown field")
	wantError(t, do(t, b, "POST", contract.PathTap, `[]`), 400, "bad request body")
	if len(b.taps) != 2 {
		t.Fatalf("refused bodies reached the backend: %+v", b.taps[2:])
	}

	// An error before the first result refuses the request with its status.
	b.tapErr = Errorf(StatusConflict, "tap needs an agent started with --sim")
	wantError(t, do(t, b, "POST", contract.PathTap, `{}`), http.StatusConflict, "--sim")
	b.tapErr = Errorf(StatusBadRequest, "no built-in card %q", "x")
	wantError(t, do(t, b, "POST", contract.PathTap, `{"card":"x"}`), 400, "no built-in card")

	// After the first result the status is sent: a later error ends the stream, nothing more.
	b.tapErr, b.tapAfter = nil, errors.New("late")
	w = do(t, b, "POST", contract.PathTap, `{"count":2}`)
	if w.Code != 200 || strings.Count(w.Body.String(), "\n") != 2 || strings.Contains(w.Body.String(), "late") {
		t.Fatalf("error after results: %d %q", w.Code, w.Body)
	}
}

func TestTapStopsWhenClientGoes(t *testing.T) {
	b := newFakeBackend()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req := httptest.NewRequest("POST", contract.PathTap, strings.NewReader(`{"count":5}`)).WithContext(ctx)
	w := httptest.NewRecorder()
	NewHandler(b, nil).ServeHTTP(w, req)
	// emit reports the gone client after the first result, and the backend stops.
	if n := strings.Count(w.Body.String(), "\n"); n != 1 {
		t.Fatalf("%d results written for a gone client, want 1", n)
	}
}

func TestSim(t *testing.T) {
	b := newFakeBackend()
	var ok map[string]bool
	decode(t, do(t, b, "POST", contract.PathSimDoor, `{"open":true}`), &ok)
	decode(t, do(t, b, "POST", contract.PathSimDoor, `{"open":false}`), &ok)
	if !ok["ok"] || len(b.door) != 2 || !b.door[0] || b.door[1] {
		t.Fatalf("door: %v, backend got %v", ok, b.door)
	}
	decode(t, do(t, b, "POST", contract.PathSimEnv, `{"temp_c":-40}`), &ok)
	decode(t, do(t, b, "POST", contract.PathSimEnv, `{"temp_c":85,"humidity":100}`), &ok)
	if len(b.env) != 2 || b.env[0].TempC != -40 || b.env[0].Humidity != nil || b.env[1].Humidity == nil || *b.env[1].Humidity != 100 {
		t.Fatalf("backend got %+v", b.env)
	}

	for _, body := range []string{`{"temp_c":-40.5}`, `{"temp_c":85.1}`, `{"temp_c":20,"humidity":-1}`, `{"temp_c":20,"humidity":100.5}`} {
		wantError(t, do(t, b, "POST", contract.PathSimEnv, body), 400, "out of the sensor's range")
	}
	wantError(t, do(t, b, "POST", contract.PathSimEnv, `{"temp":20}`), 400, "unknown field")
	wantError(t, do(t, b, "POST", contract.PathSimDoor, `{"open":"yes"}`), 400, "bad request body")
	wantError(t, do(t, b, "POST", contract.PathSimDoor, `{"open":true`+strings.Repeat(" ", maxSimBody)+`}`), 400, "bad request body")
	if len(b.door) != 2 || len(b.env) != 2 {
		t.Fatalf("refused bodies reached the backend: door %v env %v", b.door, b.env)
	}

	b.simErr = Errorf(StatusConflict, "no emulated door")
	wantError(t, do(t, b, "POST", contract.PathSimDoor, `{"open":true}`), http.StatusConflict, "no emulated door")
	wantError(t, do(t, b, "POST", contract.PathSimEnv, `{"temp_c":20}`), http.StatusConflict, "no emulated door")
}

func TestErrorf(t *testing.T) {
	e := Errorf(StatusFull, "refused: %s", "full")
	if e.Status != http.StatusInsufficientStorage || e.Error() != "refused: full" {
		t.Fatalf("%+v", e)
	}
	var target *Error
	if !errors.As(errors.Join(errors.New("x"), e), &target) || target.Status != StatusFull {
		t.Fatal("a wrapped *Error is not found")
	}
}

// socketPath returns a socket path short enough for sun_path.
func socketPath(t *testing.T) string {
	dir, err := os.MkdirTemp("", "lapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "run", "station.sock")
}

func TestListenRefusesLiveSocket(t *testing.T) {
	path := socketPath(t)
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v, want a socket with 0660", fi.Mode())
	}
	go func() { // answer the dial
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another agent is already serving") {
		t.Fatalf("second Listen on a live socket: %v", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the live socket was removed: %v", err)
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := socketPath(t)
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		t.Fatal(err)
	}
	// A socket file left by an agent that died: nobody answers on it.
	old, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	old.(*net.UnixListener).SetUnlinkOnClose(false)
	old.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("no stale socket to replace: %v", err)
	}
	ln, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer ln.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the new socket does not answer: %v", err)
	}
	c.Close()
}

func TestListenReportsBadDirectory(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(filepath.Join(f, "station.sock")); err == nil || !strings.Contains(err.Error(), "socket directory") {
		t.Fatalf("Listen under a file: %v", err)
	}
}

func TestServeReturnsNilOnCancel(t *testing.T) {
	path := socketPath(t)
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, NewHandler(newFakeBackend(), nil)) }()

	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	resp, err := client.Get("http://station" + contract.PathQueue)
	if err != nil {
		t.Fatal(err)
	}
	var q contract.QueueStatus
	err = json.NewDecoder(resp.Body).Decode(&q)
	resp.Body.Close()
	if err != nil || q.Depth != 7 {
		t.Fatalf("queue over the socket: %+v %v", q, err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve returned %v on cancel, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file left after Serve: %v", err)
	}
}

func TestServeReportsListenerError(t *testing.T) {
	ln, err := Listen(socketPath(t))
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, NewHandler(newFakeBackend(), nil)) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Serve on a closed listener returned nil")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve on a closed listener did not return")
	}
}
