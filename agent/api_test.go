package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"

	"station.dev/agent/agent/config"
	"station.dev/agent/agent/contract"
)

// The local API over the real unix socket the harness's agent listens on.

// api returns a client of the harness's socket.
func (h *harness) api() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", h.socket)
		},
	}}
}

// call makes one request (body nil for GET) and returns the status and the body.
func (h *harness) call(t *testing.T, method, path string, body any) (int, []byte) {
	t.Helper()
	var rd *bytes.Reader
	switch b := body.(type) {
	case nil:
		rd = bytes.NewReader(nil)
	case string:
		rd = bytes.NewReader([]byte(b))
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, "http://station"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := h.api().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, buf.Bytes()
}

// callJSON makes a request that must answer want, and decodes the body into v.
func (h *harness) callJSON(t *testing.T, method, path string, body any, want int, v any) {
	t.Helper()
	code, b := h.call(t, method, path, body)
	if code != want {
		t.Fatalf("%s %s: %d %s, want %d", method, path, code, b, want)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s %s: %s: %v", method, path, b, err)
		}
	}
}

// lines splits a JSON-lines body.
func lines(b []byte) []string {
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

func TestAPIStatusQueueSelfTest(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	var st contract.Status
	h.callJSON(t, "GET", contract.PathStatus, nil, 200, &st)
	if st.State != contract.StateOnline || st.StationID != "agent-test" || st.BootID != h.a.bootID || st.Version != "test" {
		t.Fatalf("status %+v", st)
	}
	if st.Link == nil || st.Link.Broker != h.a.cfg.MQTT.Broker || st.Link.Connected {
		t.Fatalf("status link %+v", st.Link)
	}
	if st.Indicator == nil || st.Door == nil || st.Door.Open || len(st.Components) != 4 || st.Environment["temp_c"] != 22 {
		t.Fatalf("status peripherals: indicator %+v door %+v components %v environment %v", st.Indicator, st.Door, st.Components, st.Environment)
	}
	if st.Reader.State != contract.HealthOK || st.Reader.Firmware != "PN532 v1.6" {
		t.Fatalf("status reader %+v", st.Reader)
	}

	var q contract.QueueStatus
	h.callJSON(t, "GET", contract.PathQueue, nil, 200, &q)
	if q.Depth != 1 || q.Streams[string("events")].LastSeq != 1 || q.Full || q.DiskFreeByte == 0 {
		t.Fatalf("queue %+v: want the boot record waiting", q)
	}

	var self contract.SelfTest
	h.callJSON(t, "GET", contract.PathSelfTest, nil, 200, &self)
	if self.OK || len(self.Checks) != 8 || self.Checks[1].Name != "broker" || self.Checks[1].OK {
		t.Fatalf("selftest %+v: want 8 checks, the broker failing", self)
	}

	if code, b := h.call(t, "GET", "/api/v0/nothing", nil); code != http.StatusNotFound {
		t.Fatalf("unknown path: %d %s", code, b)
	}
}

func TestAPIEvents(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	for _, typ := range []string{"kiosk.one", "kiosk.two", "kiosk.three"} {
		if res, err := submitOne(h.a, contract.SubmitRequest{Type: typ}); err != nil || !res.OK {
			t.Fatalf("submit %s: %+v %v", typ, res, err)
		}
	}
	types := func(b []byte) []string {
		var out []string
		for _, l := range lines(b) {
			var r contract.Record
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				t.Fatalf("events line %q: %v", l, err)
			}
			out = append(out, r.Type)
		}
		return out
	}
	code, b := h.call(t, "GET", contract.PathEvents+"?n=2", nil)
	if got := types(b); code != 200 || !slices.Equal(got, []string{"kiosk.two", "kiosk.three"}) {
		t.Fatalf("events n=2: %d %v", code, got)
	}
	code, b = h.call(t, "GET", contract.PathEvents, nil)
	if got := types(b); code != 200 || !slices.Equal(got, []string{contract.TypeBoot, "kiosk.one", "kiosk.two", "kiosk.three"}) {
		t.Fatalf("events: %d %v", code, got)
	}

	// follow=1: the recent records, then each new one as it is written.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://station"+contract.PathEvents+"?n=1&follow=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := h.api().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	next := func() contract.Record {
		t.Helper()
		if !sc.Scan() {
			t.Fatalf("follow ended: %v", sc.Err())
		}
		var r contract.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := next(); r.Type != "kiosk.three" {
		t.Fatalf("follow began with %s", r.Type)
	}
	res, err := submitOne(h.a, contract.SubmitRequest{Type: "kiosk.four"})
	if err != nil {
		t.Fatal(err)
	}
	if r := next(); r.Type != "kiosk.four" || r.ID != res.ID || r.Seq != res.Seq {
		t.Fatalf("followed %+v, want the record just written (%+v)", r, res)
	}
}

func TestAPIRecords(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	var res contract.SubmitResult
	h.callJSON(t, "POST", contract.PathRecords, map[string]any{"type": "kiosk.receipt", "key": "r1", "data": map[string]any{"amount": 3}}, 200, &res)
	if !res.OK || res.Type != "kiosk.receipt" || res.Seq != 2 || res.ID == "" {
		t.Fatalf("submit %+v", res)
	}
	recs := recordsOfType(t, h.a, "kiosk.receipt")
	if len(recs) != 1 || recs[0].ID != res.ID || fmt.Sprint(recs[0].Data["amount"]) != "3" || recs[0].BootID != h.a.bootID {
		t.Fatalf("submitted records %+v", recs)
	}

	var apiErr contract.APIError
	for _, body := range []any{
		map[string]any{"type": "receipt", "key": "r2"},
		map[string]any{"type": "Kiosk.Receipt", "key": "r2"},
		map[string]any{"type": "kiosk.receipt", "key": "r2", "colour": "red"},
		map[string]any{"type": "kiosk.receipt"}, // no key
		`{"type":`,
	} {
		h.callJSON(t, "POST", contract.PathRecords, body, 400, &apiErr)
		if apiErr.Error == "" {
			t.Fatalf("%v: 400 without a message", body)
		}
	}
	// The agent's own type.
	h.callJSON(t, "POST", contract.PathRecords, map[string]any{"type": contract.TypeCardTap, "key": "r3"}, 422, &apiErr)
	if n := len(h.a.recent.last(0)); n != 2 {
		t.Fatalf("%d records after refused submissions, want boot and one receipt", n)
	}
}

func TestAPIRecordsStoreFull(t *testing.T) {
	h := startHarness(t, harnessOpts{config: func(c *config.Config) { c.Store.MaxBytes = 1 << 20 }})
	fillStore(t, h.a)
	alarms := len(recordsOfType(t, h.a, contract.TypeStoreFull))
	if alarms == 0 {
		t.Fatal("no store.full alarm")
	}
	var apiErr contract.APIError
	h.callJSON(t, "POST", contract.PathRecords, map[string]any{"type": "kiosk.receipt", "key": "full-1", "data": map[string]any{"note": strings.Repeat("n", 100)}},
		http.StatusInsufficientStorage, &apiErr)
	if !strings.Contains(apiErr.Error, "store is full") {
		t.Fatalf("507 body %q", apiErr.Error)
	}
	// The refusal belongs to the full episode already reported: no second alarm.
	if n := len(recordsOfType(t, h.a, contract.TypeStoreFull)); n != alarms {
		t.Fatalf("%d store.full alarms after a refusal in the same episode, want %d", n, alarms)
	}
	if q := h.a.Queue(); !q.Full || q.FullReason != contract.ErrStoreFull {
		t.Fatalf("queue %+v", q)
	}
}

// fillStore submits ever smaller records until not even the smallest fits: what is left is less
// than a bare record, so any larger record, a card tap included, is refused.
func fillStore(t *testing.T, a *Agent) {
	t.Helper()
	for _, size := range []int{15 << 10, 2 << 10, 256, -1} {
		req := contract.SubmitRequest{Type: "a.b"}
		if size >= 0 {
			req = contract.SubmitRequest{Type: "kiosk.bulk", Data: map[string]any{"pad": strings.Repeat("x", size)}}
		}
		for i := 0; ; i++ {
			if i > 1000 {
				t.Fatal("the store never filled")
			}
			if _, err := submitOne(a, req); err != nil {
				break
			}
		}
	}
}

func TestAPITap(t *testing.T) {
	h := startHarness(t, harnessOpts{hardware: func(hw *Hardware, f *fakes) { hw.Sim = f.sim }})
	tap := func(req contract.TapRequest) []contract.TapResult {
		t.Helper()
		code, b := h.call(t, "POST", contract.PathTap, req)
		if code != 200 {
			t.Fatalf("tap %+v: %d %s", req, code, b)
		}
		var out []contract.TapResult
		for _, l := range lines(b) {
			var r contract.TapResult
			if err := json.Unmarshal([]byte(l), &r); err != nil {
				t.Fatal(err)
			}
			out = append(out, r)
		}
		return out
	}
	tokens := func(res []contract.TapResult) []string {
		var out []string
		for _, r := range res {
			if !r.OK || r.Type != contract.TypeCardTap {
				t.Fatalf("tap result %+v", r)
			}
			for _, rec := range recordsOfType(t, h.a, contract.TypeCardTap) {
				if rec.ID == r.ID {
					out = append(out, rec.Card.Token)
				}
			}
		}
		if len(out) != len(res) {
			t.Fatalf("%d records for %d taps", len(out), len(res))
		}
		return out
	}

	res := tap(contract.TapRequest{Card: "ntag", Count: 3})
	if len(res) != 3 || res[1].Seq != res[0].Seq+1 || res[2].Seq != res[1].Seq+1 {
		t.Fatalf("3 taps: %+v", res)
	}
	if tk := tokens(res); tk[0] == tk[1] || tk[1] == tk[2] {
		t.Fatalf("taps without same share a card: %v", tk)
	}

	res = tap(contract.TapRequest{Card: "ntag", Count: 2, Same: true})
	if tk := tokens(res); len(tk) != 2 || tk[0] != tk[1] {
		t.Fatalf("taps with same: %v", tk)
	}

	// A profile document, and the default card.
	res = tap(contract.TapRequest{Profile: json.RawMessage(`{"name":"lobby-tag","kind":"uid","uid":"04A1B2C3D4E5F0"}`)})
	tokens(res)
	res = tap(contract.TapRequest{})
	tokens(res)

	for _, req := range []contract.TapRequest{
		{Card: "no-such-card"},
		{Profile: json.RawMessage(`{"name":"x","kind":"felica","uid":"04A1B2C3D4E5F6"}`)},
		{Card: "ntag", Profile: json.RawMessage(`{"name":"x","kind":"uid","uid":"04A1B2C3D4E5F6"}`)},
		{Card: "ntag", Count: -1},
	} {
		var apiErr contract.APIError
		h.callJSON(t, "POST", contract.PathTap, req, 400, &apiErr)
		if apiErr.Error == "" {
			t.Fatalf("tap %+v: 400 without a message", req)
		}
	}
}

func TestAPISim(t *testing.T) {
	h := startHarness(t, harnessOpts{hardware: func(hw *Hardware, f *fakes) { hw.Sim = f.sim }})
	var ok map[string]bool
	h.callJSON(t, "POST", contract.PathSimDoor, contract.SimDoorRequest{Open: true}, 200, &ok)
	waitFor(t, func() bool { return len(recordsOfType(t, h.a, contract.TypeDoorOpen)) == 1 })
	var st contract.Status
	h.callJSON(t, "GET", contract.PathStatus, nil, 200, &st)
	if st.Door == nil || !st.Door.Open {
		t.Fatalf("status door %+v after opening", st.Door)
	}
	h.callJSON(t, "POST", contract.PathSimDoor, contract.SimDoorRequest{Open: false}, 200, &ok)
	waitFor(t, func() bool { return len(recordsOfType(t, h.a, contract.TypeDoorClose)) == 1 })

	h.callJSON(t, "POST", contract.PathSimEnv, contract.SimEnvRequest{TempC: 70}, 200, &ok)
	waitFor(t, func() bool { return len(recordsOfType(t, h.a, contract.TypeEnvAlarm)) == 1 })
	alarm := recordsOfType(t, h.a, contract.TypeEnvAlarm)[0]
	if alarm.Data["quantity"] != "temp_high" || alarm.Data["value"] != float64(70) || alarm.Data["limit"] != config.DefaultTempHigh {
		t.Fatalf("env.alarm %+v", alarm.Data)
	}
	hum := 40.0
	h.callJSON(t, "POST", contract.PathSimEnv, contract.SimEnvRequest{TempC: 21.5, Humidity: &hum}, 200, &ok)
	waitFor(t, func() bool { return len(recordsOfType(t, h.a, contract.TypeEnvOK)) == 1 })
	if env := h.a.environment(); env["temp_c"] != 21.5 || env["humidity"] != 40 {
		t.Fatalf("environment %v", env)
	}

	var apiErr contract.APIError
	h.callJSON(t, "POST", contract.PathSimEnv, contract.SimEnvRequest{TempC: 200}, 400, &apiErr)
	h.callJSON(t, "POST", contract.PathSimDoor, `{"open":"yes"}`, 400, &apiErr)
}

func TestAPISimOnlyWithSimulator(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	for _, c := range []struct {
		path string
		body any
	}{
		{contract.PathTap, contract.TapRequest{Card: "ntag"}},
		{contract.PathSimDoor, contract.SimDoorRequest{Open: true}},
		{contract.PathSimEnv, contract.SimEnvRequest{TempC: 20}},
	} {
		var apiErr contract.APIError
		h.callJSON(t, "POST", c.path, c.body, http.StatusConflict, &apiErr)
		if !strings.Contains(apiErr.Error, "--sim") {
			t.Fatalf("%s: 409 says %q", c.path, apiErr.Error)
		}
	}
	if n := len(h.a.recent.last(0)); n != 1 {
		t.Fatalf("%d records, want only the boot record", n)
	}
}

// submitOne submits one record as a local program would, with a key of its own unless it has one.
func submitOne(a *Agent, req contract.SubmitRequest) (contract.SubmitResult, error) {
	if req.Key == "" {
		req.Key = newID()
	}
	res, err := a.Submit(contract.Source{UID: os.Getuid()}, []contract.SubmitRequest{req})
	if err != nil {
		return contract.SubmitResult{}, err
	}
	return res[0], nil
}
