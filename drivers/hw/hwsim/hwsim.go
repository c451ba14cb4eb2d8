// Package hwsim is the simulated twin of the station's hardware assembly
// (station.dev/agent/drivers/hw), for `station run --sim` and tests. It has
// the same methods over emulated chips, so the real driver code runs: the
// PN532 (pn532sim) behind its emulated I²C bus with its IRQ line, the BME280
// (envsensorsim), the indicator's pins (indicatorsim), the door switch
// (doorsim) and, when configured, the SSD1306 panel (displaysim).
//
// The emulated chips live as long as the Station: a part opened again finds
// the same chip in the same state, as on a station.
package hwsim

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"station.dev/agent/drivers/cardreader"
	"station.dev/agent/drivers/display"
	"station.dev/agent/drivers/display/displaysim"
	"station.dev/agent/drivers/door"
	"station.dev/agent/drivers/door/doorsim"
	"station.dev/agent/drivers/envsensor"
	"station.dev/agent/drivers/envsensor/envsensorsim"
	"station.dev/agent/drivers/hw"
	"station.dev/agent/drivers/indicator"
	"station.dev/agent/drivers/indicator/indicatorsim"
	"station.dev/agent/drivers/pn532"
	"station.dev/agent/drivers/pn532/pn532sim"
	"station.dev/agent/internal/clock"
)

// Config configures the emulated station.
type Config struct {
	// Key is the card token key (cardreader.Opts.Key).
	Key []byte
	// MinInterval is cardreader.Opts.MinInterval.
	MinInterval time.Duration
	// PollInterval paces the reader as on a station (cardreader.Opts.
	// PollInterval); 0 means the cardreader default. Pass the configured
	// reader poll interval: unpaced, the emulated chip answers tens of
	// thousands of polls a second.
	PollInterval time.Duration
	// DoorOpenLow means the emulated switch reads Low while the door is open.
	DoorOpenLow bool
	// Display fits the emulated panel.
	Display bool
	// Logger receives the drivers' warnings; nil: quiet.
	Logger *slog.Logger
}

// Station is the emulated station's hardware. Its methods are safe for
// concurrent use.
type Station struct {
	cfg   Config
	clk   clock.Clock // of the door and the indicator
	chip  *pn532sim.Chip
	env   *envsensorsim.Chip
	pins  *indicatorsim.Pins
	sw    *doorsim.Switch
	panel *displaysim.Panel // nil unless cfg.Display

	mu     sync.Mutex // held through each Open and Close: the emulated chips answer at once
	closed bool
	reader *hw.CardReader
	ind    *indicator.Indicator
	door   *door.Door
	sensor *envsensor.Sensor
	disp   *display.Display
}

// New returns the emulated station, the door closed, the cabinet at 22 °C
// and 45 % RH, no card in the field. It opens nothing until asked.
func New(cfg Config) *Station {
	return newStation(cfg, clock.System)
}

func newStation(cfg Config, clk clock.Clock) *Station {
	s := &Station{
		cfg:  cfg,
		clk:  clk,
		chip: pn532sim.New(nil),
		env:  envsensorsim.New(envsensorsim.Config{}),
		pins: indicatorsim.NewPins(),
		sw:   doorsim.New(doorsim.Config{OpenLow: cfg.DoorOpenLow, Clock: clk}),
	}
	if cfg.Display {
		s.panel = displaysim.New()
	}
	return s
}

// Fitted tells which parts the emulated station has: all but the display,
// which Config.Display fits.
func (s *Station) Fitted() hw.Fitted {
	return hw.Fitted{Reader: true, Indicator: true, Door: true, Environment: true, Display: s.cfg.Display}
}

// Present places a card in the emulated reader's field; the channel is
// closed once the card has left it (see pn532sim.Chip.Present).
func (s *Station) Present(c pn532sim.Card) <-chan struct{} {
	return s.chip.Present(c)
}

// SetDoor opens or closes the emulated cabinet door.
func (s *Station) SetDoor(open bool) {
	s.sw.Set(open)
}

// SetEnvironment sets what the emulated cabinet sensor measures: the
// temperature in °C and, unless nil, the relative humidity in %.
func (s *Station) SetEnvironment(tempC float64, humidity *float64) {
	s.env.SetTemp(tempC)
	if humidity != nil {
		s.env.SetHumidity(*humidity)
	}
}

// Chip returns the emulated PN532, for fault injection in tests.
func (s *Station) Chip() *pn532sim.Chip {
	return s.chip
}

// logger returns the logger for one driver, or nil.
func (s *Station) logger(component string) *slog.Logger {
	if s.cfg.Logger == nil {
		return nil
	}
	return s.cfg.Logger.With("component", component)
}

// begin starts an Open with s.mu held: it fails once closed.
func (s *Station) begin(noun string) error {
	if s.closed {
		return fmt.Errorf("hwsim: open %s: %w", noun, hw.ErrClosed)
	}
	return nil
}

// OpenReader opens the emulated card reader: the real pn532 driver on the
// emulated chip's I²C bus and IRQ line, behind cardreader. beat (may be nil)
// is called on every poll. An open reader is halted first.
func (s *Station) OpenReader(beat func()) (*hw.CardReader, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.begin("card reader"); err != nil {
		return nil, err
	}
	if s.reader != nil {
		_ = s.reader.Halt()
		s.reader = nil
	}
	opts := pn532.DefaultOpts
	opts.IRQ = s.chip.IRQ()
	opts.Logger = s.logger("pn532")
	dev, err := pn532.NewI2C(s.chip.I2C(), 0x24, &opts)
	if err != nil {
		return nil, fmt.Errorf("hwsim: card reader: %w", err)
	}
	r, err := hw.NewCardReader(dev, beat, &cardreader.Opts{
		Key: s.cfg.Key, MinInterval: s.cfg.MinInterval, PollInterval: s.cfg.PollInterval,
		Logger: s.logger("cardreader"),
	})
	if err != nil {
		_ = dev.Halt()
		return nil, fmt.Errorf("hwsim: card reader: %w", err)
	}
	s.reader = r
	return r, nil
}

// OpenIndicator opens the indicator on the emulated RGB LED and buzzer
// pins. An open one is halted first.
func (s *Station) OpenIndicator() (*indicator.Indicator, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.begin("indicator"); err != nil {
		return nil, err
	}
	if s.ind != nil {
		_ = s.ind.Halt()
		s.ind = nil
	}
	ind, err := indicator.New(indicator.Config{
		Red:    indicator.Output{Pin: s.pins.Red},
		Green:  indicator.Output{Pin: s.pins.Green},
		Blue:   indicator.Output{Pin: s.pins.Blue},
		Buzzer: indicator.Output{Pin: s.pins.Buzzer},
		Clock:  s.clk,
		Logger: s.logger("indicator"),
	})
	if err != nil {
		return nil, fmt.Errorf("hwsim: indicator: %w", err)
	}
	s.ind = ind
	return ind, nil
}

// OpenDoor opens the door switch on the emulated switch. An open one is
// halted first.
func (s *Station) OpenDoor() (*door.Door, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.begin("door switch"); err != nil {
		return nil, err
	}
	if s.door != nil {
		_ = s.door.Halt()
		s.door = nil
	}
	d, err := door.New(door.Config{Pin: s.sw, OpenLow: s.cfg.DoorOpenLow, Clock: s.clk, Logger: s.logger("door")})
	if err != nil {
		return nil, fmt.Errorf("hwsim: door switch: %w", err)
	}
	s.door = d
	return d, nil
}

// OpenEnvironment opens the cabinet sensor on the emulated BME280. An open
// one is closed first.
func (s *Station) OpenEnvironment() (*envsensor.Sensor, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.begin("environment sensor"); err != nil {
		return nil, err
	}
	if s.sensor != nil {
		_ = s.sensor.Close()
		s.sensor = nil
	}
	sen, err := envsensor.NewI2C(s.env, s.env.Addr(), nil)
	if err != nil {
		return nil, fmt.Errorf("hwsim: environment sensor: %w", err)
	}
	s.sensor = sen
	return sen, nil
}

// OpenDisplay opens the display on the emulated SSD1306; without
// Config.Display it fails with hw.ErrNotFitted. An open one is closed first.
func (s *Station) OpenDisplay() (*display.Display, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.begin("display"); err != nil {
		return nil, err
	}
	if s.panel == nil {
		return nil, fmt.Errorf("hwsim: display %w: not enabled", hw.ErrNotFitted)
	}
	if s.disp != nil {
		_ = s.disp.Close()
		s.disp = nil
	}
	d, err := display.NewI2C(s.panel, nil)
	if err != nil {
		return nil, fmt.Errorf("hwsim: display: %w", err)
	}
	s.disp = d
	return d, nil
}

// Close halts every open device. Later Opens fail with hw.ErrClosed;
// calling Close again does nothing.
func (s *Station) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	if s.reader != nil {
		errs = append(errs, s.reader.Halt())
	}
	if s.ind != nil {
		errs = append(errs, s.ind.Halt())
	}
	if s.door != nil {
		errs = append(errs, s.door.Halt())
	}
	if s.sensor != nil {
		errs = append(errs, s.sensor.Close())
	}
	if s.disp != nil {
		errs = append(errs, s.disp.Close())
	}
	s.reader, s.ind, s.door, s.sensor, s.disp = nil, nil, nil, nil, nil
	for _, err := range errs {
		if err != nil {
			return fmt.Errorf("hwsim: close: %w", err)
		}
	}
	return nil
}
