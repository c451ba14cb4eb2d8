package indicator

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/conn/v3/pin"
)

type rig struct {
	clk           *fakeClock
	log           *pinLog
	r, g, b, buzz *recPin
	ind           *Indicator
}

func newRig(t *testing.T, mut func(*rig, *Config)) *rig {
	t.Helper()
	clk := newFakeClock()
	x := &rig{clk: clk, log: &pinLog{clk: clk}}
	mk := func(n string) *recPin { return &recPin{BasicPin: pin.BasicPin{N: n}, log: x.log} }
	x.r, x.g, x.b, x.buzz = mk("R"), mk("G"), mk("B"), mk("BZ")
	cfg := Config{
		Red:    Output{Pin: x.r},
		Green:  Output{Pin: x.g},
		Blue:   Output{Pin: x.b},
		Buzzer: Output{Pin: x.buzz},
		Clock:  clk,
	}
	if mut != nil {
		mut(x, &cfg)
	}
	ind, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	x.ind = ind
	t.Cleanup(func() { _ = ind.Halt() })
	// The goroutine has shown the idle pattern and waits.
	clk.WaitCreated(t, 1)
	return x
}

func (x *rig) show(t *testing.T, p Pattern) {
	t.Helper()
	x.clk.Do(t, func() {
		if err := x.ind.Show(p); err != nil {
			t.Fatal(err)
		}
	})
}

func (x *rig) wantLog(t *testing.T, want ...string) {
	t.Helper()
	got := x.log.take()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("pin changes:\n got %q\nwant %q", got, want)
	}
}

func (x *rig) wantState(t *testing.T, want State) {
	t.Helper()
	if got := x.ind.State(); !reflect.DeepEqual(got, want) {
		t.Fatalf("state:\n got %+v\nwant %+v", got, want)
	}
}

func TestNewTurnsOutputsOffThenIdle(t *testing.T) {
	x := newRig(t, nil)
	// New forces every output off, then the goroutine starts the heartbeat.
	x.wantLog(t, "0s R Low", "0s G Low", "0s B Low", "0s BZ Low", "0s G High")
	x.wantState(t, State{Pattern: Idle, LEDs: "green", Active: []Pattern{Idle}})
	x.clk.AdvanceTo(t, 2999*time.Millisecond)
	x.wantLog(t, "60ms G Low")
	x.clk.AdvanceTo(t, 3100*time.Millisecond)
	x.wantLog(t, "3s G High", "3.06s G Low")
	x.wantState(t, State{Pattern: Idle, LEDs: "off", Active: []Pattern{Idle}})
}

// TestShowStartsImmediately checks that a pattern starts at the instant of
// Show, not at the next timer: the first pin change carries the same fake
// time as the call.
func TestShowStartsImmediately(t *testing.T) {
	x := newRig(t, nil)
	x.clk.AdvanceTo(t, 1234*time.Millisecond)
	x.log.take()
	x.show(t, Refused)
	x.wantLog(t, "1.234s R High", "1.234s BZ PWM 500Hz")
	x.wantState(t, State{Pattern: Refused, LEDs: "red", Buzzer: true, Active: []Pattern{Refused, Idle}})
}

func TestRecordedTimeline(t *testing.T) {
	x := newRig(t, nil)
	x.clk.AdvanceTo(t, time.Second)
	x.log.take()
	x.show(t, Recorded)
	x.clk.AdvanceTo(t, 5100*time.Millisecond)
	// Recorded: green with a 150 ms beep for 1 s, then the heartbeat starts
	// afresh (green for 60 ms, so green simply stays on until 2.06 s).
	x.wantLog(t,
		"1s G High", "1s BZ PWM 2kHz",
		"1.15s BZ Low",
		"2.06s G Low",
		"5s G High",
		"5.06s G Low",
	)
	x.wantState(t, State{Pattern: Idle, LEDs: "off", Active: []Pattern{Idle}})
}

func TestRefusedAndErrorTimelines(t *testing.T) {
	x := newRig(t, nil)
	x.clk.AdvanceTo(t, time.Second)
	x.log.take()
	x.show(t, Refused)
	x.clk.AdvanceTo(t, 3*time.Second)
	x.wantLog(t,
		"1s R High", "1s BZ PWM 500Hz",
		"1.3s R Low", "1.3s BZ Low",
		"1.4s R High", "1.4s BZ PWM 500Hz",
		"1.7s BZ Low",
		"2.5s R Low", "2.5s G High",
		"2.56s G Low",
	)
	x.show(t, Error)
	x.clk.AdvanceTo(t, 5*time.Second)
	x.wantLog(t,
		"3s R High", "3s BZ PWM 2kHz",
		"3.1s R Low", "3.1s BZ Low",
		"3.2s R High", "3.2s BZ PWM 2kHz",
		"3.3s R Low", "3.3s BZ Low",
		"3.4s R High", "3.4s BZ PWM 2kHz",
		"3.5s BZ Low",
		"4.5s R Low", "4.5s G High",
		"4.56s G Low",
	)
}

func TestLocatePreemptedByFeedbackThenResumes(t *testing.T) {
	x := newRig(t, nil)
	x.clk.AdvanceTo(t, time.Second)
	x.log.take()
	x.clk.Do(t, func() {
		if err := x.ind.Locate(0); err != nil {
			t.Fatal(err)
		}
	})
	x.wantLog(t, "1s R High", "1s G High", "1s B High", "1s BZ PWM 3kHz")
	x.wantState(t, State{Pattern: Locate, LEDs: "white", Buzzer: true, Active: []Pattern{Locate, Idle}})
	x.clk.AdvanceTo(t, 1300*time.Millisecond)
	x.wantLog(t, "1.05s BZ Low", "1.25s R Low", "1.25s G Low", "1.25s B Low")

	// A tap pre-empts locate.
	x.show(t, RecordedOffline)
	x.wantLog(t, "1.3s R High", "1.3s G High", "1.3s BZ PWM 2kHz")
	x.wantState(t, State{Pattern: RecordedOffline, LEDs: "yellow", Buzzer: true, Active: []Pattern{RecordedOffline, Locate, Idle}})

	// When it ends, locate starts again from its first step.
	x.clk.AdvanceTo(t, 2400*time.Millisecond)
	x.wantLog(t,
		"1.45s BZ Low",
		"2.3s B High", "2.3s BZ PWM 3kHz",
		"2.35s BZ Low",
	)
	x.wantState(t, State{Pattern: Locate, LEDs: "white", Active: []Pattern{Locate, Idle}})

	// Clearing it brings the heartbeat back at once.
	x.clk.Do(t, func() {
		if err := x.ind.Clear(Locate); err != nil {
			t.Fatal(err)
		}
	})
	x.wantLog(t, "2.4s R Low", "2.4s B Low")
	x.wantState(t, State{Pattern: Idle, LEDs: "green", Active: []Pattern{Idle}})
}

func TestLocateDuration(t *testing.T) {
	x := newRig(t, nil)
	x.clk.Do(t, func() {
		if err := x.ind.Locate(2200 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
	})
	x.clk.AdvanceTo(t, 2199*time.Millisecond)
	if s := x.ind.State(); s.Pattern != Locate {
		t.Fatalf("pattern %s before the end of locate", s.Pattern)
	}
	x.log.take()
	x.clk.AdvanceTo(t, 2200*time.Millisecond)
	// At 2.2 s locate was white (2.05–2.25 s); the heartbeat starts green.
	x.wantLog(t, "2.2s R Low", "2.2s B Low")
	x.wantState(t, State{Pattern: Idle, LEDs: "green", Active: []Pattern{Idle}})
	if err := x.ind.Locate(-time.Second); err == nil {
		t.Fatal("negative locate duration accepted")
	}
}

func TestEqualPriorityReplaces(t *testing.T) {
	x := newRig(t, nil)
	x.clk.AdvanceTo(t, time.Second)
	x.show(t, Error)
	x.clk.AdvanceTo(t, 1150*time.Millisecond)
	x.log.take()
	// The answer to a new presentation replaces the old one for good.
	x.show(t, Recorded)
	x.wantState(t, State{Pattern: Recorded, LEDs: "green", Buzzer: true, Active: []Pattern{Recorded, Idle}})
	x.clk.AdvanceTo(t, 2300*time.Millisecond)
	x.wantLog(t,
		"1.15s G High", "1.15s BZ PWM 2kHz",
		"1.3s BZ Low",
		"2.21s G Low",
	)
	x.wantState(t, State{Pattern: Idle, LEDs: "off", Active: []Pattern{Idle}})
}

func TestShowAgainRestarts(t *testing.T) {
	x := newRig(t, nil)
	x.clk.AdvanceTo(t, time.Second)
	x.show(t, Recorded)
	x.clk.AdvanceTo(t, 1500*time.Millisecond)
	x.log.take()
	x.show(t, Recorded)
	x.clk.AdvanceTo(t, 2600*time.Millisecond)
	// The second Show beeps again and lasts its full second.
	x.wantLog(t, "1.5s BZ PWM 2kHz", "1.65s BZ Low", "2.56s G Low")
}

func TestLowerPriorityWaitsUnderneath(t *testing.T) {
	x := newRig(t, nil)
	x.clk.AdvanceTo(t, time.Second)
	x.show(t, Recorded)
	x.clk.Do(t, func() {
		if err := x.ind.Locate(0); err != nil {
			t.Fatal(err)
		}
	})
	x.wantState(t, State{Pattern: Recorded, LEDs: "green", Buzzer: true, Active: []Pattern{Recorded, Locate, Idle}})
	x.clk.AdvanceTo(t, 2*time.Second)
	x.wantState(t, State{Pattern: Locate, LEDs: "white", Buzzer: true, Active: []Pattern{Locate, Idle}})
}

func TestClearTransientAndUnknown(t *testing.T) {
	x := newRig(t, nil)
	x.show(t, Refused)
	x.clk.Do(t, func() {
		if err := x.ind.Clear(Refused); err != nil {
			t.Fatal(err)
		}
	})
	x.wantState(t, State{Pattern: Idle, LEDs: "green", Active: []Pattern{Idle}})
	// Clearing what is not active, or the heartbeat, is not an error.
	if err := x.ind.Clear(Refused); err != nil {
		t.Fatal(err)
	}
	if err := x.ind.Clear(Idle); err != nil {
		t.Fatal(err)
	}
	if err := x.ind.Show(Idle); err != nil {
		t.Fatal(err)
	}
	if err := x.ind.Show("party"); !errors.Is(err, ErrUnknownPattern) {
		t.Fatalf("Show(party) = %v", err)
	}
	if err := x.ind.Clear("party"); !errors.Is(err, ErrUnknownPattern) {
		t.Fatalf("Clear(party) = %v", err)
	}
}

func TestActiveLow(t *testing.T) {
	x := newRig(t, func(x *rig, c *Config) {
		c.Red.ActiveLow = true
		c.Green.ActiveLow = true
		c.Blue.ActiveLow = true
		c.Buzzer.ActiveLow = true
		c.BuzzerOnOff = true
	})
	x.wantLog(t, "0s R High", "0s G High", "0s B High", "0s BZ High", "0s G Low")
	x.clk.AdvanceTo(t, time.Second)
	x.log.take()
	x.show(t, Refused)
	x.wantLog(t, "1s R Low", "1s BZ Low")
	x.wantState(t, State{Pattern: Refused, LEDs: "red", Buzzer: true, Active: []Pattern{Refused, Idle}})
	if err := x.ind.Halt(); err != nil {
		t.Fatal(err)
	}
	x.wantLog(t, "1s R High", "1s BZ High")
	if x.buzz.pwms != 0 {
		t.Fatalf("PWM called %d times on an on/off buzzer", x.buzz.pwms)
	}
}

func TestBuzzerFallsBackToOnOff(t *testing.T) {
	x := newRig(t, func(x *rig, c *Config) {
		x.buzz.pwmErr = errors.New("pwm unsupported on this pin")
	})
	x.clk.AdvanceTo(t, time.Second)
	x.log.take()
	x.show(t, Recorded)
	x.clk.AdvanceTo(t, 1200*time.Millisecond)
	x.wantLog(t, "1s G High", "1s BZ High", "1.15s BZ Low")
	x.show(t, Refused)
	x.wantLog(t, "1.2s R High", "1.2s G Low", "1.2s BZ High")
	if x.buzz.pwms != 1 {
		t.Fatalf("PWM tried %d times, want once", x.buzz.pwms)
	}
	if s, r := x.ind.Health(); s != HealthOK {
		t.Fatalf("health %s %q", s, r)
	}
}

func TestHaltLeavesOutputsOff(t *testing.T) {
	x := newRig(t, nil)
	x.show(t, Recorded)
	if err := x.ind.Halt(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*recPin{x.r, x.g, x.b, x.buzz} {
		if l, f := p.level(); l != gpio.Low || f != 0 {
			t.Errorf("%s after Halt: %s %s", p.N, l, f)
		}
	}
	if err := x.ind.Show(Recorded); !errors.Is(err, ErrHalted) {
		t.Fatalf("Show after Halt = %v", err)
	}
	if err := x.ind.Locate(0); !errors.Is(err, ErrHalted) {
		t.Fatalf("Locate after Halt = %v", err)
	}
	if err := x.ind.Clear(Locate); !errors.Is(err, ErrHalted) {
		t.Fatalf("Clear after Halt = %v", err)
	}
	if err := x.ind.Halt(); err != nil {
		t.Fatalf("second Halt: %v", err)
	}
	x.wantState(t, State{LEDs: "off"})
	if s, _ := x.ind.Health(); s != HealthDown {
		t.Fatalf("health after Halt: %s", s)
	}
}

func TestHealthReportsFailingPins(t *testing.T) {
	x := newRig(t, nil)
	if s, r := x.ind.Health(); s != HealthOK || r != "" {
		t.Fatalf("health %s %q", s, r)
	}
	x.r.setErrs(errors.New("bus error"), nil)
	x.show(t, Refused)
	s, r := x.ind.Health()
	if s != HealthDegraded || r != "indicator: red pin R: bus error" {
		t.Fatalf("health %s %q", s, r)
	}
	// State reports what the pins really do: the red LED did not light.
	if st := x.ind.State(); st.LEDs != "off" || !st.Buzzer {
		t.Fatalf("state %+v", st)
	}
	for _, p := range []*recPin{x.g, x.b, x.buzz} {
		p.setErrs(errors.New("bus error"), errors.New("bus error"))
	}
	x.clk.Do(t, func() { _ = x.ind.Clear(Refused) })
	x.clk.Do(t, func() { _ = x.ind.Locate(0) })
	if s, r := x.ind.Health(); s != HealthDown {
		t.Fatalf("health %s %q", s, r)
	}
	// A broken buzzer is not mistaken for one that cannot make a tone.
	if x.ind.onOff {
		t.Fatal("buzzer switched to on/off after a failed write")
	}
	// Failed pins are written again at the next step; once the writes work
	// the outputs are healthy and in the right state.
	for _, p := range []*recPin{x.r, x.g, x.b, x.buzz} {
		p.setErrs(nil, nil)
	}
	x.log.take()
	x.clk.Do(t, func() { _ = x.ind.Clear(Locate) })
	if s, r := x.ind.Health(); s != HealthOK {
		t.Fatalf("health after recovery %s %q", s, r)
	}
	x.wantLog(t, "0s R Low", "0s G High", "0s B Low", "0s BZ Low")
	x.wantState(t, State{Pattern: Idle, LEDs: "green", Active: []Pattern{Idle}})
}

func TestNewErrors(t *testing.T) {
	log := &pinLog{clk: newFakeClock()}
	good := &recPin{BasicPin: pin.BasicPin{N: "GPIO5"}, log: log}
	bad := &recPin{BasicPin: pin.BasicPin{N: "GPIO6"}, log: log, outErr: errors.New("permission denied")}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no pins", Config{}, "indicator: no output pin configured"},
		{"invalid pin only", Config{Red: Output{Pin: gpio.INVALID}}, "indicator: no output pin configured"},
		{"pin fails", Config{Green: Output{Pin: good}, Buzzer: Output{Pin: bad}}, "indicator: buzzer pin GPIO6: permission denied"},
		{"zero step", Config{Green: Output{Pin: good}, Patterns: map[Pattern]Program{Recorded: {Steps: []Step{{LEDs: Green}}}}},
			"indicator: pattern recorded: step 0: duration 0s is not positive"},
		{"no steps", Config{Green: Output{Pin: good}, Patterns: map[Pattern]Program{"x": {Loop: true}}}, "indicator: pattern x: no steps"},
		{"bad colour", Config{Green: Output{Pin: good}, Patterns: map[Pattern]Program{"x": {Steps: []Step{{LEDs: 9, D: 1}}}}},
			"indicator: pattern x: step 0: invalid LED set 9"},
		{"empty name", Config{Green: Output{Pin: good}, Patterns: map[Pattern]Program{"": {Steps: []Step{{D: 1}}}}},
			"indicator: pattern with an empty name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ind, err := New(tc.cfg)
			if err == nil {
				_ = ind.Halt()
				t.Fatal("New succeeded")
			}
			if err.Error() != tc.want {
				t.Fatalf("error %q, want %q", err, tc.want)
			}
		})
	}
}

func TestCustomPattern(t *testing.T) {
	x := newRig(t, func(x *rig, c *Config) {
		c.Patterns = map[Pattern]Program{
			"door_open": {Priority: 15, Loop: true, Steps: []Step{
				{LEDs: Magenta, D: 100 * time.Millisecond},
				{LEDs: Off, D: 100 * time.Millisecond},
			}},
		}
	})
	x.clk.AdvanceTo(t, time.Second)
	x.log.take()
	x.show(t, "door_open")
	x.clk.AdvanceTo(t, 1250*time.Millisecond)
	x.wantLog(t, "1s R High", "1s B High", "1.1s R Low", "1.1s B Low", "1.2s R High", "1.2s B High")
	// Above locate (10), below feedback (20).
	x.clk.Do(t, func() { _ = x.ind.Locate(0) })
	x.wantState(t, State{Pattern: "door_open", LEDs: "magenta", Active: []Pattern{"door_open", Locate, Idle}})
	x.show(t, Recorded)
	x.wantState(t, State{Pattern: Recorded, LEDs: "green", Buzzer: true, Active: []Pattern{Recorded, "door_open", Locate, Idle}})
}

func TestStringNamesFittedPins(t *testing.T) {
	log := &pinLog{clk: newFakeClock()}
	g := &recPin{BasicPin: pin.BasicPin{N: "GPIO27"}, log: log}
	bz := &recPin{BasicPin: pin.BasicPin{N: "GPIO18"}, log: log}
	ind, err := New(Config{Green: Output{Pin: g}, Buzzer: Output{Pin: bz, ActiveLow: true}, Clock: log.clk})
	if err != nil {
		t.Fatal(err)
	}
	defer ind.Halt()
	if got, want := ind.String(), "indicator{green=GPIO27 buzzer=GPIO18(active-low)}"; got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
}

func TestProgramAt(t *testing.T) {
	p := Program{Loop: true, Steps: []Step{{LEDs: Red, D: 100}, {LEDs: Green, D: 50}}}
	for _, tc := range []struct {
		at   time.Duration
		leds Color
		left time.Duration
	}{
		{0, Red, 100}, {99, Red, 1}, {100, Green, 50}, {149, Green, 1}, {150, Red, 100}, {1010, Green, 40},
	} {
		s, left := p.at(tc.at)
		if s.LEDs != tc.leds || left != tc.left {
			t.Errorf("at(%d) = %s, %d; want %s, %d", tc.at, s.LEDs, left, tc.leds, tc.left)
		}
	}
	p.Loop = false
	if s, _ := p.at(1000); s.LEDs != Green {
		t.Errorf("once program past its end shows %s", s.LEDs)
	}
	for name, prog := range DefaultPrograms() {
		if _, err := prog.validate(); err != nil {
			t.Errorf("default %s: %v", name, err)
		}
	}
	want := "prio 20 once: green+2kHz/150ms green/850ms"
	if got := DefaultPrograms()[Recorded].String(); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

// BenchmarkShowLatency measures the time from Show to the first pin change
// with the system clock (the contract allows 50 ms).
func BenchmarkShowLatency(b *testing.B) {
	changed := make(chan struct{}, 1)
	p := &notifyPin{BasicPin: pin.BasicPin{N: "G"}, ch: changed}
	ind, err := New(Config{Green: Output{Pin: p}, Patterns: map[Pattern]Program{
		Idle: {Loop: true, Steps: []Step{{D: time.Hour}}},
		"on": {Priority: 1, Loop: true, Steps: []Step{{LEDs: Green, D: time.Hour}}},
	}})
	if err != nil {
		b.Fatal(err)
	}
	defer ind.Halt()
	<-changed // New turned the pin off
	var worst time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if i%2 == 0 {
			_ = ind.Show("on")
		} else {
			_ = ind.Clear("on")
		}
		<-changed
		if d := time.Since(start); d > worst {
			worst = d
		}
	}
	b.ReportMetric(float64(worst.Microseconds()), "worst-µs")
}

type notifyPin struct {
	pin.BasicPin
	ch chan struct{}
}

func (p *notifyPin) Out(gpio.Level) error {
	p.ch <- struct{}{}
	return nil
}

func (p *notifyPin) PWM(gpio.Duty, physic.Frequency) error { return errors.New("no") }
