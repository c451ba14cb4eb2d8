package indicator

import (
	"sync"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/conn/v3/pin"
)

// NewSim returns the emulated twin of an Indicator: the same Indicator over
// emulated pins (an RGB LED and a buzzer that can make tones), for
// simulation. The pins in cfg are replaced; everything else in cfg applies.
// State describes what the emulated LEDs and buzzer do.
func NewSim(cfg Config) (*Indicator, error) {
	cfg.Red = Output{Pin: newSimPin("SIM_RED")}
	cfg.Green = Output{Pin: newSimPin("SIM_GREEN")}
	cfg.Blue = Output{Pin: newSimPin("SIM_BLUE")}
	cfg.Buzzer = Output{Pin: newSimPin("SIM_BUZZER")}
	return New(cfg)
}

// simPin is an emulated output pin: it remembers what it was told.
type simPin struct {
	pin.BasicPin

	mu   sync.Mutex
	l    gpio.Level
	duty gpio.Duty
	freq physic.Frequency
}

func newSimPin(name string) *simPin {
	return &simPin{BasicPin: pin.BasicPin{N: name}}
}

// Function implements pin.Pin.
func (p *simPin) Function() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.freq != 0 {
		return "PWM"
	}
	return "Out/" + p.l.String()
}

// Out implements gpio.PinOut.
func (p *simPin) Out(l gpio.Level) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.l, p.duty, p.freq = l, 0, 0
	return nil
}

// PWM implements gpio.PinOut.
func (p *simPin) PWM(d gpio.Duty, f physic.Frequency) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.duty, p.freq = d, f
	return nil
}

var _ gpio.PinOut = (*simPin)(nil)
