package envsensor

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/i2c/i2ctest"
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
	// The datasheet example: adc_P 415148, adc_T 519888; adc_H 27000.
	data280 = []byte{0x65, 0x5A, 0xC0, 0x7E, 0xED, 0x00, 0x69, 0x78}
)

const eps = 1e-9

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol }

// fixedNow stamps readings.
var t0 = time.Date(2024, 5, 1, 8, 0, 0, 0, time.UTC)

func fixedNow() time.Time { return t0 }

// noClose is a bus whose Close is counted: the Sensor must never close a bus
// it was given.
type noClose struct {
	i2c.Bus
	closed int
}

func (n *noClose) Close() error { n.closed++; return nil }

func TestPlaybackBME280(t *testing.T) {
	pb := &i2ctest.Playback{Ops: []i2ctest.IO{
		// Chip id: BME280.
		{Addr: 0x76, W: []byte{0xD0}, R: []byte{0x60}},
		// Calibration T1…P9, H1.
		{Addr: 0x76, W: []byte{0x88}, R: calib88},
		// Calibration H2…H6.
		{Addr: 0x76, W: []byte{0xE1}, R: calibE1},
		// ctrl_meas sleep (osrs_t 1x, osrs_p 1x), ctrl_hum 1x, config standby
		// 1 s without filter, ctrl_meas again.
		{Addr: 0x76, W: []byte{0xF4, 0x24, 0xF2, 0x01, 0xF5, 0xA0, 0xF4, 0x24}},
		// Read: ctrl_meas forced mode.
		{Addr: 0x76, W: []byte{0xF4, 0x25}},
		// status: not measuring.
		{Addr: 0x76, W: []byte{0xF3}, R: []byte{0x00}},
		// press, temp, hum.
		{Addr: 0x76, W: []byte{0xF7}, R: data280},
	}}
	bus := &noClose{Bus: pb}
	s, err := NewI2C(bus, 0x76, &Opts{Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	if s.Model() != "BME280" || s.String() != "BME280 at playback 0x76" {
		t.Fatalf("model %q, String %q", s.Model(), s.String())
	}
	r, err := s.Read()
	if err != nil {
		t.Fatal(err)
	}
	// T 25.08 °C (datasheet, t_fine 128422); p = 25767233/256 Pa by the
	// 64-bit formula; h = 39190/1024 % converted by bmxx80 to 38.2714 %.
	if !near(r.TempC, 25.08, eps) || !near(r.PressurePa, 25767233.0/256, eps) || !near(r.Humidity, 38.2714, eps) || !r.At.Equal(t0) {
		t.Fatalf("reading %+v", r)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if bus.closed != 0 {
		t.Fatal("the sensor closed a bus it did not open")
	}
	if err := pb.Close(); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.Health(); st != HealthDown {
		t.Fatalf("health after Close: %s", st)
	}
}

func TestPlaybackBMP280(t *testing.T) {
	pb := &i2ctest.Playback{Ops: []i2ctest.IO{
		// Chip id: BMP280.
		{Addr: 0x77, W: []byte{0xD0}, R: []byte{0x58}},
		{Addr: 0x77, W: []byte{0x88}, R: calib88},
		// No humidity: no 0xE1 calibration and no ctrl_hum.
		{Addr: 0x77, W: []byte{0xF4, 0x24, 0xF5, 0xA0, 0xF4, 0x24}},
		{Addr: 0x77, W: []byte{0xF4, 0x25}},
		{Addr: 0x77, W: []byte{0xF3}, R: []byte{0x00}},
		{Addr: 0x77, W: []byte{0xF7}, R: data280[:6]},
	}}
	s, err := NewI2C(pb, 0x77, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Read()
	if err != nil {
		t.Fatal(err)
	}
	if s.Model() != "BMP280" || r.HasHumidity() || !near(r.TempC, 25.08, eps) || !near(r.PressurePa, 25767233.0/256, eps) {
		t.Fatalf("%s reading %+v", s.Model(), r)
	}
	if err := pb.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestImplausibleReading(t *testing.T) {
	pb := &i2ctest.Playback{Ops: []i2ctest.IO{
		{Addr: 0x76, W: []byte{0xD0}, R: []byte{0x60}},
		{Addr: 0x76, W: []byte{0x88}, R: calib88},
		{Addr: 0x76, W: []byte{0xE1}, R: calibE1},
		{Addr: 0x76, W: []byte{0xF4, 0x24, 0xF2, 0x01, 0xF5, 0xA0, 0xF4, 0x24}},
		{Addr: 0x76, W: []byte{0xF4, 0x25}},
		{Addr: 0x76, W: []byte{0xF3}, R: []byte{0x00}},
		// All ones, as from a bus with nothing driving it: 187.55 °C.
		{Addr: 0x76, W: []byte{0xF7}, R: []byte{0xFF, 0xFF, 0xF0, 0xFF, 0xFF, 0xF0, 0xFF, 0xFF}},
	}}
	s, err := NewI2C(pb, 0x76, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Read()
	if !errors.Is(err, ErrImplausible) || !strings.Contains(err.Error(), "temperature 187.55 °C") {
		t.Fatalf("Read = %v", err)
	}
	if st, reason := s.Health(); st != HealthDegraded || !strings.Contains(reason, "implausible") {
		t.Fatalf("health %s %q", st, reason)
	}
}

func TestNewI2CFailures(t *testing.T) {
	chip := NewSimChip(SimChipConfig{})
	// Nothing answers at 0x77.
	_, err := NewI2C(chip, 0x77, nil)
	if err == nil || err.Error() != "envsensor: no sensor at SimBME280 0x77: envsensor: sim: no device answers at 0x77" {
		t.Fatalf("NewI2C(0x77) = %v", err)
	}
	// Not an address of these chips.
	if _, err := NewI2C(chip, 0x40, nil); err == nil {
		t.Fatal("NewI2C(0x40) succeeded")
	}
	// Another chip answers at the address.
	pb := &i2ctest.Playback{Ops: []i2ctest.IO{{Addr: 0x76, W: []byte{0xD0}, R: []byte{0x99}}}}
	if _, err := NewI2C(pb, 0x76, nil); err == nil || err.Error() != "envsensor: no sensor at playback 0x76: unexpected chip id 99" {
		t.Fatalf("NewI2C(wrong chip) = %v", err)
	}
	chip.SetPresent(false)
	if _, err := NewI2C(chip, 0x76, nil); err == nil {
		t.Fatal("NewI2C found an absent chip")
	}
}

func TestOpenUnknownBus(t *testing.T) {
	_, err := Open("no-such-bus", DefaultAddr, nil)
	if err == nil || !strings.HasPrefix(err.Error(), `envsensor: i2c bus "no-such-bus": `) {
		t.Fatalf("Open = %v", err)
	}
}

func TestSimChipRegisters(t *testing.T) {
	c := NewSimChip(SimChipConfig{})
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
func TestSimRunsRealDriver(t *testing.T) {
	c := NewSimChip(SimChipConfig{})
	rec := &i2ctest.Record{Bus: c}
	s, err := NewI2C(rec, DefaultAddr, &Opts{Now: fixedNow})
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

func TestSimBMP280(t *testing.T) {
	s, c, err := NewSim(SimChipConfig{BMP280: true, Addr: 0x77}, nil)
	if err != nil {
		t.Fatal(err)
	}
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

func TestSimHealth(t *testing.T) {
	s, c, err := NewSim(SimChipConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st, reason := s.Health(); st != HealthOK || reason != "" {
		t.Fatalf("health %s %q", st, reason)
	}
	c.SetPresent(false)
	for i, want := range []string{HealthDegraded, HealthDegraded, HealthDown, HealthDown} {
		if _, err := s.Read(); err == nil {
			t.Fatal("read from an absent chip")
		}
		st, reason := s.Health()
		if st != want {
			t.Fatalf("after %d failures: %s %q", i+1, st, reason)
		}
		if i == 2 && reason != "envsensor: BME280: 3 reads failed in a row: envsensor: sim: no device answers at 0x76" {
			t.Fatalf("reason %q", reason)
		}
	}
	c.SetPresent(true)
	if _, err := s.Read(); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.Health(); st != HealthOK {
		t.Fatalf("health after recovery %s", st)
	}
}

func TestSimNormalMode(t *testing.T) {
	c := NewSimChip(SimChipConfig{})
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

func TestReadingJSON(t *testing.T) {
	r := Reading{TempC: 21.5, Humidity: 40.25, PressurePa: 100000, At: t0}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"temp_c":21.5,"humidity":40.25,"pressure_pa":100000,"at":"2024-05-01T08:00:00Z"}`; got != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
	var back Reading
	if err := json.Unmarshal(b, &back); err != nil || back != r {
		t.Fatalf("round trip %+v %v", back, err)
	}
	r.Humidity = math.NaN()
	b, err = json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"temp_c":21.5,"pressure_pa":100000,"at":"2024-05-01T08:00:00Z"}`; got != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
	if err := json.Unmarshal(b, &back); err != nil || back.HasHumidity() {
		t.Fatalf("round trip without humidity %+v %v", back, err)
	}
}
