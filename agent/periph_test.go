package agent

import (
	"errors"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"station.dev/agent/agent/config"
	"station.dev/agent/agent/contract"
	"station.dev/agent/drivers/cardreader"
	"station.dev/agent/drivers/envsensor"
	"station.dev/agent/drivers/indicator"
	"station.dev/agent/internal/clock/clocktest"
	"station.dev/agent/mqtt/brokertest"
	"station.dev/agent/store"
)

// Peripherals with fake hardware. Where time matters the agent runs on the manual clock and the
// test runs the loop under test itself (noRun), so it knows when the loop waits again.

// idleTimers is how many timers the peripherals loop holds while every fitted part is open and
// idle: one health poll per part, the display refresh and the sensor interval.
const idleTimers = 4 + 1 + 1

func TestPeripheralOpenedAfterFailure(t *testing.T) {
	clk := clocktest.New()
	var working atomic.Bool
	h := startHarness(t, harnessOpts{clock: clk, noRun: true, hardware: func(hw *Hardware, f *fakes) {
		hw.Indicator = func() (Indicator, error) {
			if !working.Load() {
				return nil, errors.New("hw: GPIO17 not found")
			}
			return f.ind, nil
		}
		hw.Door = func() (Door, error) {
			if !working.Load() {
				return nil, errors.New("hw: GPIO27 not found")
			}
			return f.door, nil
		}
		hw.Environment = func() (EnvSensor, error) {
			if !working.Load() {
				return nil, errors.New("hw: no BME280 at 0x76")
			}
			return f.env, nil
		}
		hw.Display = func() (Display, error) {
			if !working.Load() {
				return nil, errors.New("hw: no SSD1306 at 0x3c")
			}
			return f.display, nil
		}
	}})
	runLoop(t, h.a.peripheralsLoop)
	clk.WaitCreated(t, 4) // each part failed once and waits to retry

	want := map[string]string{
		contract.ComponentIndicator:   "GPIO17",
		contract.ComponentDoor:        "GPIO27",
		contract.ComponentEnvironment: "BME280",
		contract.ComponentDisplay:     "SSD1306",
	}
	comps := h.a.components()
	for name, reason := range want {
		if c := comps[name]; c.State != contract.HealthDown || !strings.Contains(c.Detail, reason) {
			t.Errorf("%s: %+v, want down mentioning %s", name, c, reason)
		}
	}
	if h.a.indicatorState() != nil || h.a.doorStatus() != nil {
		t.Fatal("a part that failed to open is reported as working")
	}
	for _, c := range h.a.selfTest().Checks {
		if reason, ok := want[c.Name]; ok && (c.OK || !strings.Contains(c.Detail, "down: ") || !strings.Contains(c.Detail, reason)) {
			t.Errorf("self-test %s: %+v", c.Name, c)
		}
	}

	working.Store(true)
	clk.Advance(openBackoffMin) // the first retry comes within the minimum backoff
	waitFor(t, func() bool {
		for _, c := range h.a.components() {
			if c.State != contract.HealthOK {
				return false
			}
		}
		return true
	})
	if h.a.indicatorState() == nil || h.a.doorStatus() == nil {
		t.Fatal("parts opened late are not used")
	}
	select {
	case lines := <-h.display.shown:
		if len(lines) == 0 || lines[0] != "agent-test" {
			t.Fatalf("display shows %q", lines)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the display opened late shows nothing")
	}
}

func TestDisplayShowsStatus(t *testing.T) {
	clk := clocktest.New()
	h := startHarness(t, harnessOpts{clock: clk, noRun: true})
	runLoop(t, h.a.peripheralsLoop)
	first := <-h.display.shown
	if !slices.Equal(first, []string{"agent-test", "offline  queue 0"}) {
		t.Fatalf("display at start %q", first)
	}
	clk.WaitCreated(t, idleTimers)
	if res := h.a.handlePresentation(card(1)); !res.OK {
		t.Fatalf("tap %+v", res)
	}
	clk.Advance(displayInterval)
	select {
	case lines := <-h.display.shown:
		if !slices.Equal(lines, []string{"agent-test", "offline  queue 1", "last: recorded_offline"}) {
			t.Fatalf("display after a tap %q", lines)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the display was not refreshed")
	}
}

func TestDoorRecordsAndStatus(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	at := time.Date(2026, 2, 3, 4, 5, 6, 7, time.UTC)
	h.door.set(true, at)
	waitFor(t, func() bool { return len(recordsOfType(t, h.a, contract.TypeDoorOpen)) == 1 })
	rec := recordsOfType(t, h.a, contract.TypeDoorOpen)[0]
	if rec.Data["changed_at"] != "2026-02-03T04:05:06.000000007Z" || rec.Seq != 2 {
		t.Fatalf("door.open %+v", rec)
	}
	if d := h.a.Status().Door; d == nil || !d.Open {
		t.Fatalf("status door %+v", d)
	}
	if !strings.Contains(h.a.statusKey(), "/door-open") {
		t.Fatalf("status key %q with the door open", h.a.statusKey())
	}
	h.door.set(false, at.Add(time.Minute))
	waitFor(t, func() bool { return len(recordsOfType(t, h.a, contract.TypeDoorClose)) == 1 })
	if d := h.a.Status().Door; d == nil || d.Open {
		t.Fatalf("status door %+v", d)
	}
	var self contract.Check
	for _, c := range h.a.selfTest().Checks {
		if c.Name == contract.ComponentDoor {
			self = c
		}
	}
	if !self.OK || !strings.Contains(self.Detail, "door closed") {
		t.Fatalf("self-test door %+v", self)
	}
}

func TestEnvironmentAlarms(t *testing.T) {
	clk := clocktest.New()
	h := startHarness(t, harnessOpts{clock: clk, noRun: true})
	runLoop(t, h.a.peripheralsLoop)
	clk.WaitCreated(t, idleTimers)
	set := func(rd envsensor.Reading, err error) {
		h.env.mu.Lock()
		h.env.rd, h.env.err = rd, err
		h.env.mu.Unlock()
	}
	// read pokes the sensor loop and waits until it waits again.
	read := func() { clk.Do(t, func() { h.a.periph.envPoke <- struct{}{} }) }
	quantities := func(typ string) []string {
		var out []string
		for _, r := range recordsOfType(t, h.a, typ) {
			out = append(out, r.Data["quantity"].(string))
		}
		return out
	}

	if env := h.a.environment(); env["temp_c"] != 22 || env["humidity"] != 45 || env["pressure_pa"] != 101325 {
		t.Fatalf("environment at start %v", env)
	}
	set(envsensor.Reading{TempC: 22, Humidity: 95, PressurePa: 101325}, nil)
	read()
	set(envsensor.Reading{TempC: -30, Humidity: 95, PressurePa: 101325}, nil)
	read()
	if got := quantities(contract.TypeEnvAlarm); !slices.Equal(got, []string{"humidity_high", "temp_low"}) {
		t.Fatalf("alarms %v", got)
	}
	// Within the hysteresis the alarms stay.
	set(envsensor.Reading{TempC: -19, Humidity: 89, PressurePa: 101325}, nil)
	read()
	if got := quantities(contract.TypeEnvOK); len(got) != 0 {
		t.Fatalf("cleared within the hysteresis: %v", got)
	}
	set(envsensor.Reading{TempC: 22, Humidity: 45, PressurePa: 101325}, nil)
	read()
	if got := quantities(contract.TypeEnvOK); len(got) != 2 {
		t.Fatalf("env.ok records %v, want both alarms cleared", got)
	}

	// A failed read records nothing and keeps the last reading.
	set(envsensor.Reading{TempC: 80}, errors.New("bme280: i2c: no ack"))
	read()
	if n := len(recordsOfType(t, h.a, contract.TypeEnvAlarm)); n != 2 {
		t.Fatalf("%d alarms after a failed read", n)
	}
	if env := h.a.environment(); env["temp_c"] != 22 {
		t.Fatalf("environment after a failed read %v", env)
	}
	var self contract.Check
	for _, c := range h.a.selfTest().Checks {
		if c.Name == contract.ComponentEnvironment {
			self = c
		}
	}
	if self.OK || !strings.Contains(self.Detail, "read failed") {
		t.Fatalf("self-test environment %+v", self)
	}

	// Without a poke the sensor is read every interval.
	set(envsensor.Reading{TempC: 70, Humidity: math.NaN(), PressurePa: 101325}, nil) // a BMP280
	clk.Advance(h.a.cfg.Env.Interval.D())
	waitFor(t, func() bool { return len(recordsOfType(t, h.a, contract.TypeEnvAlarm)) == 3 })
	if env := h.a.environment(); env["temp_c"] != 70 {
		t.Fatalf("environment %v", env)
	}
	if _, ok := h.a.environment()["humidity"]; ok {
		t.Fatal("a sensor without humidity reports humidity")
	}
}

func TestIndicatorPatterns(t *testing.T) {
	b := brokertest.Embedded(t, "127.0.0.1:0")
	h := startHarness(t, harnessOpts{broker: b.URL(), config: func(c *config.Config) { c.Store.MaxBytes = 1 << 20 }})
	shown := func() indicator.Pattern {
		t.Helper()
		select {
		case p := <-h.ind.shown:
			return p
		case <-time.After(10 * time.Second):
			t.Fatal("nothing shown")
			return ""
		}
	}
	waitFor(t, func() bool { return h.a.link.Stats().Connected })
	h.reader.c <- card(1)
	if p := shown(); p != indicator.Recorded {
		t.Fatalf("tap online shown as %q", p)
	}
	h.reader.c <- cardreader.Presentation{Error: cardreader.CodeUnsupported, Detail: "no known application"}
	if p := shown(); p != indicator.Error {
		t.Fatalf("unreadable card shown as %q", p)
	}

	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return !h.a.link.Stats().Connected })
	h.reader.c <- card(2)
	if p := shown(); p != indicator.RecordedOffline {
		t.Fatalf("tap offline shown as %q", p)
	}

	fillStore(t, h.a)
	h.reader.c <- card(3)
	if p := shown(); p != indicator.Refused {
		t.Fatalf("tap refused shown as %q", p)
	}
	if st, _ := h.a.store.Stats(); st.Streams[store.Events].Depth == 0 {
		t.Fatal("records were lost")
	}
}
