package agent

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"station.dev/agent/agent/config"
	"station.dev/agent/agent/contract"
	"station.dev/agent/agent/localapi"
	"station.dev/agent/drivers/indicator"
	"station.dev/agent/store"
)

func TestNewRefusesIncompleteParts(t *testing.T) {
	h := startHarness(t, harnessOpts{noRun: true})
	good := Parts{Config: h.a.cfg, Store: h.a.store, Link: func(LinkHooks) (Link, error) { return h.a.link, nil }}
	badKey := *h.a.cfg
	badKey.Commands.PublicKeys = []string{"bm90IGEga2V5"}
	for _, c := range []struct {
		name  string
		parts func(p *Parts)
		want  string
	}{
		{"no configuration", func(p *Parts) { p.Config = nil }, "no configuration"},
		{"no store", func(p *Parts) { p.Store = nil }, "no store"},
		{"no link", func(p *Parts) { p.Link = nil }, "no broker link"},
		{"bad key", func(p *Parts) { p.Config = &badKey }, "commands.public_keys"},
		{"link fails", func(p *Parts) {
			p.Link = func(LinkHooks) (Link, error) { return nil, errors.New("mqtt: bad broker URL") }
		}, "bad broker URL"},
	} {
		p := good
		c.parts(&p)
		if a, err := New(p, Options{}); err == nil || !strings.Contains(err.Error(), c.want) || a != nil {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	a, err := New(good, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if a.opts.Version != "dev" || a.Status().Version != "dev" {
		t.Fatalf("version without one given: %q", a.opts.Version)
	}
}

func TestLinkHooks(t *testing.T) {
	var hooks LinkHooks
	h := startHarness(t, harnessOpts{noRun: true, parts: func(p *Parts) {
		link := p.Link
		p.Link = func(hk LinkHooks) (Link, error) {
			hooks = hk
			return link(hk)
		}
	}})
	tp := h.a.topics
	if hooks.StatusTopic != tp.Status || !slices.Equal(hooks.Subscriptions, []string{tp.Cmd, tp.FleetCmd}) {
		t.Fatalf("hooks %+v", hooks)
	}
	streams := map[string]string{}
	for _, s := range hooks.Streams {
		streams[s.Name] = s.Topic
	}
	if streams["events"] != tp.Events || streams["resp"] != tp.Resp || streams["telemetry"] != tp.Telemetry {
		t.Fatalf("streams %v", streams)
	}
	var will, bye contract.Offline
	if err := json.Unmarshal(hooks.Will(), &will); err != nil || will.Reason != contract.ReasonLost || will.BootID != h.a.bootID {
		t.Fatalf("will %s", hooks.Will())
	}
	if err := json.Unmarshal(hooks.ShutdownStatus(), &bye); err != nil || bye.Reason != contract.ReasonShutdown || bye.State != contract.StateOffline {
		t.Fatalf("shutdown status %+v", bye)
	}
	var st contract.Status
	if err := json.Unmarshal(hooks.Status(), &st); err != nil || st.State != contract.StateOnline || st.Link != nil || st.Indicator != nil {
		t.Fatalf("retained status must leave out link and indicator: %s", hooks.Status())
	}

	// The outbox is the store.
	if _, err := submitOne(h.a, contract.SubmitRequest{Type: "kiosk.receipt"}); err != nil {
		t.Fatal(err)
	}
	items, err := hooks.Outbox.Read("events", 0, 10)
	if err != nil || len(items) != 1 || items[0].Seq != 1 {
		t.Fatalf("outbox read %+v %v", items, err)
	}
	if err := hooks.Outbox.Delete("events", items[0].Seq); err != nil {
		t.Fatal(err)
	}
	if items, _ := hooks.Outbox.Read("events", 0, 10); len(items) != 0 {
		t.Fatalf("outbox delete left %+v", items)
	}
	if _, err := hooks.Outbox.Read("nonsense", 0, 10); err == nil {
		t.Fatal("outbox read of an unknown stream")
	}
	if hooks.Outbox.Changed() == nil {
		t.Fatal("outbox has no change channel")
	}
}

func TestRunHeartbeatsAndCleanStop(t *testing.T) {
	var mu sync.Mutex
	beats := map[string]int{}
	h := startHarness(t, harnessOpts{options: func(o *Options) {
		o.Heartbeat = func(name string) func() {
			return func() {
				mu.Lock()
				beats[name]++
				mu.Unlock()
			}
		}
	}})
	waitFor(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return beats["reader"] > 0 && beats["commands"] > 0
	})
	h.reader.c <- card(1)
	waitFor(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return beats["reader"] > 1
	})
	if err := h.stop(); err != nil {
		t.Fatalf("Run returned %v after cancel, want nil", err)
	}
	if _, err := os.Stat(h.socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after Run: %v", err)
	}
}

func TestRunEndsWhenALoopFails(t *testing.T) {
	h := startHarness(t, harnessOpts{noRun: true})
	ln, err := localapi.Listen(h.socket)
	if err != nil {
		t.Fatal(err)
	}
	ln.Close() // the API loop fails at once
	done := make(chan error, 1)
	go func() { done <- h.a.Run(context.Background(), ln) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "agent: api:") {
			t.Fatalf("Run returned %v, want the API loop's error", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not end after a loop failed")
	}
}

func TestBootRecords(t *testing.T) {
	h := startHarness(t, harnessOpts{config: func(c *config.Config) {
		// A store cut short while being created: the agent starts on a fresh one and says so.
		if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(c.DataDir, "station.db"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}})
	rec := recordsOfType(t, h.a, contract.TypeStoreRecovered)
	if len(rec) != 1 || rec[0].Seq != 1 || rec[0].Error == nil || rec[0].Error.Code != contract.ErrStoreBroken ||
		rec[0].Data["seq_restarted"] != true || !strings.Contains(rec[0].Data["moved_to"].(string), ".broken-") {
		t.Fatalf("store.recovered %+v", rec)
	}
	boot := recordsOfType(t, h.a, contract.TypeBoot)
	if len(boot) != 1 || boot[0].Seq != 2 || boot[0].Data["version"] != "test" || boot[0].Data["sim"] != false {
		t.Fatalf("station.boot %+v", boot)
	}
}

// failingIndicator cannot blink.
type failingIndicator struct{ *fakeIndicator }

func (failingIndicator) Locate(time.Duration) error {
	return errors.New("indicator: GPIO17 write failed")
}

func TestSelfTestChecks(t *testing.T) {
	t.Run("working parts are exercised", func(t *testing.T) {
		h := startHarness(t, harnessOpts{})
		h.door.set(true, time.Now())
		// The door.open record is written by the door's loop: wait for it, so the store's count
		// is known (boot and door.open).
		waitFor(t, func() bool { return len(recordsOfType(t, h.a, contract.TypeDoorOpen)) == 1 })
		st := h.a.SelfTest()
		details := map[string]string{}
		for _, c := range st.Checks {
			if !c.OK && c.Name != "broker" {
				t.Errorf("check %+v", c)
			}
			details[c.Name] = c.Detail
		}
		for name, want := range map[string]string{
			"store":       "2 waiting, ",
			"broker":      "not connected to " + h.a.cfg.MQTT.Broker,
			"reader":      "PN532 v1.6, ok",
			"indicator":   "ok, blinking locate for 2s",
			"door":        "ok, door open",
			"environment": "ok, 22.0°C, 45% RH",
			"display":     "ok",
		} {
			if !strings.HasPrefix(details[name], want) {
				t.Errorf("%s: %q, want %q", name, details[name], want)
			}
		}
		h.ind.mu.Lock()
		locate := h.ind.locate
		h.ind.mu.Unlock()
		if locate != 2*time.Second {
			t.Errorf("the indicator was not made to blink: locate %v", locate)
		}
	})
	t.Run("nothing fitted", func(t *testing.T) {
		h := startHarness(t, harnessOpts{hardware: func(hw *Hardware, _ *fakes) { *hw = Hardware{} }})
		for _, c := range h.a.SelfTest().Checks {
			if c.Name != "store" && c.Name != "broker" && c.Name != "security" && (!c.OK || c.Detail != "not configured") {
				t.Errorf("check %+v", c)
			}
		}
		if h.a.components() != nil || h.a.environment()["temp_c"] != 0 || h.a.indicatorState() != nil {
			t.Fatal("parts reported that are not fitted")
		}
	})
	t.Run("a failing indicator", func(t *testing.T) {
		h := startHarness(t, harnessOpts{hardware: func(hw *Hardware, f *fakes) {
			hw.Indicator = func() (Indicator, error) { return failingIndicator{f.ind}, nil }
		}})
		for _, c := range h.a.SelfTest().Checks {
			if c.Name == "indicator" && (c.OK || !strings.Contains(c.Detail, "GPIO17 write failed")) {
				t.Errorf("check %+v", c)
			}
		}
	})
}

func TestIndicatorState(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	h.a.indicate(indicator.Recorded)
	st := h.a.Status().Indicator
	if st == nil || st.Pattern != string(indicator.Recorded) || st.LEDs != "off" {
		t.Fatalf("indicator state %+v", st)
	}
}

func TestLogRing(t *testing.T) {
	r := NewLogRing(3)
	if got := r.Tail(5); len(got) != 0 {
		t.Fatalf("empty ring %q", got)
	}
	w := func(s string) {
		if n, err := r.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write %q: %d %v", s, n, err)
		}
	}
	w("one\ntw")
	w("o\n")
	if got := r.Tail(5); !slices.Equal(got, []string{"one", "two"}) {
		t.Fatalf("tail %q", got)
	}
	w("three\nfour\nfive\n")
	if got := r.Tail(5); !slices.Equal(got, []string{"three", "four", "five"}) {
		t.Fatalf("tail after wrapping %q", got)
	}
	if got := r.Tail(1); !slices.Equal(got, []string{"five"}) {
		t.Fatalf("tail 1 %q", got)
	}
	// Long lines are cut at 1 KiB, whether written whole or in pieces.
	w(strings.Repeat("a", 3000) + "\n")
	w(strings.Repeat("b", 700))
	w(strings.Repeat("b", 700) + "\n")
	got := r.Tail(2)
	if len(got) != 2 || got[0] != strings.Repeat("a", maxLogLine) || got[1] != strings.Repeat("b", maxLogLine) {
		t.Fatalf("long lines: %d and %d bytes", len(got[0]), len(got[1]))
	}
}

func TestSmallHelpers(t *testing.T) {
	if got := joinDetail("", "a", "", "b"); got != "a, b" {
		t.Errorf("joinDetail %q", got)
	}
	if cardOf(nil) != nil {
		t.Error("cardOf(nil) is not nil")
	}
	if a, b := newID(), newID(); len(a) != 32 || a == b {
		t.Errorf("ids %q %q", a, b)
	}
	ts := time.Date(2026, 1, 2, 11, 4, 5, 6, time.FixedZone("CST", 8*3600))
	if got := rfc3339(ts); got != "2026-01-02T03:04:05.000000006Z" {
		t.Errorf("rfc3339 %q", got)
	}
}

// records stored by the agent are valid JSON records of the events stream.
func TestRecordsInStoreMatchRecent(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	h.reader.c <- card(1)
	waitFor(t, func() bool { return len(recordsOfType(t, h.a, contract.TypeCardTap)) == 1 })
	recs, err := h.a.store.Read(store.Events, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	recent := h.a.Recent(10)
	if len(recs) != 2 || len(recent) != 2 {
		t.Fatalf("%d stored, %d recent", len(recs), len(recent))
	}
	for i := range recs {
		if string(recs[i].Payload) != string(recent[i]) {
			t.Fatalf("record %d differs:\nstore  %s\nrecent %s", i, recs[i].Payload, recent[i])
		}
	}
}
