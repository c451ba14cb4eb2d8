package envsensor

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/i2c/i2ctest"

	"station.dev/agent/drivers/envsensor/envsensorsim"
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
	chip := envsensorsim.New(envsensorsim.Config{})
	// Nothing answers at 0x77.
	_, err := NewI2C(chip, 0x77, nil)
	if err == nil || err.Error() != "envsensor: no sensor at SimBME280 0x77: envsensorsim: no device answers at 0x77" {
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
