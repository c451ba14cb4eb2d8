// Package indicator drives the station's status LEDs and buzzer through
// periph.io GPIO pins.
//
// What the station shows is a Pattern. Each pattern is a Program: data made
// of steps (LEDs, buzzer tone, duration) with a priority. Several patterns
// may be active at once; the one with the highest priority is shown and,
// when it ends or is cleared, the one underneath shows again. The idle
// heartbeat is always underneath.
//
// One goroutine per Indicator drives the pins from a Clock; Halt stops it,
// waits for it and leaves every output off. The Indicator takes the pins it
// is given and never looks one up: whoever owns the pins (the hardware
// assembly, station.dev/agent/drivers/hw) opens them. The emulated twin is
// the same Indicator over the pins of package indicatorsim: State tells what
// it shows.
package indicator

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/physic"

	"station.dev/agent/internal/clock"
)

// Health states reported by Health.
const (
	HealthOK       = "ok"
	HealthDegraded = "degraded"
	HealthDown     = "down"
)

// Errors returned by the package; match them with errors.Is.
var (
	// ErrUnknownPattern: the pattern has no program.
	ErrUnknownPattern = errors.New("unknown pattern")
	// ErrHalted: the Indicator was halted.
	ErrHalted = errors.New("halted")
)

// Clock is the time source of an Indicator. Tests inject a fake one.
type Clock = clock.Clock

// Timer is a timer made by a Clock, like time.Timer.
type Timer = clock.Timer

// Output is one output pin.
type Output struct {
	// Pin is the GPIO pin; nil means the output is not fitted.
	Pin gpio.PinOut
	// ActiveLow means the LED or buzzer is on when the pin is Low (e.g. an
	// LED wired from 3.3 V to the pin, or a common-anode RGB LED).
	ActiveLow bool
}

// Config configures an Indicator.
type Config struct {
	// Red, Green and Blue are the LEDs: the three dies of one RGB LED or
	// three separate LEDs. Any may be absent, but at least one output of the
	// four must be fitted.
	Red, Green, Blue Output
	// Buzzer sounds a tone with PWM where its pin supports it (a passive
	// piezo), and is switched on/off otherwise.
	Buzzer Output
	// BuzzerOnOff drives the buzzer on/off even where the pin could make a
	// tone: set it for an active buzzer, which has its own oscillator.
	BuzzerOnOff bool
	// Patterns replaces the programs of the patterns it names and adds new
	// ones; the others keep DefaultPrograms.
	Patterns map[Pattern]Program
	// Clock is the time source; nil means the system clock.
	Clock Clock
	// Logger receives pin failures and the buzzer's fallback to on/off; nil
	// means quiet.
	Logger *slog.Logger
}

// State is what an Indicator shows now.
type State struct {
	// Pattern is the pattern being shown.
	Pattern Pattern `json:"pattern"`
	// LEDs is the set of LEDs lit, by name: "off", "green", "yellow"…
	LEDs string `json:"leds"`
	// Buzzer tells whether the buzzer sounds.
	Buzzer bool `json:"buzzer"`
	// Active lists the active patterns, highest priority first; the idle
	// heartbeat is last.
	Active []Pattern `json:"active"`
}

// Indicator drives the LEDs and the buzzer. Its methods are safe for
// concurrent use.
type Indicator struct {
	clk   Clock
	log   *slog.Logger
	progs map[Pattern]Program
	outs  [4]output // red, green, blue, buzzer; name, pin and activeLow never change after New
	onOff bool      // the buzzer is driven on/off; written by the goroutine only after New

	wake chan struct{}
	quit chan struct{}
	done chan struct{}
	once sync.Once

	mu     sync.Mutex
	active map[Pattern]activation
	order  uint64
	halted bool
	state  State
	errs   [4]error // last write error per output: red, green, blue, buzzer
}

// activation is one Show of a pattern.
type activation struct {
	start    time.Time // when Show was called
	deadline time.Time // zero: until cleared
	order    uint64    // Show order; breaks ties, identifies the Show
}

// output is one fitted pin and what the goroutine last wrote to it.
type output struct {
	name      string
	pin       gpio.PinOut
	activeLow bool
	on        bool             // last level asked for
	tone      physic.Frequency // last given to PWM; 0 when driven on/off
	failed    bool             // the last write failed: the pin's level is unknown
}

// New returns an Indicator over the configured pins and starts its
// goroutine. It turns every output off first, so a pin that cannot be driven
// fails here.
func New(cfg Config) (*Indicator, error) {
	progs := DefaultPrograms()
	for p, prog := range cfg.Patterns {
		if p == "" {
			return nil, errors.New("indicator: pattern with an empty name")
		}
		progs[p] = prog
	}
	for p, prog := range progs {
		v, err := prog.validate()
		if err != nil {
			return nil, fmt.Errorf("indicator: pattern %s: %w", p, err)
		}
		progs[p] = v
	}
	if _, ok := progs[Idle]; !ok {
		return nil, errors.New("indicator: pattern idle has no program")
	}
	i := &Indicator{
		clk:    cfg.Clock,
		log:    cfg.Logger,
		progs:  progs,
		onOff:  cfg.BuzzerOnOff,
		wake:   make(chan struct{}, 1),
		quit:   make(chan struct{}),
		done:   make(chan struct{}),
		active: map[Pattern]activation{Idle: {}},
	}
	if i.clk == nil {
		i.clk = clock.System
	}
	fitted := 0
	for n, o := range []Output{cfg.Red, cfg.Green, cfg.Blue, cfg.Buzzer} {
		if o.Pin == nil || o.Pin == gpio.INVALID {
			continue
		}
		// failed forces the first write.
		out := output{name: o.Pin.Name(), pin: o.Pin, activeLow: o.ActiveLow, failed: true}
		if err := out.set(false, 0); err != nil {
			return nil, fmt.Errorf("indicator: %s pin %s: %w", roleNames[n], out.name, err)
		}
		i.outs[n] = out
		fitted++
	}
	if fitted == 0 {
		return nil, errors.New("indicator: no output pin configured")
	}
	i.state = State{Pattern: Idle, LEDs: Off.String(), Active: []Pattern{Idle}}
	go i.run()
	return i, nil
}

var roleNames = [...]string{"red", "green", "blue", "buzzer"}

// String describes the Indicator, e.g. "indicator{red=GPIO17 green=GPIO27 buzzer=GPIO18}".
func (i *Indicator) String() string {
	var parts []string
	for n := range i.outs {
		o := &i.outs[n]
		if o.pin == nil {
			continue
		}
		s := roleNames[n] + "=" + o.name
		if o.activeLow {
			s += "(active-low)"
		}
		parts = append(parts, s)
	}
	return "indicator{" + strings.Join(parts, " ") + "}"
}

// Show activates the pattern p; it starts within milliseconds. Showing a
// pattern that is already active restarts it. A pattern with a lower
// priority than the one shown waits underneath (a transient one may end
// unseen); one with equal priority replaces it.
func (i *Indicator) Show(p Pattern) error {
	prog, ok := i.progs[p]
	if !ok {
		return fmt.Errorf("indicator: show %q: %w", p, ErrUnknownPattern)
	}
	if p == Idle {
		return i.check()
	}
	d := prog.Duration
	if !prog.Loop {
		d = prog.total()
	}
	return i.activate(p, prog, d)
}

// Locate shows the Locate pattern for d; 0 means until Clear(Locate).
func (i *Indicator) Locate(d time.Duration) error {
	prog, ok := i.progs[Locate]
	if !ok {
		return fmt.Errorf("indicator: locate: %w", ErrUnknownPattern)
	}
	if d < 0 {
		return fmt.Errorf("indicator: locate: negative duration %s", d)
	}
	return i.activate(Locate, prog, d)
}

func (i *Indicator) activate(p Pattern, prog Program, d time.Duration) error {
	now := i.clk.Now()
	i.mu.Lock()
	if i.halted {
		i.mu.Unlock()
		return fmt.Errorf("indicator: show %s: %w", p, ErrHalted)
	}
	for q := range i.active {
		if q != p && q != Idle && i.progs[q].Priority == prog.Priority {
			delete(i.active, q)
		}
	}
	i.order++
	a := activation{start: now, order: i.order}
	if d > 0 {
		a.deadline = now.Add(d)
	}
	i.active[p] = a
	i.mu.Unlock()
	i.poke()
	return nil
}

// Clear ends the pattern p if it is active. Clearing Idle does nothing.
func (i *Indicator) Clear(p Pattern) error {
	if _, ok := i.progs[p]; !ok {
		return fmt.Errorf("indicator: clear %q: %w", p, ErrUnknownPattern)
	}
	if p == Idle {
		return i.check()
	}
	i.mu.Lock()
	if i.halted {
		i.mu.Unlock()
		return fmt.Errorf("indicator: clear %s: %w", p, ErrHalted)
	}
	_, ok := i.active[p]
	delete(i.active, p)
	i.mu.Unlock()
	if ok {
		i.poke()
	}
	return nil
}

func (i *Indicator) check() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.halted {
		return fmt.Errorf("indicator: %w", ErrHalted)
	}
	return nil
}

func (i *Indicator) poke() {
	select {
	case i.wake <- struct{}{}:
	default:
	}
}

// State returns what the Indicator shows now.
func (i *Indicator) State() State {
	i.mu.Lock()
	defer i.mu.Unlock()
	s := i.state
	s.Active = append([]Pattern(nil), s.Active...)
	return s
}

// Health reports "ok", "degraded" (an output failed on its last write) or
// "down" (every output failed, or the Indicator was halted), with a one-line
// reason.
func (i *Indicator) Health() (status, reason string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.halted {
		return HealthDown, "indicator: halted"
	}
	var failed []string
	fitted := 0
	for n := range i.outs {
		o := &i.outs[n]
		if o.pin == nil {
			continue
		}
		fitted++
		if err := i.errs[n]; err != nil {
			failed = append(failed, fmt.Sprintf("%s pin %s: %v", roleNames[n], o.name, err))
		}
	}
	switch {
	case len(failed) == 0:
		return HealthOK, ""
	case len(failed) == fitted:
		return HealthDown, "indicator: " + strings.Join(failed, "; ")
	default:
		return HealthDegraded, "indicator: " + strings.Join(failed, "; ")
	}
}

// Halt stops the goroutine, waits for it and turns every output off. Later
// calls to Show, Locate and Clear return ErrHalted.
func (i *Indicator) Halt() error {
	i.once.Do(func() {
		i.mu.Lock()
		i.halted = true
		i.mu.Unlock()
		close(i.quit)
	})
	<-i.done
	i.mu.Lock()
	defer i.mu.Unlock()
	var errs []error
	for n, err := range i.errs {
		if err != nil {
			errs = append(errs, fmt.Errorf("indicator: %s pin: %w", roleNames[n], err))
		}
	}
	return errors.Join(errs...)
}

// run drives the pins until Halt. It alone writes to the pins after New.
func (i *Indicator) run() {
	defer close(i.done)
	var (
		cur    Pattern
		curOrd uint64
		origin time.Time
	)
	for {
		now := i.clk.Now()
		i.mu.Lock()
		for p, a := range i.active {
			if !a.deadline.IsZero() && !now.Before(a.deadline) {
				delete(i.active, p)
			}
		}
		top := i.topLocked()
		a := i.active[top]
		prog := i.progs[top]
		if top != cur || a.order != curOrd {
			cur, curOrd = top, a.order
			// A looping pattern starts afresh whenever it comes to the top; a
			// transient one keeps the phase it has had since Show.
			origin = now
			if !prog.Loop && !a.start.IsZero() {
				origin = a.start
			}
		}
		elapsed := now.Sub(origin)
		if elapsed < 0 {
			// The clock went backwards: restart the pattern.
			origin, elapsed = now, 0
		}
		step, left := prog.at(elapsed)
		if !a.deadline.IsZero() {
			if d := a.deadline.Sub(now); d < left {
				left = d
			}
		}
		active := i.sortedLocked()
		i.mu.Unlock()

		i.apply(cur, step, active)

		t := i.clk.NewTimer(left)
		select {
		case <-t.C():
		case <-i.wake:
			t.Stop()
		case <-i.quit:
			t.Stop()
			i.apply(cur, Step{}, nil)
			i.mu.Lock()
			i.state.Pattern, i.state.Active = "", nil
			i.mu.Unlock()
			return
		}
	}
}

// topLocked returns the active pattern to show.
func (i *Indicator) topLocked() Pattern {
	best := Idle
	var bp int
	var bo uint64
	first := true
	for p, a := range i.active {
		pr := i.progs[p].Priority
		if first || pr > bp || (pr == bp && a.order > bo) {
			best, bp, bo, first = p, pr, a.order, false
		}
	}
	return best
}

func (i *Indicator) sortedLocked() []Pattern {
	out := make([]Pattern, 0, len(i.active))
	for p := range i.active {
		out = append(out, p)
	}
	sort.Slice(out, func(x, y int) bool {
		px, py := i.progs[out[x]].Priority, i.progs[out[y]].Priority
		if px != py {
			return px > py
		}
		return i.active[out[x]].order > i.active[out[y]].order
	})
	return out
}

// apply drives the outputs to step and records the state. A pin is written
// when its level changes, and at every step while its last write failed.
func (i *Indicator) apply(p Pattern, s Step, active []Pattern) {
	var errs [4]error
	for n := 0; n < 3; n++ {
		o := &i.outs[n]
		if o.pin != nil {
			errs[n] = o.set(s.LEDs&(1<<n) != 0, 0)
		}
	}
	if o := &i.outs[3]; o.pin != nil {
		tone := s.Tone
		if i.onOff {
			tone = 0
		}
		err := o.set(s.Tone > 0, tone)
		if err != nil && tone != 0 {
			// Try on/off. If that works the pin cannot make a tone: drive it
			// on/off from now on. If it fails too, the pin is broken.
			if err2 := o.set(true, 0); err2 == nil {
				i.onOff = true
				if i.log != nil {
					i.log.Warn("indicator: buzzer cannot make a tone, driving it on/off", "pin", o.name, "err", err)
				}
				err = nil
			}
		}
		errs[3] = err
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	for n, err := range errs {
		if err != nil && i.errs[n] == nil && i.log != nil {
			i.log.Error("indicator: pin write failed", "role", roleNames[n], "err", err)
		}
		i.errs[n] = err
	}
	var lit Color
	for n := 0; n < 3; n++ {
		if o := &i.outs[n]; o.pin != nil && o.on && !o.failed {
			lit |= 1 << n
		}
	}
	i.state.LEDs = lit.String()
	b := &i.outs[3]
	i.state.Buzzer = b.pin != nil && b.on && !b.failed
	if active != nil {
		i.state.Pattern = p
		i.state.Active = active
	}
}

// set drives the output on or off; a non-zero tone makes a PWM tone. It
// writes when something changes or when the last write failed.
func (o *output) set(on bool, tone physic.Frequency) error {
	if !on {
		tone = 0
	}
	if !o.failed && on == o.on && tone == o.tone {
		return nil
	}
	var err error
	if tone != 0 {
		err = o.pin.PWM(gpio.DutyHalf, tone)
	} else {
		l := gpio.Level(on)
		if o.activeLow {
			l = !l
		}
		err = o.pin.Out(l)
	}
	o.on, o.tone, o.failed = on, tone, err != nil
	return err
}
