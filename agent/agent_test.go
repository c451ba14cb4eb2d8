package agent

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"station.dev/agent/agent/config"
	"station.dev/agent/agent/contract"
	"station.dev/agent/drivers/cardreader"
	"station.dev/agent/drivers/indicator"
	"station.dev/agent/mqtt/brokertest"
	"station.dev/agent/store"
)

func TestStoreFullRefusesCardsWithOneAlarm(t *testing.T) {
	h := startHarness(t, harnessOpts{config: func(c *config.Config) { c.Store.MaxBytes = 1 << 20 }})
	var refused, recorded int
	for i := 0; refused < 3; i++ {
		if i > 20000 {
			t.Fatal("the store never filled")
		}
		res := h.a.handlePresentation(card(i))
		if res.OK {
			recorded++
			if p := <-h.ind.shown; p != indicator.RecordedOffline {
				t.Fatalf("recorded offline shown as %q", p)
			}
			continue
		}
		if res.ID != "" {
			t.Fatalf("refused tap has a record id: %+v", res)
		}
		refused++
		if p := <-h.ind.shown; p != indicator.Refused {
			t.Fatalf("refusal shown as %q", p)
		}
	}
	st, err := h.a.store.Stats()
	if err != nil {
		t.Fatal(err)
	}
	ev := st.Streams[store.Events]
	// boot + recorded taps + exactly one store.full alarm; nothing recorded was dropped.
	if ev.Depth != recorded+2 || ev.LastSeq != uint64(recorded+2) {
		t.Fatalf("events depth %d last seq %d, want %d (boot + %d taps + 1 alarm)", ev.Depth, ev.LastSeq, recorded+2, recorded)
	}
	var alarms int
	for _, b := range h.a.recent.last(0) {
		var r contract.Record
		_ = json.Unmarshal(b, &r)
		if r.Type == contract.TypeStoreFull {
			alarms++
		}
	}
	if alarms != 1 {
		t.Fatalf("%d store.full alarms, want 1", alarms)
	}
	if !h.a.Queue().Full {
		t.Fatal("queue status does not say full")
	}
}

func TestRecordsReachBrokerAndIndicateOnline(t *testing.T) {
	url := brokertest.URL(t)
	h := startHarness(t, harnessOpts{broker: url})
	sub := brokertest.Subscribe(t, url, h.a.topics.Events, 100)
	status := brokertest.Subscribe(t, url, h.a.topics.Status, 100)
	waitFor(t, func() bool { return h.a.link.Stats().Connected })
	h.reader.c <- card(1)
	h.reader.c <- cardreader.Presentation{Error: cardreader.CodeRemoved, Detail: "card left the field"}
	var types []string
	for len(types) < 2 {
		m := sub.Next(t, 10*time.Second)
		var r contract.Record
		if err := json.Unmarshal(m.Payload, &r); err != nil {
			t.Fatal(err)
		}
		if r.Type == contract.TypeBoot {
			continue // published before the subscriber was there, unless the link was slower
		}
		types = append(types, r.Type)
		if r.Type == contract.TypeCardError && (r.Error == nil || r.Error.Code != "removed") {
			t.Fatalf("card.error without its code: %s", m.Payload)
		}
	}
	if types[0] != contract.TypeCardTap || types[1] != contract.TypeCardError {
		t.Fatalf("types %v", types)
	}
	if p := <-h.ind.shown; p != indicator.Recorded {
		t.Fatalf("online tap shown as %q", p)
	}
	m := status.Next(t, 10*time.Second)
	var st contract.Status
	if err := json.Unmarshal(m.Payload, &st); err != nil || st.State != "online" || st.BootID != h.a.bootID {
		t.Fatalf("status %s", m.Payload)
	}
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	for {
		m := status.Next(t, 10*time.Second)
		var st struct{ State, Reason string }
		_ = json.Unmarshal(m.Payload, &st)
		if st.State == "offline" {
			if st.Reason != "shutdown" {
				t.Fatalf("clean stop left %s", m.Payload)
			}
			return
		}
	}
}

func TestSubmittedTypeNames(t *testing.T) {
	for s, ok := range map[string]bool{"kiosk.receipt": true, "a.b.c": true, "card": false, "Card.tap": false, "x..y": false, "a.b.c.d.e": false} {
		if contract.ValidSubmittedType(s) != ok {
			t.Errorf("%q: want %v", s, ok)
		}
	}
}

func TestClockWatch(t *testing.T) {
	boot := time.Date(1970, 1, 1, 0, 0, 10, 0, time.UTC) // a Pi without RTC before NTP
	w := newClockWatch(boot, 10*time.Second)
	if j, _, _ := w.observe(boot.Add(5*time.Second), 15*time.Second); j != 0 {
		t.Fatalf("false jump %v", j)
	}
	// A small slew is not a jump.
	if j, _, _ := w.observe(boot.Add(10*time.Second+time.Second), 20*time.Second); j != 0 {
		t.Fatalf("slew taken for a jump: %v", j)
	}
	// NTP steps the clock to 2026 while 5s pass.
	synced := time.Date(2026, 11, 26, 9, 0, 0, 0, time.UTC)
	j, expected, got := w.observe(synced, 25*time.Second)
	if want := synced.Sub(boot.Add(16 * time.Second)); j != want || !got.Equal(synced) || !expected.Equal(boot.Add(16*time.Second)) {
		t.Fatalf("jump %v (want %v), expected %v, got %v", j, want, expected, got)
	}
	// A step back is a jump too.
	if j, _, _ := w.observe(synced.Add(-time.Minute), 30*time.Second); j != -time.Minute-5*time.Second {
		t.Fatalf("backward jump %v", j)
	}
}

func TestRecentRing(t *testing.T) {
	r := newRecentRecords(3)
	for _, s := range []string{"a", "b", "c", "d"} {
		r.add([]byte(s))
	}
	got := r.last(0)
	if len(got) != 3 || string(got[0]) != "b" || string(got[2]) != "d" {
		t.Fatalf("%q", got)
	}
	if got := r.last(2); len(got) != 2 || string(got[0]) != "c" {
		t.Fatalf("%q", got)
	}
	ch := r.follow()
	r.add([]byte("e"))
	if string(<-ch) != "e" {
		t.Fatal("follower missed a record")
	}
	r.unfollow(ch)
	if _, ok := <-ch; ok {
		t.Fatal("unfollowed channel still open")
	}
}

// waitFor polls a condition that has no channel to wait on, with a deadline.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 15s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestMissingHardwareIsDownNotFatal(t *testing.T) {
	h := startHarness(t, harnessOpts{hardware: func(hw *Hardware, f *fakes) {
		hw.Indicator = nil
		hw.Door = func() (Door, error) { return nil, errors.New("hw: door pin GPIO999 not found") }
		hw.Environment = func() (EnvSensor, error) {
			return nil, errors.New("hw: I2C bus \"no-such-bus\": no such bus")
		}
	}})
	waitFor(t, func() bool {
		c := h.a.components()
		return c["door"].Detail != "starting" && c["environment"].Detail != "starting"
	})
	c := h.a.components()
	if c["door"].State != contract.HealthDown || !strings.Contains(c["door"].Detail, "GPIO999") {
		t.Fatalf("door: %+v", c["door"])
	}
	if c["environment"].State != contract.HealthDown || strings.Count(c["environment"].Detail, "\n") != 0 {
		t.Fatalf("environment: %+v", c["environment"])
	}
	if _, ok := c["indicator"]; ok {
		t.Fatal("an indicator that is not configured is reported")
	}
	st := h.a.selfTest()
	if st.OK {
		t.Fatalf("self-test passed with the door down: %+v", st)
	}
	// The agent still records.
	if res := h.a.handlePresentation(card(1)); !res.OK {
		t.Fatalf("tap with hardware down: %+v", res)
	}
}

func TestOfflineTelemetryStoredInBatches(t *testing.T) {
	// The agent's own heartbeat is an hour away: only the test's heartbeats count.
	h := startHarness(t, harnessOpts{config: func(c *config.Config) { c.Telemetry.Interval = config.Duration(time.Hour) }})
	depth := func() int {
		st, err := h.a.store.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return st.Streams[store.Telemetry].Depth
	}
	for i := 1; i < telemetryBatch; i++ {
		h.a.sendTelemetry()
	}
	if d := depth(); d != 0 {
		t.Fatalf("%d heartbeats stored one by one, want them kept for a batch", d)
	}
	h.a.sendTelemetry()
	if d := depth(); d != telemetryBatch {
		t.Fatalf("after a full batch: %d stored, want %d", d, telemetryBatch)
	}
	for i := 0; i < 5; i++ {
		h.a.sendTelemetry()
	}
	if err := h.stop(); err != nil { // a clean stop stores what is kept
		t.Fatal(err)
	}
	st, err := h.a.store.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if d := st.Streams[store.Telemetry].Depth; d != telemetryBatch+5 {
		t.Fatalf("after stop: %d heartbeats stored, want %d", d, telemetryBatch+5)
	}
}
