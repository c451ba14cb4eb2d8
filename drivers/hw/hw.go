// Package hw is the station's hardware assembly. It loads periph.io's host
// drivers once, opens each bus and pin the configuration names once (one
// handle per bus, even when the card reader, the cabinet sensor and the
// display share I²C bus 1), hands them to the drivers (pn532 behind
// cardreader, indicator, door, envsensor, display) and, on Close, halts every
// device and then closes every bus and pin, once.
//
// It is the only package that looks buses and pins up in periph's registries
// (i2creg, spireg, gpioreg): the drivers take what they are given and never
// close it. Package hwsim is the simulated twin, with the same methods over
// emulated chips.
//
// Each part is opened on demand and may be opened again after it failed or
// was lost: the new Open first halts the previous instance and releases its
// buses and pins. A bus stays open while any part uses it.
package hw

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"periph.io/x/conn/v3/driver/driverreg"
	// The host drivers a station needs: the Raspberry Pi's SoC (BCM283x) and board, and the
	// kernel's generic GPIO, I²C and SPI interfaces. periph's host.Init would also load the
	// Allwinner, Pine64 and 1-wire drivers, which no station has (about 80 KB of binary).
	_ "periph.io/x/host/v3/bcm283x"
	_ "periph.io/x/host/v3/gpioioctl"
	_ "periph.io/x/host/v3/rpi"
	_ "periph.io/x/host/v3/sysfs"
)

// Errors of the package; match them with errors.Is.
var (
	// ErrNotFitted: the configuration fits no such part.
	ErrNotFitted = errors.New("not fitted")
	// ErrClosed: the Station was closed.
	ErrClosed = errors.New("station hardware closed")
)

// Config names the station's hardware. A part is fitted when its section
// names it (see Fitted); the zero Config fits nothing.
type Config struct {
	Reader      Reader
	Indicator   Indicator
	Door        Door
	Environment Environment
	Display     Display
	// Logger receives the drivers' warnings (chip recovery, a buzzer that
	// cannot make a tone, a switch polled for lack of edges); nil: quiet.
	Logger *slog.Logger
}

// Reader is the contactless card reader.
type Reader struct {
	Driver           string        // "pn532"; "" or "none": no reader fitted
	Bus              string        // "i2c" (default), "spi" or "uart"
	Device           string        // periph bus name ("" = first) or serial device path for uart
	Address          uint16        // I2C address; 0 = 0x24
	IRQPin, ResetPin string        // GPIO names; "" = none (the IRQ line is not used over uart)
	PollInterval     time.Duration // passed to cardreader.Opts
	Key              []byte        // card token key (cardreader.Opts.Key)
	MinInterval      time.Duration // cardreader.Opts.MinInterval
}

// Indicator is the status LEDs and buzzer: GPIO names, "" = not fitted. It
// is fitted when any pin is named.
type Indicator struct {
	Red, Green, Blue, Buzzer string
	ActiveLow                bool // outputs are on when the pin is Low
	BuzzerOnOff              bool // an active buzzer: on/off, no PWM tone
}

// Door is the cabinet door switch, fitted when Pin names a GPIO.
type Door struct {
	Pin      string
	OpenLow  bool          // the input reads Low while the door is open
	Debounce time.Duration // 0: door.DefaultDebounce
}

// Environment is the cabinet's BME280/BMP280 sensor.
type Environment struct {
	Enabled bool
	Bus     string // periph I²C bus name; "" = the first bus
	Address uint16 // 0 = envsensor.DefaultAddr (0x76)
}

// Display is the optional SSD1306 panel.
type Display struct {
	Enabled bool
	Bus     string // periph I²C bus name; "" = the first bus
	Address uint16 // 0 = display.DefaultAddr (0x3C)
}

// Fitted tells which parts a configuration fits.
type Fitted struct{ Reader, Indicator, Door, Environment, Display bool }

// partID names one part of the station.
type partID int

const (
	partReader partID = iota
	partIndicator
	partDoor
	partEnvironment
	partDisplay
	numParts
)

// nouns name the parts in errors.
var nouns = [numParts]string{"card reader", "indicator", "door switch", "environment sensor", "display"}

// loadHost loads periph's host drivers, once per process.
var loadHost = sync.OnceValue(func() error {
	_, err := driverreg.Init()
	return err
})

// Station is the station's hardware. Its methods are safe for concurrent
// use; each part's Open waits for an Open of the same part in progress.
type Station struct {
	cfg     Config
	log     *slog.Logger
	hostErr error

	partMu [numParts]sync.Mutex // held through one part's Open; Close takes them all

	mu     sync.Mutex // guards what follows
	closed bool
	parts  [numParts]*holding
	buses  map[string]*openBus // by kind and registered name, e.g. "i2c I2C1"
	pins   map[string]*openPin // by the pin's real name
}

// New returns the hardware of cfg. It does no device I/O: it loads periph's
// host drivers (once per process; an error is kept and returned by each
// Open) and opens nothing until asked.
func New(cfg Config) *Station {
	return &Station{
		cfg:     cfg,
		log:     cfg.Logger,
		hostErr: loadHost(),
		buses:   map[string]*openBus{},
		pins:    map[string]*openPin{},
	}
}

// Fitted tells which parts the configuration fits.
func (s *Station) Fitted() Fitted {
	c := s.cfg
	return Fitted{
		Reader:      c.Reader.Driver != "" && c.Reader.Driver != "none",
		Indicator:   c.Indicator.Red != "" || c.Indicator.Green != "" || c.Indicator.Blue != "" || c.Indicator.Buzzer != "",
		Door:        c.Door.Pin != "",
		Environment: c.Environment.Enabled,
		Display:     c.Display.Enabled,
	}
}

// notFitted says why a part is not fitted.
func (s *Station) notFitted(id partID) error {
	var why string
	switch id {
	case partReader:
		why = `reader driver is "none"`
	case partIndicator:
		why = "no LED or buzzer pin named"
	case partDoor:
		why = "no pin named"
	default:
		why = "not enabled"
	}
	return fmt.Errorf("hw: %s %w: %s", nouns[id], ErrNotFitted, why)
}

// logger returns the logger for one driver, or nil.
func (s *Station) logger(component string) *slog.Logger {
	if s.log == nil {
		return nil
	}
	return s.log.With("component", component)
}

// holding is what one open part holds: its device and the buses and pins
// it was given.
type holding struct {
	halt  func() error // halts the device
	buses []*openBus
	pins  []*openPin
}

// open runs one part's Open: it halts and releases the part's previous
// instance, takes the buses and pins acquire asks for (with s.mu held),
// builds the device with them and keeps it, or releases them on failure.
func (s *Station) open(id partID, fitted bool, acquire func(*holding) error, build func() (halt func() error, err error)) error {
	s.partMu[id].Lock()
	defer s.partMu[id].Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("hw: open %s: %w", nouns[id], ErrClosed)
	}
	prev := s.parts[id]
	s.parts[id] = nil
	s.mu.Unlock()
	if prev != nil {
		err := prev.halt()
		if e := s.release(prev); err == nil {
			err = e
		}
		if err != nil && s.log != nil {
			s.log.Warn("hw: releasing the previous instance", "part", nouns[id], "err", err)
		}
	}
	if !fitted {
		return s.notFitted(id)
	}
	if s.hostErr != nil {
		return fmt.Errorf("hw: %s: loading periph's host drivers: %w", nouns[id], s.hostErr)
	}
	h := &holding{}
	s.mu.Lock()
	err := acquire(h)
	s.mu.Unlock()
	if err != nil {
		_ = s.release(h)
		return err
	}
	halt, err := build()
	if err != nil {
		_ = s.release(h)
		return err
	}
	h.halt = halt
	s.mu.Lock()
	s.parts[id] = h
	s.mu.Unlock()
	return nil
}

// release gives back the buses and pins of h: a bus is closed when no part
// uses it any more, a pin is halted.
func (s *Station) release(h *holding) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, p := range h.pins {
		delete(s.pins, p.name)
		if err := p.pin.Halt(); err != nil {
			errs = append(errs, fmt.Errorf("halt pin %s: %w", p.name, err))
		}
	}
	for _, b := range h.buses {
		if b.users--; b.users > 0 {
			continue
		}
		delete(s.buses, b.key)
		if err := b.c.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", b.what, err))
		}
	}
	h.pins, h.buses = nil, nil
	return joinErrs(errs)
}

// Close halts every open device, then closes every bus and pin, once. Later
// Opens fail with ErrClosed; calling Close again does nothing.
func (s *Station) Close() error {
	for i := range s.partMu {
		s.partMu[i].Lock()
		defer s.partMu[i].Unlock()
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	parts := s.parts
	s.parts = [numParts]*holding{}
	s.mu.Unlock()
	var errs []error
	for id, h := range parts {
		if h == nil {
			continue
		}
		if err := h.halt(); err != nil {
			errs = append(errs, fmt.Errorf("halt %s: %w", nouns[id], err))
		}
	}
	for _, h := range parts {
		if h != nil {
			if err := s.release(h); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := joinErrs(errs); err != nil {
		return fmt.Errorf("hw: close: %w", err)
	}
	return nil
}

// multiErr joins errors on one line.
type multiErr []error

func (m multiErr) Error() string {
	s := make([]string, len(m))
	for i, e := range m {
		s[i] = e.Error()
	}
	return strings.Join(s, "; ")
}

func (m multiErr) Unwrap() []error { return m }

func joinErrs(errs []error) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	return multiErr(errs)
}
