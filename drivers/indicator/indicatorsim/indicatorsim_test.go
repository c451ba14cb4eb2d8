package indicatorsim_test

import (
	"reflect"
	"testing"

	"periph.io/x/conn/v3/gpio"

	"station.dev/agent/drivers/indicator"
	"station.dev/agent/drivers/indicator/indicatorsim"
	"station.dev/agent/internal/clock/clocktest"
)

// TestState runs the real Indicator over the emulated pins.
func TestState(t *testing.T) {
	clk := clocktest.New()
	pins := indicatorsim.NewPins()
	ind, err := indicator.New(indicator.Config{
		Red:    indicator.Output{Pin: pins.Red},
		Green:  indicator.Output{Pin: pins.Green},
		Blue:   indicator.Output{Pin: pins.Blue},
		Buzzer: indicator.Output{Pin: pins.Buzzer},
		Clock:  clk,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ind.Halt()
	clk.WaitCreated(t, 1)
	clk.Do(t, func() { _ = ind.Show(indicator.RecordedOffline) })
	if got, want := ind.State(), (indicator.State{Pattern: indicator.RecordedOffline, LEDs: "yellow", Buzzer: true, Active: []indicator.Pattern{indicator.RecordedOffline, indicator.Idle}}); !reflect.DeepEqual(got, want) {
		t.Fatalf("state %+v, want %+v", got, want)
	}
	if got, want := ind.String(), "indicator{red=SIM_RED green=SIM_GREEN blue=SIM_BLUE buzzer=SIM_BUZZER}"; got != want {
		t.Fatalf("String() = %q", got)
	}
	if f := pins.Buzzer.Function(); f != "PWM" {
		t.Fatalf("sim buzzer function %q", f)
	}
	if pins.Buzzer.Tone() == 0 {
		t.Fatal("the buzzer makes no tone")
	}
	// Yellow: red and green on, blue off.
	if pins.Red.Level() != gpio.High || pins.Green.Level() != gpio.High || pins.Blue.Level() != gpio.Low {
		t.Fatalf("LEDs %s %s %s", pins.Red.Function(), pins.Green.Function(), pins.Blue.Function())
	}
	if err := ind.Halt(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*indicatorsim.Pin{pins.Red, pins.Green, pins.Blue, pins.Buzzer} {
		if f := p.Function(); f != "Out/Low" {
			t.Errorf("%s after Halt: %s", p.Name(), f)
		}
	}
}
