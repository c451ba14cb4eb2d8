// Package envsensor reads the cabinet's temperature, humidity and pressure
// from a Bosch BME280 or BMP280 (or BMP180) over I²C with periph.io's bmxx80
// driver, checks them against alarm thresholds and reads the host's CPU
// temperature and Raspberry Pi throttling state.
//
// A Sensor talks through the bus it is given and never closes it: whoever
// opened the bus (the hardware assembly, station.dev/agent/drivers/hw)
// closes it. Package envsensorsim is the emulated twin: a BME280 behind an
// i2c.Bus, with correct compensation maths, so the real bmxx80 code runs in
// simulation.
package envsensor

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/devices/v3/bmxx80"
)

// Health states reported by Health.
const (
	HealthOK       = "ok"
	HealthDegraded = "degraded"
	HealthDown     = "down"
)

// DefaultAddr is the BME280/BMP280 address with SDO to ground; 0x77 is the
// other one (and the BMP180's).
const DefaultAddr = 0x76

// failuresDown is the number of failed reads in a row that make the sensor
// "down" rather than "degraded".
const failuresDown = 3

// ErrImplausible reports a reading outside the sensor's operating range,
// which a healthy sensor does not give.
var ErrImplausible = errors.New("implausible reading")

// WeatherOpts are the sensing options used by default: the datasheet's
// weather monitoring settings (1x oversampling, no filter), which keep the
// measurement short (about 8 ms) and the chip from warming itself.
var WeatherOpts = bmxx80.Opts{
	Temperature: bmxx80.O1x,
	Pressure:    bmxx80.O1x,
	Humidity:    bmxx80.O1x,
}

// Reading is one measurement.
type Reading struct {
	// TempC is the temperature in °C.
	TempC float64
	// Humidity is the relative humidity in %; NaN when the chip has no
	// humidity sensor (BMP280, BMP180).
	Humidity float64
	// PressurePa is the air pressure in Pa.
	PressurePa float64
	// At is when the reading was taken.
	At time.Time
}

// HasHumidity tells whether the reading includes humidity.
func (r Reading) HasHumidity() bool {
	return !math.IsNaN(r.Humidity)
}

type jsonReading struct {
	TempC      float64   `json:"temp_c"`
	Humidity   *float64  `json:"humidity,omitempty"`
	PressurePa float64   `json:"pressure_pa"`
	At         time.Time `json:"at"`
}

// MarshalJSON encodes {"temp_c":…,"humidity":…,"pressure_pa":…,"at":…},
// leaving humidity out when the chip has none.
func (r Reading) MarshalJSON() ([]byte, error) {
	j := jsonReading{TempC: r.TempC, PressurePa: r.PressurePa, At: r.At}
	if r.HasHumidity() {
		j.Humidity = &r.Humidity
	}
	return json.Marshal(j)
}

// UnmarshalJSON decodes what MarshalJSON encodes; a missing humidity becomes
// NaN.
func (r *Reading) UnmarshalJSON(b []byte) error {
	var j jsonReading
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*r = Reading{TempC: j.TempC, Humidity: math.NaN(), PressurePa: j.PressurePa, At: j.At}
	if j.Humidity != nil {
		r.Humidity = *j.Humidity
	}
	return nil
}

// Opts are the options of a Sensor. A nil *Opts means all defaults.
type Opts struct {
	// Sensing sets oversampling and filtering; nil means WeatherOpts.
	Sensing *bmxx80.Opts
	// Now stamps readings; nil means time.Now.
	Now func() time.Time
}

// Sensor is an environment sensor. Its methods are safe for concurrent use.
type Sensor struct {
	dev   *bmxx80.Dev
	model string
	where string // bus and address
	now   func() time.Time

	mu      sync.Mutex
	fails   int
	lastErr error
	closed  bool
}

// NewI2C returns the sensor at addr (0x76 or 0x77) on bus b. It talks to the
// chip at once, so a missing or wrong device fails here. The Sensor never
// closes b.
func NewI2C(b i2c.Bus, addr uint16, opts *Opts) (*Sensor, error) {
	var o Opts
	if opts != nil {
		o = *opts
	}
	sensing := WeatherOpts
	if o.Sensing != nil {
		sensing = *o.Sensing
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	dev, err := bmxx80.NewI2C(b, addr, &sensing)
	if err != nil {
		return nil, fmt.Errorf("envsensor: no sensor at %s 0x%02x: %w", b, addr, driverErr(err))
	}
	model := dev.String()
	if i := strings.IndexByte(model, '{'); i >= 0 {
		model = model[:i]
	}
	where := fmt.Sprintf("%s 0x%02x", b, addr)
	return &Sensor{dev: dev, model: model, where: where, now: o.Now}, nil
}

// String describes the sensor, e.g. "BME280 at I2C1 0x76".
func (s *Sensor) String() string {
	return s.model + " at " + s.where
}

// Model returns "BME280", "BMP280" or "BMP180".
func (s *Sensor) Model() string {
	return s.model
}

// Read takes one measurement (forced mode); it takes some milliseconds.
func (s *Sensor) Read() (Reading, error) {
	var e physic.Env
	err := s.dev.Sense(&e)
	at := s.now()
	var r Reading
	if err != nil {
		err = driverErr(err)
	} else {
		r = Reading{
			TempC:      e.Temperature.Celsius(),
			Humidity:   math.NaN(),
			PressurePa: float64(e.Pressure) / float64(physic.Pascal),
			At:         at,
		}
		if s.model == "BME280" {
			r.Humidity = float64(e.Humidity) / float64(physic.PercentRH)
		}
		err = r.check()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.fails++
		s.lastErr = err
		return Reading{}, fmt.Errorf("envsensor: read %s: %w", s.model, err)
	}
	s.fails, s.lastErr = 0, nil
	return r, nil
}

// driverErr strips the prefixes bmxx80 stacks on its errors ("bme280:
// bme280: …", ": …"). bmxx80 formats errors with %v, so there is nothing to
// unwrap.
func driverErr(err error) error {
	msg := err.Error()
	for {
		t := strings.TrimPrefix(msg, ": ")
		for _, p := range []string{"bme280: ", "bmp280: ", "bmp180: ", "bmxx80: "} {
			t = strings.TrimPrefix(t, p)
		}
		if t == msg {
			return errors.New(msg)
		}
		msg = t
	}
}

// check rejects values well outside the chips' operating range (-40…85 °C,
// 300…1100 hPa), which only a faulty chip or bus gives.
func (r Reading) check() error {
	switch {
	case !(r.TempC >= -45 && r.TempC <= 90):
		return fmt.Errorf("%w: temperature %.2f °C", ErrImplausible, r.TempC)
	case !(r.PressurePa >= 25000 && r.PressurePa <= 115000):
		return fmt.Errorf("%w: pressure %.0f Pa", ErrImplausible, r.PressurePa)
	case r.HasHumidity() && !(r.Humidity >= 0 && r.Humidity <= 100):
		return fmt.Errorf("%w: humidity %.1f %%", ErrImplausible, r.Humidity)
	}
	return nil
}

// Health reports "ok" when the last read worked, "degraded" after one or two
// failed reads and "down" after more in a row, or once closed.
func (s *Sensor) Health() (status, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return HealthDown, "envsensor: closed"
	case s.fails == 0:
		return HealthOK, ""
	case s.fails < failuresDown:
		return HealthDegraded, fmt.Sprintf("envsensor: %s read failed: %v", s.model, s.lastErr)
	default:
		return HealthDown, fmt.Sprintf("envsensor: %s: %d reads failed in a row: %v", s.model, s.fails, s.lastErr)
	}
}

// Halt stops any continuous sensing of the chip (Read does not start any).
func (s *Sensor) Halt() error {
	if err := s.dev.Halt(); err != nil {
		return fmt.Errorf("envsensor: halt: %w", err)
	}
	return nil
}

// Close halts the sensor, which then reports "down". It does not close the
// bus. Calling it again does nothing.
func (s *Sensor) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	return s.Halt()
}
