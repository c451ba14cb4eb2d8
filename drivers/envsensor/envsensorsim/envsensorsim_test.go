package envsensorsim

import (
	"math"
	"reflect"
	"testing"
	"time"

	"periph.io/x/conn/v3/i2c/i2ctest"

	"station.dev/agent/drivers/envsensor"
)

// Calibration of the Bosch datasheet example (BMP280 section 3.12) and
// common BME280 humidity trimming, as the chip sends it.
var (
	calib88 = []byte{
		0x70, 0x6B, // T1 27504
		0x43, 0x67, // T2 26435
		0x18, 0xFC, // T3 -1000
		0x7D, 0x8E, // P1 36477
		0x43, 0xD6, // P2 -10685
		0xD0, 0x0B, // P3 3024
		0x27, 0x0B, // P4 2855
		0x8C, 0x00, // P5 140
		0xF9, 0xFF, // P6 -7
		0x8C, 0x3C, // P7 15500
		0xF8, 0xC6, // P8 -14600
		0x70, 0x17, // P9 6000
		0x00, // reserved
		0x4B, // H1 75
	}
	calibE1 = []byte{
		0x6A, 0x01, // H2 362
		0x00,       // H3 0
		0x13, 0x29, // H4 313 = 0x13<<4 | 0x9, H5 low nibble 2
		0x03, // H5 50 = 0x03<<4 | 2
		0x1E, // H6 30
	}
)

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol }

// t0 stamps readings.
var t0 = time.Date(2024, 5, 1, 8, 0, 0, 0, time.UTC)

func fixedNow() time.Time { return t0 }

// newSensor returns the real driver over a new emulated chip.
func newSensor(t *testing.T, cfg Config) (*envsensor.Sensor, *Chip) {
	t.Helper()
	c := New(cfg)
	s, err := envsensor.NewI2C(c, c.Addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}

func TestRegisters(t *testing.T) {
	c := New(Config{})
	buf := make([]byte, len(calib88))
	if err := c.Tx(0x76, []byte{0x88}, buf); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(buf, calib88) {
		t.Fatalf("calibration 0x88: % x", buf)
	}
	buf = make([]byte, len(calibE1))
	if err := c.Tx(0x76, []byte{0xE1}, buf); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(buf, calibE1) {
		t.Fatalf("calibration 0xE1: % x", buf)
	}
	// Before any measurement the data registers hold the reset values.
	buf = make([]byte, 8)
	if err := c.Tx(0x76, []byte{0xF7}, buf); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(buf, []byte{0x80, 0, 0, 0x80, 0, 0, 0x80, 0}) {
		t.Fatalf("data after reset: % x", buf)
	}
	// Read-only registers ignore writes; odd writes are refused.
	if err := c.Tx(0x76, []byte{0xD0, 0x12}, nil); err != nil {
		t.Fatal(err)
	}
	id := make([]byte, 1)
	if err := c.Tx(0x76, []byte{0xD0}, id); err != nil || id[0] != 0x60 {
		t.Fatalf("chip id %x %v", id, err)
	}
	if err := c.Tx(0x76, []byte{0xF4, 0x25, 0xF2}, nil); err == nil {
		t.Fatal("odd write accepted")
	}
	if err := c.Tx(0x76, []byte{0xF4, 0x25}, id); err == nil {
		t.Fatal("write then read of two registers accepted")
	}
}

// TestSimRunsRealDriver drives the real bmxx80 code against the emulated
// chip and checks both the values and the transactions.
func TestRunsRealDriver(t *testing.T) {
	c := New(Config{})
	rec := &i2ctest.Record{Bus: c}
	s, err := envsensor.NewI2C(rec, envsensor.DefaultAddr, &envsensor.Opts{Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []struct{ temp, hum, pa float64 }{
		{22, 45, 101325},
		{-10, 5, 95000},
		{35.5, 80, 99000},
		{61.25, 93.5, 80000},
		{-40, 0, 30000},
		{85, 100, 110000},
	} {
		c.SetTemp(v.temp)
		c.SetHumidity(v.hum)
		c.SetPressure(v.pa)
		rec.Ops = nil
		r, err := s.Read()
		if err != nil {
			t.Fatal(err)
		}
		if !near(r.TempC, v.temp, 0.01) || !near(r.Humidity, v.hum, 0.01) || !near(r.PressurePa, v.pa, 0.2) {
			t.Errorf("set %+v, read %+v", v, r)
		}
		want := []i2ctest.IO{
			{Addr: 0x76, W: []byte{0xF4, 0x25}},
			{Addr: 0x76, W: []byte{0xF3}, R: []byte{0}},
			{Addr: 0x76, W: []byte{0xF7}, R: rec.Ops[len(rec.Ops)-1].R},
		}
		if !reflect.DeepEqual(rec.Ops, want) {
			t.Fatalf("transactions %+v", rec.Ops)
		}
	}
	if n := c.Measurements(); n != 6 {
		t.Fatalf("%d measurements, want 6", n)
	}
}

func TestBMP280(t *testing.T) {
	s, c := newSensor(t, Config{BMP280: true, Addr: 0x77})
	c.SetTemp(30)
	c.SetHumidity(70) // ignored: no humidity sensor
	r, err := s.Read()
	if err != nil {
		t.Fatal(err)
	}
	if s.Model() != "BMP280" || r.HasHumidity() || !near(r.TempC, 30, 0.01) || !near(r.PressurePa, 101325, 0.2) {
		t.Fatalf("%s %+v", s, r)
	}
}

func TestHealth(t *testing.T) {
	s, c := newSensor(t, Config{})
	if st, reason := s.Health(); st != envsensor.HealthOK || reason != "" {
		t.Fatalf("health %s %q", st, reason)
	}
	c.SetPresent(false)
	for i, want := range []string{envsensor.HealthDegraded, envsensor.HealthDegraded, envsensor.HealthDown, envsensor.HealthDown} {
		if _, err := s.Read(); err == nil {
			t.Fatal("read from an absent chip")
		}
		st, reason := s.Health()
		if st != want {
			t.Fatalf("after %d failures: %s %q", i+1, st, reason)
		}
		if i == 2 && reason != "envsensor: BME280: 3 reads failed in a row: envsensorsim: no device answers at 0x76" {
			t.Fatalf("reason %q", reason)
		}
	}
	c.SetPresent(true)
	if _, err := s.Read(); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.Health(); st != envsensor.HealthOK {
		t.Fatalf("health after recovery %s", st)
	}
}

func TestNormalMode(t *testing.T) {
	c := New(Config{})
	c.SetTemp(18)
	// Normal mode (as bmxx80's SenseContinuous sets it): every read of the
	// data registers gives a fresh measurement.
	if err := c.Tx(0x76, []byte{0xF2, 0x01, 0xF4, 0x27}, nil); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	for i := 1; i <= 2; i++ {
		if err := c.Tx(0x76, []byte{0xF7}, buf); err != nil {
			t.Fatal(err)
		}
		if c.Measurements() != i {
			t.Fatalf("%d measurements after %d reads", c.Measurements(), i)
		}
	}
	raw := int32(buf[3])<<12 | int32(buf[4])<<4 | int32(buf[5])>>4
	if tc, _ := simCalib.temp(raw); tc != 1800 {
		t.Fatalf("temperature %d c°C", tc)
	}
	// Skipped pressure (osrs_p 0) reads as 0x80000; reset clears the mode.
	if err := c.Tx(0x76, []byte{0xF4, 0x21, 0xE0, 0xB6}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Tx(0x76, []byte{0xF7}, buf); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(buf, []byte{0x80, 0, 0, 0x80, 0, 0, 0x80, 0}) {
		t.Fatalf("after reset: % x", buf)
	}
}
