package indicator

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/conn/v3/pin"

	"station.dev/agent/internal/clock/clocktest"
)

// fakeClock is the drivers' manual clock.
type fakeClock = clocktest.Fake

var newFakeClock = clocktest.New

// pinLog records what every pin was told, with the fake time.
type pinLog struct {
	mu  sync.Mutex
	clk *fakeClock
	ev  []string
}

func (l *pinLog) add(name, what string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ev = append(l.ev, fmt.Sprintf("%s %s %s", l.clk.Elapsed(), name, what))
}

func (l *pinLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	ev := l.ev
	l.ev = nil
	return ev
}

// recPin is a fake gpio.PinIO that records to a pinLog and can fail.
type recPin struct {
	pin.BasicPin
	log *pinLog

	mu     sync.Mutex
	l      gpio.Level
	freq   physic.Frequency
	outErr error
	pwmErr error
	pwms   int
}

func (p *recPin) Out(l gpio.Level) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.outErr != nil {
		return p.outErr
	}
	p.l, p.freq = l, 0
	p.log.add(p.N, l.String())
	return nil
}

func (p *recPin) PWM(d gpio.Duty, f physic.Frequency) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pwms++
	if p.pwmErr != nil {
		return p.pwmErr
	}
	if d != gpio.DutyHalf {
		return errors.New("unexpected duty " + d.String())
	}
	p.freq = f
	p.log.add(p.N, "PWM "+f.String())
	return nil
}

func (p *recPin) setErrs(out, pwm error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.outErr, p.pwmErr = out, pwm
}

func (p *recPin) level() (gpio.Level, physic.Frequency) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.l, p.freq
}

func (p *recPin) In(gpio.Pull, gpio.Edge) error  { return errors.New("output only") }
func (p *recPin) Read() gpio.Level               { return p.l }
func (p *recPin) WaitForEdge(time.Duration) bool { return false }
func (p *recPin) Pull() gpio.Pull                { return gpio.PullNoChange }
func (p *recPin) DefaultPull() gpio.Pull         { return gpio.PullNoChange }

var _ gpio.PinIO = (*recPin)(nil)
