// Package envsensorsim emulates a Bosch BME280 (or BMP280) behind an
// i2c.Bus, register by register and with the chip's compensation maths, so
// that simulation and tests run the real environment sensor code
// (station.dev/agent/drivers/envsensor and periph's bmxx80) against it.
package envsensorsim

import (
	"errors"
	"fmt"
	"math"
	"sync"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/physic"
)

// Registers of the BME280 (datasheet section 5.3).
const (
	regCalib00  = 0x88 // 0x88…0xA1: T1…T3, P1…P9, reserved, H1
	regID       = 0xD0
	regReset    = 0xE0
	regCalib26  = 0xE1 // 0xE1…0xE7: H2…H6
	regCtrlHum  = 0xF2
	regStatus   = 0xF3
	regCtrlMeas = 0xF4
	regConfig   = 0xF5
	regData     = 0xF7 // 0xF7…0xFE: press msb/lsb/xlsb, temp msb/lsb/xlsb, hum msb/lsb
	resetWord   = 0xB6
	chipBME280  = 0x60
	chipBMP280  = 0x58
	skipped20   = 0x80000 // raw value of a skipped temperature or pressure measurement
	skipped16   = 0x8000  // raw value of a skipped humidity measurement

	// defaultAddr is envsensor.DefaultAddr: SDO to ground.
	defaultAddr = 0x76
)

// simCalib is the trimming of the emulated chip: the typical values of the
// Bosch datasheets (the BMP280 worked example for T and P; common BME280
// values for H).
var simCalib = calib{
	t1: 27504, t2: 26435, t3: -1000,
	p1: 36477, p2: -10685, p3: 3024, p4: 2855, p5: 140, p6: -7, p7: 15500, p8: -14600, p9: 6000,
	h1: 75, h2: 362, h3: 0, h4: 313, h5: 50, h6: 30,
}

// Config configures a Chip.
type Config struct {
	// Addr is the chip's address; zero means 0x76 (envsensor.DefaultAddr).
	Addr uint16
	// BMP280 emulates the BMP280, which has no humidity sensor.
	BMP280 bool
}

// Chip emulates a BME280 (or BMP280) on its own I²C bus, register by
// register: chip id, calibration, control registers and forced or normal
// mode measurements whose raw values the chip's compensation formulas turn
// into the temperature, humidity and pressure set with SetTemp, SetHumidity
// and SetPressure (to within 0.01 °C, 0.01 % and 0.2 Pa). It starts at
// 22 °C, 45 % and 101325 Pa.
//
// It implements i2c.Bus; a transaction for another address fails as an
// unanswered one does on a real bus.
type Chip struct {
	addr uint16
	bmp  bool

	mu      sync.Mutex
	regs    [256]byte
	tempC   float64
	hum     float64
	pa      float64
	absent  bool
	measure int
}

// New returns an emulated chip.
func New(cfg Config) *Chip {
	s := &Chip{addr: cfg.Addr, bmp: cfg.BMP280, tempC: 22, hum: 45, pa: 101325}
	if s.addr == 0 {
		s.addr = defaultAddr
	}
	s.regs[regID] = chipBME280
	if s.bmp {
		s.regs[regID] = chipBMP280
	}
	c := simCalib
	le := func(b []byte, v uint16) { b[0], b[1] = byte(v), byte(v>>8) }
	t := s.regs[regCalib00:]
	le(t[0:], c.t1)
	le(t[2:], uint16(c.t2))
	le(t[4:], uint16(c.t3))
	le(t[6:], c.p1)
	for i, p := range []int16{c.p2, c.p3, c.p4, c.p5, c.p6, c.p7, c.p8, c.p9} {
		le(t[8+2*i:], uint16(p))
	}
	t[25] = c.h1 // 0xA1
	if !s.bmp {
		h := s.regs[regCalib26:]
		le(h[0:], uint16(c.h2))
		h[2] = c.h3
		h[3] = byte(c.h4 >> 4)
		h[4] = byte(c.h4&0x0F) | byte(c.h5&0x0F)<<4
		h[5] = byte(c.h5 >> 4)
		h[6] = byte(c.h6)
	}
	s.setData(skipped20, skipped20, skipped16)
	return s
}

// Addr returns the chip's address, for envsensor.NewI2C.
func (s *Chip) Addr() uint16 {
	return s.addr
}

// SetTemp sets the temperature the chip measures, in °C (-40 to 85).
func (s *Chip) SetTemp(c float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tempC = c
}

// SetHumidity sets the relative humidity the chip measures, in % (0 to 100).
// A BMP280 ignores it.
func (s *Chip) SetHumidity(h float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hum = h
}

// SetPressure sets the pressure the chip measures, in Pa (30000 to 110000).
func (s *Chip) SetPressure(pa float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pa = pa
}

// SetPresent plugs the chip in or out: an absent chip answers nothing.
func (s *Chip) SetPresent(present bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.absent = !present
}

// Measurements returns how many measurements the chip has made.
func (s *Chip) Measurements() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.measure
}

// String implements i2c.Bus.
func (s *Chip) String() string {
	if s.bmp {
		return "SimBMP280"
	}
	return "SimBME280"
}

// SetSpeed implements i2c.Bus.
func (s *Chip) SetSpeed(physic.Frequency) error {
	return nil
}

// Tx implements i2c.Bus. A write is a register address followed by
// register/value pairs; a read is one register address then the bytes from
// there on, the address incrementing.
func (s *Chip) Tx(addr uint16, w, r []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if addr != s.addr || s.absent {
		return fmt.Errorf("envsensorsim: no device answers at 0x%02x", addr)
	}
	if len(w) == 0 {
		return errors.New("envsensorsim: transaction without a register address")
	}
	if len(r) != 0 {
		if len(w) != 1 {
			return errors.New("envsensorsim: a read must write one register address")
		}
		reg := int(w[0])
		if reg+len(r) > regData && reg < regData+8 && s.regs[regCtrlMeas]&3 == 3 {
			// Normal mode: the chip measures continuously.
			s.measureLocked()
		}
		for i := range r {
			r[i] = s.regs[(reg+i)&0xFF]
		}
		return nil
	}
	if len(w)%2 != 0 && len(w) != 1 {
		return errors.New("envsensorsim: a write must be register/value pairs")
	}
	for i := 0; i+1 < len(w); i += 2 {
		s.writeLocked(w[i], w[i+1])
	}
	return nil
}

func (s *Chip) writeLocked(reg, v byte) {
	switch reg {
	case regReset:
		if v == resetWord {
			s.regs[regCtrlHum], s.regs[regCtrlMeas], s.regs[regConfig] = 0, 0, 0
			s.setData(skipped20, skipped20, skipped16)
		}
	case regCtrlHum:
		if !s.bmp {
			s.regs[reg] = v & 7
		}
	case regConfig:
		s.regs[reg] = v
	case regCtrlMeas:
		s.regs[reg] = v
		if m := v & 3; m == 1 || m == 2 {
			// Forced mode: one measurement, then back to sleep.
			s.measureLocked()
			s.regs[reg] = v &^ 3
		}
	}
	// Other registers are read-only: writes are ignored, as by the chip.
}

// measureLocked puts raw values for the set conditions in the data
// registers, honouring skipped measurements.
func (s *Chip) measureLocked() {
	s.measure++
	c := &simCalib
	osrsT := s.regs[regCtrlMeas] >> 5
	osrsP := (s.regs[regCtrlMeas] >> 2) & 7
	osrsH := s.regs[regCtrlHum] & 7
	rawT := c.rawTemp(s.tempC)
	_, tFine := c.temp(rawT)
	rawP := int32(skipped20)
	if osrsP != 0 {
		rawP = c.rawPressure(s.pa, tFine)
	}
	rawH := int32(skipped16)
	if osrsH != 0 && !s.bmp {
		rawH = c.rawHumidity(s.hum, tFine)
	}
	if osrsT == 0 {
		rawT = skipped20
	}
	s.setData(rawT, rawP, rawH)
}

func (s *Chip) setData(t, p, h int32) {
	d := s.regs[regData:]
	d[0], d[1], d[2] = byte(p>>12), byte(p>>4), byte(p<<4)
	d[3], d[4], d[5] = byte(t>>12), byte(t>>4), byte(t<<4)
	if s.bmp {
		d[6], d[7] = 0x80, 0x00
		return
	}
	d[6], d[7] = byte(h>>8), byte(h)
}

var _ i2c.Bus = (*Chip)(nil)

// calib holds the trimming parameters of a BME280.
type calib struct {
	t1                             uint16
	t2, t3                         int16
	p1                             uint16
	p2, p3, p4, p5, p6, p7, p8, p9 int16
	h1, h3                         uint8
	h2, h4, h5                     int16
	h6                             int8
}

// temp returns the temperature in 0.01 °C and t_fine for a raw reading
// (datasheet 4.2.3, 32-bit integer formula).
func (c *calib) temp(adc int32) (int32, int32) {
	v1 := (((adc >> 3) - (int32(c.t1) << 1)) * int32(c.t2)) >> 11
	d := (adc >> 4) - int32(c.t1)
	v2 := (((d * d) >> 12) * int32(c.t3)) >> 14
	tFine := v1 + v2
	return (tFine*5 + 128) >> 8, tFine
}

// pressure returns the pressure in Pa as Q24.8 (datasheet 4.2.3, 64-bit
// integer formula).
func (c *calib) pressure(adc, tFine int32) uint32 {
	v1 := int64(tFine) - 128000
	v2 := v1 * v1 * int64(c.p6)
	v2 += (v1 * int64(c.p5)) << 17
	v2 += int64(c.p4) << 35
	v1 = ((v1 * v1 * int64(c.p3)) >> 8) + ((v1 * int64(c.p2)) << 12)
	v1 = (((int64(1) << 47) + v1) * int64(c.p1)) >> 33
	if v1 == 0 {
		return 0
	}
	p := int64(1048576 - adc)
	p = (((p << 31) - v2) * 3125) / v1
	v1 = (int64(c.p9) * (p >> 13) * (p >> 13)) >> 25
	v2 = (int64(c.p8) * p) >> 19
	return uint32(((p + v1 + v2) >> 8) + (int64(c.p7) << 4))
}

// humidity returns the relative humidity in % as Q22.10 (datasheet 4.2.3).
func (c *calib) humidity(adc, tFine int32) uint32 {
	v := tFine - 76800
	a := ((adc << 14) - (int32(c.h4) << 20) - (int32(c.h5) * v) + 16384) >> 15
	b := ((((((v*int32(c.h6))>>10)*(((v*int32(c.h3))>>11)+32768))>>10)+2097152)*int32(c.h2) + 8192) >> 14
	v = a * b
	v -= ((((v >> 15) * (v >> 15)) >> 7) * int32(c.h1)) >> 4
	if v < 0 {
		v = 0
	}
	if v > 419430400 {
		v = 419430400
	}
	return uint32(v >> 12)
}

// search returns the smallest n in [0, max] for which ok(n) holds, or max;
// ok must be monotonic.
func search(max int32, ok func(int32) bool) int32 {
	lo, hi := int32(0), max
	for lo < hi {
		mid := lo + (hi-lo)/2
		if ok(mid) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// rawTemp inverts temp: the raw reading that gives c °C.
func (c *calib) rawTemp(celsius float64) int32 {
	want := int32(math.Round(clamp(celsius, -40, 85) * 100))
	return search(0xFFFFF, func(raw int32) bool { t, _ := c.temp(raw); return t >= want })
}

// rawPressure inverts pressure, which falls as the raw reading rises.
func (c *calib) rawPressure(pa float64, tFine int32) int32 {
	want := uint32(math.Round(clamp(pa, 30000, 110000) * 256))
	return search(0xFFFFF, func(raw int32) bool { return c.pressure(raw, tFine) <= want })
}

// rawHumidity inverts humidity.
func (c *calib) rawHumidity(h float64, tFine int32) int32 {
	want := uint32(math.Round(clamp(h, 0, 100) * 1024))
	return search(0xFFFF, func(raw int32) bool { return c.humidity(raw, tFine) >= want })
}

func clamp(v, lo, hi float64) float64 {
	if math.IsNaN(v) {
		return lo
	}
	return math.Max(lo, math.Min(hi, v))
}
