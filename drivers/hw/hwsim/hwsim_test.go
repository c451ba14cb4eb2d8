package hwsim

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"

	"station.dev/agent/drivers/door"
	"station.dev/agent/drivers/envsensor"
	"station.dev/agent/drivers/hw"
	"station.dev/agent/drivers/indicator"
	"station.dev/agent/drivers/pn532"
	"station.dev/agent/drivers/vcard"
	"station.dev/agent/internal/clock/clocktest"
)

// testKey is a card token key for tests only.
var testKey = []byte("hwsim test card key, not a real one")

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func card(t *testing.T, profile string, n int) *vcard.Card {
	t.Helper()
	p, ok := vcard.Builtin(profile)
	if !ok {
		t.Fatalf("no built-in card %s", profile)
	}
	return p.Card(n)
}

func TestFitted(t *testing.T) {
	if got, want := New(Config{}).Fitted(), (hw.Fitted{Reader: true, Indicator: true, Door: true, Environment: true}); got != want {
		t.Fatalf("Fitted() = %+v, want %+v", got, want)
	}
	if got := New(Config{Display: true}).Fitted(); !got.Display {
		t.Fatalf("Fitted() = %+v with a display", got)
	}
}

// TestReadsPresentedCard presents a card and reads it through OpenReader:
// the real pn532 driver and cardreader run against the emulated chip.
func TestReadsPresentedCard(t *testing.T) {
	s := New(Config{Key: testKey, PollInterval: time.Millisecond})
	defer s.Close()
	beats := 0
	r, err := s.OpenReader(func() { beats++ })
	if err != nil {
		t.Fatal(err)
	}
	gone := s.Present(card(t, "unionpay-debit", 0))
	p, err := r.Next(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	<-gone
	if p.Error != "" || p.Card == nil {
		t.Fatalf("presentation %+v", p)
	}
	c := p.Card
	if c.Kind != "emv" || c.Masked != "622848******1234" || c.Scheme != "unionpay" || c.AID != "A000000333010101" || len(c.Token) != 64 || c.RandomUID {
		t.Fatalf("card %+v", c)
	}
	// What a record carries: no card number, no UID.
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); strings.Contains(s, "6228480000031234" /* synthetic */) || strings.Contains(strings.ToUpper(s), "1A2B3C4D") {
		t.Fatalf("the presentation holds card data: %s", s)
	}
	if beats == 0 {
		t.Fatal("no beat while polling")
	}
	if h := r.Health(); h.State != "ok" || h.Firmware == "" {
		t.Fatalf("health %+v", h)
	}

	// The same card again, through the chip that Chip returns.
	s.Chip().Present(card(t, "unionpay-debit", 0))
	p2, err := r.Next(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if p2.Card == nil || p2.Card.Token != c.Token {
		t.Fatalf("second presentation %+v", p2)
	}
}

// TestDoor opens and closes the emulated door on the fake clock.
func TestDoor(t *testing.T) {
	for _, openLow := range []bool{false, true} {
		clk := clocktest.New()
		s := newStation(Config{DoorOpenLow: openLow}, clk)
		d, err := s.OpenDoor()
		if err != nil {
			t.Fatal(err)
		}
		clk.WaitCreated(t, 1)
		if d.State().Open {
			t.Fatal("the door starts open")
		}
		if lvl := s.sw.Read(); (lvl == gpio.High) != openLow {
			t.Fatalf("open_low %t: a closed door reads %s", openLow, lvl)
		}
		clk.Do(t, func() { s.SetDoor(true) })
		clk.AdvanceTo(t, door.DefaultDebounce)
		select {
		case ev := <-d.Events():
			if !ev.Open || !ev.At.Equal(clk.Start()) {
				t.Fatalf("event %+v", ev)
			}
		default:
			t.Fatal("no event after the debounce window")
		}
		if !d.State().Open {
			t.Fatal("state closed")
		}

		// Opened again, the door finds the switch as it was.
		d2, err := s.OpenDoor()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := <-d.Events(); ok {
			t.Fatal("the first door was not halted")
		}
		if !d2.State().Open {
			t.Fatal("the switch lost its state")
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestEnvironment(t *testing.T) {
	s := New(Config{})
	defer s.Close()
	sen, err := s.OpenEnvironment()
	if err != nil {
		t.Fatal(err)
	}
	near := func(a, b float64) bool { return math.Abs(a-b) <= 0.01 }
	h := 71.5
	s.SetEnvironment(31.25, &h)
	rd, err := sen.Read()
	if err != nil {
		t.Fatal(err)
	}
	if !near(rd.TempC, 31.25) || !near(rd.Humidity, 71.5) {
		t.Fatalf("reading %+v", rd)
	}
	// No humidity given: it stays.
	s.SetEnvironment(-5, nil)
	if rd, err = sen.Read(); err != nil || !near(rd.TempC, -5) || !near(rd.Humidity, 71.5) {
		t.Fatalf("reading %+v, %v", rd, err)
	}
	if sen.Model() != "BME280" {
		t.Fatalf("model %s", sen.Model())
	}
}

func TestIndicator(t *testing.T) {
	clk := clocktest.New()
	s := newStation(Config{}, clk)
	defer s.Close()
	ind, err := s.OpenIndicator()
	if err != nil {
		t.Fatal(err)
	}
	clk.WaitCreated(t, 1)
	clk.Do(t, func() { _ = ind.Show(indicator.Refused) })
	if got := ind.State(); got.Pattern != indicator.Refused || got.LEDs != "red" {
		t.Fatalf("state %+v", got)
	}
	if s.pins.Red.Level() != gpio.High || s.pins.Green.Level() != gpio.Low {
		t.Fatalf("pins: red %s, green %s", s.pins.Red.Function(), s.pins.Green.Function())
	}
}

func TestDisplay(t *testing.T) {
	s := New(Config{})
	if _, err := s.OpenDisplay(); !errors.Is(err, hw.ErrNotFitted) || err.Error() != "hwsim: display not fitted: not enabled" {
		t.Fatalf("OpenDisplay without a display: %v", err)
	}
	s = New(Config{Display: true})
	defer s.Close()
	d, err := s.OpenDisplay()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Show("station sim-01", "online"); err != nil {
		t.Fatal(err)
	}
	if got := s.panel.Lines()[:3]; !reflect.DeepEqual(got, []string{"station sim-01", "online", ""}) {
		t.Fatalf("panel %q", got)
	}
}

// TestCloseHaltsEverything opens every part, closes the station and checks
// that each part is halted and no goroutine is left.
func TestCloseHaltsEverything(t *testing.T) {
	before := runtime.NumGoroutine()
	s := New(Config{Key: testKey, Display: true})
	r, err := s.OpenReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	ind, err := s.OpenIndicator()
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.OpenDoor()
	if err != nil {
		t.Fatal(err)
	}
	sen, err := s.OpenEnvironment()
	if err != nil {
		t.Fatal(err)
	}
	disp, err := s.OpenDisplay()
	if err != nil {
		t.Fatal(err)
	}
	// A Next waiting for a card ends with Close.
	next := make(chan error, 1)
	go func() {
		_, err := r.Next(ctxT(t))
		next <- err
	}()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-next; !errors.Is(err, pn532.ErrHalted) {
		t.Fatalf("Next during Close: %v", err)
	}
	if st, _ := ind.Health(); st != indicator.HealthDown {
		t.Fatalf("indicator %s", st)
	}
	if _, ok := <-d.Events(); ok {
		t.Fatal("door events open")
	}
	if st, _ := sen.Health(); st != envsensor.HealthDown {
		t.Fatalf("sensor %s", st)
	}
	if st, _ := disp.Health(); st != "down" || s.panel.On() {
		t.Fatalf("display %s, panel on %t", st, s.panel.On())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenReader(nil); !errors.Is(err, hw.ErrClosed) {
		t.Fatalf("OpenReader after Close: %v", err)
	}
	if _, err := s.OpenDoor(); !errors.Is(err, hw.ErrClosed) || err.Error() != "hwsim: open door switch: station hardware closed" {
		t.Fatalf("OpenDoor after Close: %v", err)
	}
	// Goroutines end asynchronously: poll, with a deadline.
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after Close:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond)
	}
}
