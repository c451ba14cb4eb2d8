package agent

import (
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"station.dev/agent/agent/config"
	"station.dev/agent/agent/contract"
	"station.dev/agent/drivers/pn532"
	"station.dev/agent/internal/clock/clocktest"
	"station.dev/agent/mqtt/brokertest"
	"station.dev/agent/store"
)

func TestStatusKey(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	const base = "ok/display=ok/door=ok/environment=ok/indicator=ok"
	// The components come from a map: the key must not depend on its order.
	for i := 0; i < 100; i++ {
		if k := h.a.statusKey(); k != base {
			t.Fatalf("status key %q, want %q (call %d)", k, base, i)
		}
	}

	h.reader.setHealth(pn532.Health{State: contract.HealthDegraded})
	if k := h.a.statusKey(); k != "degraded/display=ok/door=ok/environment=ok/indicator=ok" {
		t.Fatalf("reader degraded: %q", k)
	}
	h.reader.setHealth(pn532.Health{State: contract.HealthOK})

	h.door.set(true, time.Now())
	if k := h.a.statusKey(); k != "ok/door-open/display=ok/door=ok/environment=ok/indicator=ok" {
		t.Fatalf("door open: %q", k)
	}
	h.door.set(false, time.Now())

	h.a.periph.parts[contract.ComponentDisplay].set(contract.HealthDown, "i2c: no ack")
	if k := h.a.statusKey(); k != "ok/display=down/door=ok/environment=ok/indicator=ok" {
		t.Fatalf("display down: %q", k)
	}
	h.a.periph.parts[contract.ComponentDisplay].set(contract.HealthOK, "")

	h.a.storeFull(store.ErrFull)
	if k := h.a.statusKey(); k != "ok/full/display=ok/door=ok/environment=ok/indicator=ok" {
		t.Fatalf("store full: %q", k)
	}
	// A record that fits again ends the full episode.
	if _, err := submitOne(h.a, contract.SubmitRequest{Type: "kiosk.receipt"}); err != nil {
		t.Fatal(err)
	}
	if k := h.a.statusKey(); k != base {
		t.Fatalf("after the store has room again: %q", k)
	}
}

func TestStoreFullEpisodes(t *testing.T) {
	h := startHarness(t, harnessOpts{noRun: true})
	h.a.storeFull(store.ErrFull)
	h.a.storeFull(store.ErrFull) // the same episode: no second alarm
	alarms := recordsOfType(t, h.a, contract.TypeStoreFull)
	if len(alarms) != 1 || alarms[0].Error == nil || alarms[0].Error.Code != contract.ErrStoreFull {
		t.Fatalf("store.full alarms %+v", alarms)
	}
	if q := h.a.Queue(); !q.Full || q.FullReason != contract.ErrStoreFull {
		t.Fatalf("queue %+v", q)
	}
	if line := h.a.statusLine(); line != "offline, 1 waiting, reader down, STORE FULL" {
		t.Fatalf("status line %q", line)
	}
	if _, err := submitOne(h.a, contract.SubmitRequest{Type: "kiosk.receipt"}); err != nil {
		t.Fatal(err)
	}
	if q := h.a.Queue(); q.Full || q.FullReason != "" {
		t.Fatalf("queue after room again %+v", q)
	}

	// A full disk is another episode, with its own reason.
	h.a.storeFull(fmt.Errorf("store: append: %w", syscall.ENOSPC))
	alarms = recordsOfType(t, h.a, contract.TypeStoreFull)
	if len(alarms) != 2 || alarms[1].Error.Code != contract.ErrDiskFull {
		t.Fatalf("store.full alarms %+v", alarms)
	}
	if q := h.a.Queue(); q.FullReason != contract.ErrDiskFull {
		t.Fatalf("queue %+v", q)
	}

	for err, want := range map[error]string{
		store.ErrFull:  "refused: the station's store is full",
		syscall.ENOSPC: "refused: no space left on the station's disk",
	} {
		if got := refusal(err); got != want || !noRoom(err) {
			t.Errorf("refusal(%v) = %q, noRoom %v", err, got, noRoom(err))
		}
	}
	if noRoom(syscall.EIO) {
		t.Error("an I/O error taken for a full store")
	}
}

func TestStatusLoopNoticesClockJumps(t *testing.T) {
	clk := clocktest.New()
	statusLines := make(chan string, 10)
	h := startHarness(t, harnessOpts{clock: clk, noRun: true, options: func(o *Options) {
		o.Status = func(line string) { statusLines <- line }
	}})
	runLoop(t, h.a.statusLoop)
	clk.WaitCreated(t, 1)
	tick := func() { clk.Do(t, func() { clk.Advance(statusInterval) }) }
	jumps := func() []contract.Record { return recordsOfType(t, h.a, contract.TypeClockJump) }

	tick()
	if len(jumps()) != 0 {
		t.Fatalf("clock.jump without a step: %+v", jumps())
	}
	if l := <-statusLines; l != "offline, 0 waiting, reader down" {
		t.Fatalf("status line %q", l)
	}

	before := clk.Now()
	clk.Step(time.Hour) // NTP's first sync
	tick()
	j := jumps()
	if len(j) != 1 || j[0].Data["jump_ms"] != float64(time.Hour.Milliseconds()) ||
		j[0].Data["expected"] != rfc3339(before.Add(statusInterval)) || j[0].Data["now"] != rfc3339(before.Add(time.Hour+statusInterval)) {
		t.Fatalf("clock.jump records %+v", j)
	}
	if l := <-statusLines; l != "offline, 1 waiting, reader down" {
		t.Fatalf("status line after the jump %q", l)
	}

	tick() // nothing changed: no record, no new line
	if len(jumps()) != 1 || len(statusLines) != 0 {
		t.Fatalf("a quiet tick wrote %d jumps and %d lines", len(jumps())-1, len(statusLines))
	}

	clk.Step(-10 * time.Second)
	tick()
	if j := jumps(); len(j) != 2 || j[1].Data["jump_ms"] != float64(-10000) {
		t.Fatalf("backward step: %+v", j)
	}

	// A small step is a slew, not a jump.
	clk.Step(clockJumpThreshold / 2)
	tick()
	if n := len(jumps()); n != 2 {
		t.Fatalf("%d jumps after a small step", n)
	}
}

func TestTelemetryContent(t *testing.T) {
	h := startHarness(t, harnessOpts{parts: func(p *Parts) { p.ClockSynced = func() bool { return true } }})
	wantOK(t, h.run(t, "ping", nil), nil)
	wantCode(t, h.run(t, "dance", nil), contract.CodeUnknownCommand, "dance")
	tel := h.a.telemetry() // waiting: the boot record and the two responses
	if tel.BootID != h.a.bootID || !tel.ClockSynced || tel.Reader.State != contract.HealthOK || tel.Reader.Firmware != "PN532 v1.6" {
		t.Fatalf("telemetry %+v", tel)
	}
	if tel.Queue.Depth != 3 || tel.Queue.Streams != nil || tel.Queue.MaxBytes == 0 {
		t.Fatalf("telemetry queue %+v", tel.Queue)
	}
	if len(tel.Components) != 4 || tel.Door == nil || tel.Environment["temp_c"] != 22 {
		t.Fatalf("telemetry peripherals %+v %+v %v", tel.Components, tel.Door, tel.Environment)
	}
	if tel.Commands != (contract.CommandStats{Received: 2, Executed: 1, Refused: 1}) {
		t.Fatalf("telemetry commands %+v", tel.Commands)
	}
	if _, err := time.Parse(time.RFC3339Nano, tel.TS); err != nil || tel.UptimeMS < 0 {
		t.Fatalf("telemetry ts %q uptime %d", tel.TS, tel.UptimeMS)
	}
}

func TestTelemetryLoopKeepsHeartbeatsOffline(t *testing.T) {
	clk := clocktest.New()
	h := startHarness(t, harnessOpts{clock: clk, noRun: true})
	kept := func() [][]byte {
		h.a.tel.mu.Lock()
		defer h.a.tel.mu.Unlock()
		return append([][]byte(nil), h.a.tel.buf...)
	}
	interval := h.a.cfg.Telemetry.Interval.D()
	runLoop(t, h.a.telemetryLoop)
	clk.WaitCreated(t, 1)
	clk.Advance(interval/4 + 1) // the first heartbeat comes within a quarter interval
	clk.WaitCreated(t, 2)
	clk.Advance(interval)
	waitFor(t, func() bool { return len(kept()) == 2 })
	var tel contract.Telemetry
	if err := json.Unmarshal(kept()[1], &tel); err != nil || tel.BootID != h.a.bootID {
		t.Fatalf("kept heartbeat %s: %v", kept()[1], err)
	}
	if st, _ := h.a.store.Stats(); st.Streams[store.Telemetry].Depth != 0 {
		t.Fatal("heartbeats stored one by one")
	}
}

func TestTelemetryOnline(t *testing.T) {
	url := brokertest.URL(t)
	h := startHarness(t, harnessOpts{broker: url, config: func(c *config.Config) { c.Telemetry.Interval = config.Duration(time.Hour) }})
	sub := brokertest.Subscribe(t, url, h.a.topics.Telemetry, 10)
	waitFor(t, func() bool { return h.a.link.Stats().Connected })

	// Heartbeats kept while offline go out through the store once the link is back.
	h.a.tel.mu.Lock()
	h.a.tel.buf = [][]byte{[]byte(`{"kept":1}`), []byte(`{"kept":2}`)}
	h.a.tel.mu.Unlock()
	h.a.sendTelemetry()
	seen := map[string]bool{}
	for len(seen) < 3 {
		m := sub.Next(t, 15*time.Second)
		var v struct {
			Kept   int    `json:"kept"`
			BootID string `json:"boot_id"`
		}
		if err := json.Unmarshal(m.Payload, &v); err != nil {
			t.Fatal(err)
		}
		switch {
		case v.Kept != 0:
			seen[fmt.Sprint("kept", v.Kept)] = true
		case v.BootID == h.a.bootID:
			seen["live"] = true
		default:
			t.Fatalf("telemetry %s", m.Payload)
		}
	}
	waitFor(t, func() bool {
		st, err := h.a.store.Stats()
		return err == nil && st.Streams[store.Telemetry].Depth == 0
	})

	for _, c := range h.a.selfTest().Checks {
		if c.Name == "broker" && (!c.OK || !strings.Contains(c.Detail, "connected to "+url)) {
			t.Fatalf("self-test broker %+v", c)
		}
	}
	if line := h.a.statusLine(); !strings.HasPrefix(line, "online, ") {
		t.Fatalf("status line %q", line)
	}
	if st := h.a.Status(); st.Link == nil || !st.Link.Connected || st.Link.Since == "" || st.Link.Connects < 1 {
		t.Fatalf("status link %+v", st.Link)
	}
}
