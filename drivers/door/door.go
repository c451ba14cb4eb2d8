// Package door watches the cabinet door switch on a periph.io GPIO input.
//
// The switch is debounced: a new state counts once the input has held it for
// the debounce window (50 ms by default), so contact bounce and short
// glitches produce no event. The pin's edge detection wakes the watcher;
// where the pin has none the watcher polls it instead. Either way the pin is
// read again periodically, so a missed edge is caught.
//
// The Door takes the pin it is given and never looks one up: whoever owns
// the pins (the hardware assembly, station.dev/agent/drivers/hw) opens it.
// Package doorsim is the emulated twin: a switch that simulation opens and
// closes.
package door

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"periph.io/x/conn/v3/gpio"

	"station.dev/agent/internal/clock"
)

// Defaults for Config.
const (
	DefaultDebounce     = 50 * time.Millisecond
	DefaultPollInterval = 20 * time.Millisecond
)

// edgeIdle bounds a wait for an edge: the pin is read again at least this
// often, and Halt returns within it.
const edgeIdle = 250 * time.Millisecond

// Health states reported by Health.
const (
	HealthOK       = "ok"
	HealthDegraded = "degraded"
	HealthDown     = "down"
)

// Clock is the time source of a Door. Tests inject a fake one.
type Clock = clock.Clock

// Timer is a timer made by a Clock, like time.Timer.
type Timer = clock.Timer

// Event is a debounced change of the door.
type Event struct {
	// Open tells whether the door is open.
	Open bool `json:"open"`
	// At is when the input reached the new state and began to hold it; the
	// event is reported one debounce window later.
	At time.Time `json:"at"`
}

// Config configures a Door.
type Config struct {
	// Pin is the switch input.
	Pin gpio.PinIn
	// OpenLow means the input reads Low while the door is open. By default
	// it reads High while open: a switch to ground that the shut door keeps
	// closed, with a pull-up.
	OpenLow bool
	// Pull is the pull resistor; zero (gpio.PullNoChange) means gpio.PullUp.
	// Use gpio.Float with an external resistor.
	Pull gpio.Pull
	// Debounce is how long the input must hold a new state before it counts;
	// zero means DefaultDebounce.
	Debounce time.Duration
	// Poll reads the pin every PollInterval even if it has edge detection.
	// A pin without edge detection is always polled.
	Poll bool
	// PollInterval is the polling period; zero means DefaultPollInterval.
	PollInterval time.Duration
	// Clock is the time source; nil means the system clock. Waits for edges
	// are timed by the pin.
	Clock Clock
	// Logger receives the fallback to polling; nil means quiet.
	Logger *slog.Logger
}

// Door reports the debounced state of the door switch. Its methods are safe
// for concurrent use.
type Door struct {
	pin      gpio.PinIn
	openLow  bool
	debounce time.Duration
	interval time.Duration
	poll     bool
	clk      Clock

	events chan Event
	quit   chan struct{}
	done   chan struct{}
	once   sync.Once

	mu     sync.Mutex
	state  Event
	halted bool
}

// New configures the pin as an input, reads the door's state and starts the
// watcher goroutine. It falls back to polling when the pin refuses edge
// detection.
func New(cfg Config) (*Door, error) {
	if cfg.Pin == nil || cfg.Pin == gpio.INVALID {
		return nil, errors.New("door: no pin configured")
	}
	d := &Door{
		pin:      cfg.Pin,
		openLow:  cfg.OpenLow,
		debounce: cfg.Debounce,
		interval: cfg.PollInterval,
		poll:     cfg.Poll,
		clk:      cfg.Clock,
		events:   make(chan Event, 16),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	if d.debounce == 0 {
		d.debounce = DefaultDebounce
	}
	if d.interval == 0 {
		d.interval = DefaultPollInterval
	}
	if d.debounce < 0 || d.interval < 0 {
		return nil, errors.New("door: negative debounce or poll interval")
	}
	if d.clk == nil {
		d.clk = clock.System
	}
	pull := cfg.Pull
	if pull == gpio.PullNoChange {
		pull = gpio.PullUp
	}
	if !d.poll {
		if err := d.pin.In(pull, gpio.BothEdges); err != nil {
			if cfg.Logger != nil {
				cfg.Logger.Info("door: no edge detection, polling the switch", "pin", d.pin.Name(), "err", err, "interval", d.interval)
			}
			d.poll = true
		}
	}
	if d.poll {
		if err := d.pin.In(pull, gpio.NoEdge); err != nil {
			return nil, fmt.Errorf("door: pin %s: %w", d.pin.Name(), err)
		}
	}
	d.state = Event{Open: d.read(), At: d.clk.Now()}
	go d.run()
	return d, nil
}

// String describes the Door, e.g. "door{GPIO27 edges}".
func (d *Door) String() string {
	mode := "edges"
	if d.poll {
		mode = "polling " + d.interval.String()
	}
	return "door{" + d.pin.Name() + " " + mode + "}"
}

// Events returns the channel of debounced changes. It is closed by Halt. A
// reader that falls behind holds the watcher back: the changes it missed
// meanwhile collapse into the state read when it resumes.
func (d *Door) Events() <-chan Event {
	return d.events
}

// State returns the current debounced state and when it began (for the state
// found at New, when New read it).
func (d *Door) State() Event {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state
}

// Polling tells whether the pin is polled rather than watched for edges.
func (d *Door) Polling() bool {
	return d.poll
}

// Health reports "ok" (with a note when polling) or "down" once halted.
func (d *Door) Health() (status, reason string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.halted:
		return HealthDown, "door: halted"
	case d.poll:
		return HealthOK, fmt.Sprintf("door: pin %s polled every %s", d.pin.Name(), d.interval)
	default:
		return HealthOK, ""
	}
}

// Halt stops the watcher, waits for it and closes the Events channel. With
// edge detection it halts the pin (conn.Resource.Halt), which interrupts a
// wait for an edge; with pins that cannot be interrupted it returns within a
// quarter of a second.
func (d *Door) Halt() error {
	var err error
	d.once.Do(func() {
		d.mu.Lock()
		d.halted = true
		d.mu.Unlock()
		close(d.quit)
		if !d.poll {
			if e := d.pin.Halt(); e != nil {
				err = fmt.Errorf("door: halt pin %s: %w", d.pin.Name(), e)
			}
		}
	})
	<-d.done
	return err
}

func (d *Door) read() bool {
	return (d.pin.Read() == gpio.High) != d.openLow
}

func (d *Door) run() {
	defer close(d.done)
	defer close(d.events)
	b := debouncer{window: d.debounce, stable: d.state.Open}
	for {
		wait := edgeIdle
		if d.poll {
			wait = d.interval
		}
		if dl, ok := b.deadline(); ok {
			if r := dl.Sub(d.clk.Now()); r < wait {
				wait = r
			}
		}
		if wait < time.Millisecond {
			wait = time.Millisecond
		}
		edge := false
		if d.poll {
			t := d.clk.NewTimer(wait)
			select {
			case <-t.C():
			case <-d.quit:
				t.Stop()
				return
			}
		} else {
			edge = d.pin.WaitForEdge(wait)
			select {
			case <-d.quit:
				return
			default:
			}
		}
		ev, ok := b.sample(d.read(), d.clk.Now(), edge)
		if !ok {
			continue
		}
		d.mu.Lock()
		d.state = ev
		d.mu.Unlock()
		select {
		case d.events <- ev:
		case <-d.quit:
			return
		}
	}
}

// debouncer turns raw samples of the switch into debounced changes: a new
// state counts once it has held for window with no edge in between.
type debouncer struct {
	window time.Duration
	stable bool // the debounced state

	pending bool      // a different state is being timed
	since   time.Time // when it began (or last bounced)
}

// sample takes the state read at now; edge tells that the pin saw an edge
// since the last sample. It returns the change when one is complete.
func (b *debouncer) sample(open bool, now time.Time, edge bool) (Event, bool) {
	if open == b.stable {
		// Back to the stable state (or never left): whatever began is bounce.
		b.pending = false
		return Event{}, false
	}
	if !b.pending || edge {
		// A new state, or the input moved again: the window starts now.
		b.pending, b.since = true, now
	}
	if now.Sub(b.since) < b.window {
		return Event{}, false
	}
	b.stable, b.pending = open, false
	return Event{Open: open, At: b.since}, true
}

// deadline returns when the pending state will have held for the window.
func (b *debouncer) deadline() (time.Time, bool) {
	if !b.pending {
		return time.Time{}, false
	}
	return b.since.Add(b.window), true
}
