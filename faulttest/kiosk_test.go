//go:build faults

package faulttest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"station.dev/agent/mqtt/brokertest"
)

// TestSubmitRetryAfterKillBetweenCommitAndReply kills the agent (SIGKILL, at the fault point of
// a test build) after a kiosk's record is committed and before it is answered. The kiosk, having
// no answer, retries with the same key once the agent is back: it is answered the record already
// made, marked a repeat, and the broker gets that record once, not twice.
func TestSubmitRetryAfterKillBetweenCommitAndReply(t *testing.T) {
	broker := brokertest.Embedded(t, "127.0.0.1:0")
	s := newSpec(t, broker.URL())
	obs := observe(t, broker.URL(), s.Prefix+"/+/events")
	const key = "receipt-20250301-0042"
	body := []byte(`{"type":"kiosk.receipt","data":{"amount":"12.50","counter":"3"}}`)
	send := func(a *agent) (*http.Response, []byte, error) {
		req, err := http.NewRequest("POST", "http://station/api/v0/records", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Idempotency-Key", key)
		resp, err := a.HTTPClient().Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp, b, err
	}

	dying := s
	dying.Env = append(dying.Env, "STATION_TEST_FAULT=submit-committed")
	a := startAgent(t, dying)
	if resp, b, err := send(a); err == nil {
		t.Fatalf("the agent answered %d %s: it should have died between commit and reply", resp.StatusCode, b)
	}
	if !eventually(30*time.Second, 20*time.Millisecond, func() bool { return !a.Alive() }) {
		t.Fatal("the agent is still running after its fault point")
	}

	a = startAgent(t, s)
	resp, b, err := send(a)
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		OK     bool   `json:"ok"`
		ID     string `json:"id"`
		Seq    uint64 `json:"seq"`
		Repeat bool   `json:"repeat"`
	}
	if err := json.Unmarshal(b, &res); err != nil || resp.StatusCode != http.StatusOK || !res.OK || !res.Repeat {
		t.Fatalf("retry: %d %s, want the committed record again, marked repeat", resp.StatusCode, b)
	}
	obs.waitIDs(map[string]bool{res.ID: true}, time.Minute)
	// Everything the store had is on the broker: count the kiosk's records there.
	if !eventually(time.Minute, 50*time.Millisecond, func() bool {
		st, err := a.tryStatus()
		return err == nil && st.Queue.Depth == 0
	}) {
		t.Fatalf("the store did not drain: %+v", a.status().Queue)
	}
	msgs, _ := obs.snapshot()
	ids := map[string]bool{}
	for _, m := range msgs {
		var r struct {
			ID, Type, Key string
			Seq           uint64
		}
		if json.Unmarshal(m.Payload, &r) == nil && r.Key == key {
			ids[r.ID] = true
			if r.Seq != res.Seq {
				t.Errorf("record of the key with seq %d, answered %d", r.Seq, res.Seq)
			}
		}
	}
	if len(ids) != 1 {
		t.Fatalf("%d distinct records of key %s on the broker, want 1", len(ids), key)
	}
}
