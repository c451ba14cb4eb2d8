// Package indicatorsim emulates the output pins of the station's indicator
// (station.dev/agent/drivers/indicator): LED and buzzer pins that remember
// what they were told, so that simulation and tests run the real Indicator
// and can see what its LEDs and buzzer do.
package indicatorsim

import (
	"sync"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/conn/v3/pin"
)

// Pins are the emulated pins of an RGB LED and a buzzer that can make tones.
type Pins struct {
	Red, Green, Blue, Buzzer *Pin
}

// NewPins returns the pins SIM_RED, SIM_GREEN, SIM_BLUE and SIM_BUZZER, all
// Low.
func NewPins() *Pins {
	return &Pins{
		Red:    NewPin("SIM_RED"),
		Green:  NewPin("SIM_GREEN"),
		Blue:   NewPin("SIM_BLUE"),
		Buzzer: NewPin("SIM_BUZZER"),
	}
}

// Pin is an emulated output pin: it remembers the level or the PWM tone it
// was last told. Its methods are safe for concurrent use.
type Pin struct {
	pin.BasicPin

	mu   sync.Mutex
	l    gpio.Level
	duty gpio.Duty
	freq physic.Frequency
}

// NewPin returns an emulated output pin, Low.
func NewPin(name string) *Pin {
	return &Pin{BasicPin: pin.BasicPin{N: name}}
}

// Function implements pin.Pin: "Out/High", "Out/Low" or "PWM".
func (p *Pin) Function() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.freq != 0 {
		return "PWM"
	}
	return "Out/" + p.l.String()
}

// Out implements gpio.PinOut.
func (p *Pin) Out(l gpio.Level) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.l, p.duty, p.freq = l, 0, 0
	return nil
}

// PWM implements gpio.PinOut.
func (p *Pin) PWM(d gpio.Duty, f physic.Frequency) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.duty, p.freq = d, f
	return nil
}

// Level returns the level last set with Out.
func (p *Pin) Level() gpio.Level {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.l
}

// Tone returns the frequency of the PWM tone the pin makes; 0 when it is
// driven with Out.
func (p *Pin) Tone() physic.Frequency {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.freq
}

var _ gpio.PinOut = (*Pin)(nil)
