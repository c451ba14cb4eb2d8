package hw

import (
	"fmt"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/i2c"

	"station.dev/agent/drivers/display"
	"station.dev/agent/drivers/door"
	"station.dev/agent/drivers/envsensor"
	"station.dev/agent/drivers/indicator"
)

// OpenIndicator opens the status LEDs and buzzer on their pins. An open
// indicator is halted and its pins released first.
func (s *Station) OpenIndicator() (*indicator.Indicator, error) {
	c := s.cfg.Indicator
	const id = partIndicator
	cfg := indicator.Config{BuzzerOnOff: c.BuzzerOnOff, Logger: s.logger("indicator")}
	outs := []struct {
		role, name string
		out        *indicator.Output
	}{
		{"red", c.Red, &cfg.Red},
		{"green", c.Green, &cfg.Green},
		{"blue", c.Blue, &cfg.Blue},
		{"buzzer", c.Buzzer, &cfg.Buzzer},
	}
	var ind *indicator.Indicator
	acquire := func(h *holding) error {
		for _, o := range outs {
			if o.name == "" {
				continue
			}
			p, err := s.pin(id, o.role, o.name, h)
			if err != nil {
				return err
			}
			*o.out = indicator.Output{Pin: p, ActiveLow: c.ActiveLow}
		}
		return nil
	}
	build := func() (halt func() error, err error) {
		if ind, err = indicator.New(cfg); err != nil {
			return nil, fmt.Errorf("hw: %s: %w", nouns[id], err)
		}
		return ind.Halt, nil
	}
	if err := s.open(id, s.Fitted().Indicator, acquire, build); err != nil {
		return nil, err
	}
	return ind, nil
}

// OpenDoor opens the door switch on its pin. An open one is halted and its
// pin released first.
func (s *Station) OpenDoor() (*door.Door, error) {
	c := s.cfg.Door
	const id = partDoor
	var (
		pin gpio.PinIO
		d   *door.Door
	)
	acquire := func(h *holding) (err error) {
		pin, err = s.pin(id, "switch", c.Pin, h)
		return err
	}
	build := func() (halt func() error, err error) {
		d, err = door.New(door.Config{Pin: pin, OpenLow: c.OpenLow, Debounce: c.Debounce, Logger: s.logger("door")})
		if err != nil {
			return nil, fmt.Errorf("hw: %s: %w", nouns[id], err)
		}
		return d.Halt, nil
	}
	if err := s.open(id, s.Fitted().Door, acquire, build); err != nil {
		return nil, err
	}
	return d, nil
}

// OpenEnvironment opens the cabinet sensor on its I²C bus. An open one is
// closed and its bus released first.
func (s *Station) OpenEnvironment() (*envsensor.Sensor, error) {
	c := s.cfg.Environment
	const id = partEnvironment
	var (
		bus i2c.Bus
		sen *envsensor.Sensor
	)
	acquire := func(h *holding) (err error) {
		bus, err = s.i2cBus(id, c.Bus, h)
		return err
	}
	build := func() (halt func() error, err error) {
		addr := c.Address
		if addr == 0 {
			addr = envsensor.DefaultAddr
		}
		if sen, err = envsensor.NewI2C(bus, addr, nil); err != nil {
			return nil, fmt.Errorf("hw: %s: %w", nouns[id], err)
		}
		return sen.Close, nil
	}
	if err := s.open(id, s.Fitted().Environment, acquire, build); err != nil {
		return nil, err
	}
	return sen, nil
}

// OpenDisplay opens the panel on its I²C bus. An open one is closed and its
// bus released first.
func (s *Station) OpenDisplay() (*display.Display, error) {
	c := s.cfg.Display
	const id = partDisplay
	var (
		bus i2c.Bus
		d   *display.Display
	)
	acquire := func(h *holding) (err error) {
		bus, err = s.i2cBus(id, c.Bus, h)
		return err
	}
	build := func() (halt func() error, err error) {
		if d, err = display.NewI2C(bus, &display.Opts{Addr: c.Address}); err != nil {
			return nil, fmt.Errorf("hw: %s: %w", nouns[id], err)
		}
		return d.Close, nil
	}
	if err := s.open(id, s.Fitted().Display, acquire, build); err != nil {
		return nil, err
	}
	return d, nil
}
