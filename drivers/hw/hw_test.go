package hw_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpioreg"
	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/i2c/i2creg"
	"periph.io/x/conn/v3/physic"

	"station.dev/agent/drivers/display/displaysim"
	"station.dev/agent/drivers/door/doorsim"
	"station.dev/agent/drivers/envsensor"
	"station.dev/agent/drivers/envsensor/envsensorsim"
	"station.dev/agent/drivers/hw"
	"station.dev/agent/drivers/indicator"
	"station.dev/agent/drivers/indicator/indicatorsim"
	"station.dev/agent/drivers/pn532"
	"station.dev/agent/drivers/pn532/pn532sim"
	"station.dev/agent/drivers/vcard"
)

// testKey is a card token key for tests only.
var testKey = []byte("hw test card key, not a real one")

func TestFitted(t *testing.T) {
	for _, tc := range []struct {
		cfg  hw.Config
		want hw.Fitted
	}{
		{hw.Config{}, hw.Fitted{}},
		{hw.Config{Reader: hw.Reader{Driver: "none"}}, hw.Fitted{}},
		{hw.Config{Reader: hw.Reader{Driver: "pn532"}}, hw.Fitted{Reader: true}},
		{hw.Config{Indicator: hw.Indicator{ActiveLow: true, BuzzerOnOff: true}}, hw.Fitted{}},
		{hw.Config{Indicator: hw.Indicator{Buzzer: "GPIO18"}}, hw.Fitted{Indicator: true}},
		{hw.Config{Door: hw.Door{OpenLow: true}}, hw.Fitted{}},
		{hw.Config{Door: hw.Door{Pin: "GPIO27"}}, hw.Fitted{Door: true}},
		{hw.Config{Environment: hw.Environment{Bus: "1"}, Display: hw.Display{Bus: "1"}}, hw.Fitted{}},
		{hw.Config{
			Reader:      hw.Reader{Driver: "pn532", Bus: "uart", Device: "/dev/serial0"},
			Indicator:   hw.Indicator{Red: "GPIO17", Green: "GPIO22"},
			Door:        hw.Door{Pin: "GPIO27"},
			Environment: hw.Environment{Enabled: true},
			Display:     hw.Display{Enabled: true},
		}, hw.Fitted{Reader: true, Indicator: true, Door: true, Environment: true, Display: true}},
	} {
		if got := hw.New(tc.cfg).Fitted(); got != tc.want {
			t.Errorf("Fitted(%+v) = %+v, want %+v", tc.cfg, got, tc.want)
		}
	}
}

func TestNotFitted(t *testing.T) {
	s := hw.New(hw.Config{Reader: hw.Reader{Driver: "none"}})
	defer s.Close()
	for _, tc := range []struct {
		open func() error
		want string
	}{
		{func() error { _, err := s.OpenReader(nil); return err }, `hw: card reader not fitted: reader driver is "none"`},
		{func() error { _, err := s.OpenIndicator(); return err }, "hw: indicator not fitted: no LED or buzzer pin named"},
		{func() error { _, err := s.OpenDoor(); return err }, "hw: door switch not fitted: no pin named"},
		{func() error { _, err := s.OpenEnvironment(); return err }, "hw: environment sensor not fitted: not enabled"},
		{func() error { _, err := s.OpenDisplay(); return err }, "hw: display not fitted: not enabled"},
	} {
		err := tc.open()
		if !errors.Is(err, hw.ErrNotFitted) || err.Error() != tc.want {
			t.Errorf("got %v, want %q", err, tc.want)
		}
	}
}

// TestMissingBusesAndPins opens parts whose bus, port or pin this computer
// does not have: each error names it.
func TestMissingBusesAndPins(t *testing.T) {
	s := hw.New(hw.Config{
		Reader:      hw.Reader{Driver: "pn532", Device: "HWTEST_NO_BUS", Key: testKey},
		Indicator:   hw.Indicator{Red: "HWTEST_NO_RED"},
		Door:        hw.Door{Pin: "HWTEST_NO_PIN"},
		Environment: hw.Environment{Enabled: true, Bus: "HWTEST_NO_BUS"},
		Display:     hw.Display{Enabled: true, Bus: "7"},
	})
	defer s.Close()
	check := func(err error, want ...string) {
		t.Helper()
		if err == nil {
			t.Fatalf("opened; want an error with %q", want)
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not say %q", err, w)
			}
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("error on more than one line: %q", err)
		}
	}
	_, err := s.OpenReader(nil)
	check(err, "hw: card reader: ", `I²C bus "HWTEST_NO_BUS" not found`)
	_, err = s.OpenEnvironment()
	check(err, "hw: environment sensor: ", `I²C bus "HWTEST_NO_BUS" not found`)
	_, err = s.OpenDisplay()
	check(err, "hw: display: ", `I²C bus "7" not found`)
	_, err = s.OpenIndicator()
	check(err, "hw: indicator: red pin HWTEST_NO_RED not found")
	_, err = s.OpenDoor()
	check(err, "hw: door switch: switch pin HWTEST_NO_PIN not found")

	if len(i2creg.All()) == 0 {
		// As on this test's usual machine: no I²C bus at all. The first
		// bus is wanted, and the error says how to enable one.
		s := hw.New(hw.Config{Environment: hw.Environment{Enabled: true}})
		_, err := s.OpenEnvironment()
		check(err, "hw: environment sensor: I²C bus (the first one) not found: no I²C bus is enabled on this computer (raspi-config")
	}

	for _, tc := range []struct {
		r    hw.Reader
		want string
	}{
		{hw.Reader{Driver: "pn533"}, `hw: card reader: unknown driver "pn533": want pn532 or none`},
		{hw.Reader{Driver: "pn532", Bus: "usb"}, `hw: card reader: unknown bus "usb": want i2c, spi or uart`},
		{hw.Reader{Driver: "pn532", Bus: "spi", Device: "HWTEST_NO_PORT"}, `hw: card reader: SPI port "HWTEST_NO_PORT" not found`},
		{hw.Reader{Driver: "pn532", Bus: "uart"}, "hw: card reader: a serial device is required for uart, e.g. /dev/serial0"},
		{hw.Reader{Driver: "pn532", Bus: "uart", Device: "/nonexistent/ttyHWTEST"}, "hw: card reader: open /nonexistent/ttyHWTEST: no such file or directory"},
	} {
		_, err := hw.New(hw.Config{Reader: tc.r}).OpenReader(nil)
		check(err, tc.want)
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	s := hw.New(hw.Config{Door: hw.Door{Pin: "HWTEST_NO_PIN"}})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenDoor(); !errors.Is(err, hw.ErrClosed) || err.Error() != "hw: open door switch: station hardware closed" {
		t.Fatalf("OpenDoor after Close: %v", err)
	}
}

// rig is a station's worth of emulated chips in periph's registries: the
// PN532, the BME280 and the SSD1306 on one I²C bus, the PN532's IRQ line, the
// door switch and the indicator's pins.
type rig struct {
	chip   *pn532sim.Chip
	env    *envsensorsim.Chip
	panel  *displaysim.Panel
	irq    *inPin
	sw     *doorsim.Switch
	pins   *indicatorsim.Pins
	opens  atomic.Int32 // of the bus
	closes atomic.Int32
}

const busName = "HWTEST_I2C"

func newRig(t *testing.T) *rig {
	t.Helper()
	x := &rig{
		chip:  pn532sim.New(nil),
		env:   envsensorsim.New(envsensorsim.Config{}),
		panel: displaysim.New(),
		sw:    doorsim.New(doorsim.Config{}),
		pins: &indicatorsim.Pins{
			Red:    indicatorsim.NewPin("HWTEST_RED"),
			Green:  indicatorsim.NewPin("HWTEST_GREEN"),
			Buzzer: indicatorsim.NewPin("HWTEST_BUZZER"),
		},
	}
	x.irq = &inPin{PinIn: x.chip.IRQ(), name: "HWTEST_IRQ"}
	x.sw.N = "HWTEST_DOOR"
	err := i2creg.Register(busName, []string{"/dev/hwtest-i2c"}, 901, func() (i2c.BusCloser, error) {
		x.opens.Add(1)
		return &mux{x: x, devs: map[uint16]i2c.Bus{0x24: x.chip.I2C(), 0x76: x.env, 0x3C: x.panel}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = i2creg.Unregister(busName) })
	for _, p := range []gpio.PinIO{x.irq, x.sw, outPin{x.pins.Red}, outPin{x.pins.Green}, outPin{x.pins.Buzzer}} {
		if err := gpioreg.Register(p); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = gpioreg.Unregister(p.Name()) })
	}
	return x
}

// config fits every part on the rig, naming the one bus three ways.
func (x *rig) config() hw.Config {
	return hw.Config{
		Reader:      hw.Reader{Driver: "pn532", Device: busName, IRQPin: "HWTEST_IRQ", Key: testKey},
		Indicator:   hw.Indicator{Red: "HWTEST_RED", Green: "HWTEST_GREEN", Buzzer: "HWTEST_BUZZER"},
		Door:        hw.Door{Pin: "HWTEST_DOOR"},
		Environment: hw.Environment{Enabled: true, Bus: "/dev/hwtest-i2c"},
		Display:     hw.Display{Enabled: true, Bus: "901"},
	}
}

// mux is the rig's I²C bus: each transaction goes to the chip at its
// address.
type mux struct {
	x    *rig
	devs map[uint16]i2c.Bus
}

func (m *mux) String() string                  { return busName }
func (m *mux) SetSpeed(physic.Frequency) error { return nil }
func (m *mux) Close() error                    { m.x.closes.Add(1); return nil }

func (m *mux) Tx(addr uint16, w, r []byte) error {
	d := m.devs[addr]
	if d == nil {
		return fmt.Errorf("no device answers at 0x%02x", addr)
	}
	return d.Tx(addr, w, r)
}

// inPin makes an input line a gpio.PinIO with its own name, and counts its
// halts.
type inPin struct {
	gpio.PinIn
	name  string
	halts atomic.Int32
}

func (p *inPin) Name() string                          { return p.name }
func (p *inPin) String() string                        { return p.name }
func (p *inPin) Halt() error                           { p.halts.Add(1); return p.PinIn.Halt() }
func (p *inPin) Out(gpio.Level) error                  { return errors.New("input only") }
func (p *inPin) PWM(gpio.Duty, physic.Frequency) error { return errors.New("input only") }

// outPin makes an emulated output pin a gpio.PinIO.
type outPin struct{ *indicatorsim.Pin }

func (outPin) In(gpio.Pull, gpio.Edge) error  { return errors.New("output only") }
func (p outPin) Read() gpio.Level             { return p.Level() }
func (outPin) WaitForEdge(time.Duration) bool { return false }
func (outPin) Pull() gpio.Pull                { return gpio.PullNoChange }
func (outPin) DefaultPull() gpio.Pull         { return gpio.PullNoChange }

// noLeak fails the test if goroutines started after before outlive it.
// Goroutines end asynchronously: poll, with a deadline.
func noLeak(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after Close:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestStation opens every part on the rig: the shared bus is opened once,
// a card is read, a part opened again keeps the bus, and Close halts every
// part and then closes the bus and the pins, once.
func TestStation(t *testing.T) {
	x := newRig(t)
	before := runtime.NumGoroutine()
	s := hw.New(x.config())
	if f := s.Fitted(); f != (hw.Fitted{Reader: true, Indicator: true, Door: true, Environment: true, Display: true}) {
		t.Fatalf("Fitted() = %+v", f)
	}
	var beats atomic.Int32
	r, err := s.OpenReader(func() { beats.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	if got := r.String(); !strings.Contains(got, busName) {
		t.Fatalf("reader %s", got)
	}
	sen, err := s.OpenEnvironment()
	if err != nil {
		t.Fatal(err)
	}
	disp, err := s.OpenDisplay()
	if err != nil {
		t.Fatal(err)
	}
	ind, err := s.OpenIndicator()
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.OpenDoor()
	if err != nil {
		t.Fatal(err)
	}
	if n := x.opens.Load(); n != 1 {
		t.Fatalf("the shared bus was opened %d times", n)
	}
	if got, want := ind.String(), "indicator{red=HWTEST_RED green=HWTEST_GREEN buzzer=HWTEST_BUZZER}"; got != want {
		t.Fatalf("indicator %s, want %s", got, want)
	}
	if got := d.String(); got != "door{HWTEST_DOOR edges}" {
		t.Fatalf("door %s", got)
	}

	// A card through the real pn532 and cardreader code.
	prof, _ := vcard.Builtin("unionpay-debit")
	gone := x.chip.Present(prof.Card(0))
	p, err := r.Next(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if p.Error != "" || p.Card == nil || p.Card.Kind != "emv" || p.Card.Masked != "622848******1234" || p.Card.Token == "" {
		t.Fatalf("presentation %+v", p)
	}
	<-gone
	if beats.Load() == 0 {
		t.Fatal("no beat while polling")
	}
	if h := r.Health(); h.State != "ok" {
		t.Fatalf("reader health %+v", h)
	}

	// Opening the sensor again halts the first one and keeps the bus.
	sen2, err := s.OpenEnvironment()
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := sen.Health(); st != envsensor.HealthDown {
		t.Fatalf("the first sensor is %s after the second Open", st)
	}
	if _, err := sen2.Read(); err != nil {
		t.Fatal(err)
	}
	if x.opens.Load() != 1 || x.closes.Load() != 0 {
		t.Fatalf("bus opened %d, closed %d times", x.opens.Load(), x.closes.Load())
	}

	// Close: every part halted, then the bus closed once and the pins halted.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := x.closes.Load(); n != 1 {
		t.Fatalf("bus closed %d times", n)
	}
	if x.irq.halts.Load() == 0 {
		t.Fatal("IRQ pin not halted")
	}
	if x.panel.On() {
		t.Fatal("panel on after Close")
	}
	if st, _ := disp.Health(); st != "down" {
		t.Fatalf("display %s after Close", st)
	}
	if st, _ := sen2.Health(); st != envsensor.HealthDown {
		t.Fatalf("sensor %s after Close", st)
	}
	if st, _ := ind.Health(); st != indicator.HealthDown {
		t.Fatalf("indicator %s after Close", st)
	}
	if _, ok := <-d.Events(); ok {
		t.Fatal("door events still open after Close")
	}
	if _, err := r.Next(ctxT(t)); !errors.Is(err, pn532.ErrHalted) {
		t.Fatalf("Next after Close: %v", err)
	}
	noLeak(t, before)
}

// TestReopenReader opens the reader again while a Next waits on the first
// one: that Next ends, and the new reader reads cards.
func TestReopenReader(t *testing.T) {
	x := newRig(t)
	s := hw.New(x.config())
	defer s.Close()
	r1, err := s.OpenReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := r1.Next(ctxT(t))
		done <- err
	}()
	r2, err := s.OpenReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, pn532.ErrHalted) || !strings.HasPrefix(err.Error(), "hw: card reader: ") {
		t.Fatalf("Next on the first reader: %v", err)
	}
	prof, _ := vcard.Builtin("ntag")
	x.chip.Present(prof.Card(0))
	p, err := r2.Next(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if p.Card == nil || p.Card.Kind != "uid" {
		t.Fatalf("presentation %+v", p)
	}
	// The reader was the bus's only user: its handle was closed with the
	// first reader and a new one opened for the second.
	if x.opens.Load() != 2 || x.closes.Load() != 1 {
		t.Fatalf("bus opened %d, closed %d times", x.opens.Load(), x.closes.Load())
	}
}

// TestOnePinOneRole refuses a pin named for two roles, also through an
// alias, and releases what the failed Open took.
func TestOnePinOneRole(t *testing.T) {
	x := newRig(t)
	if err := gpioreg.RegisterAlias("HWTEST_ALIAS", "HWTEST_DOOR"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = gpioreg.Unregister("HWTEST_ALIAS") })
	cfg := x.config()
	cfg.Reader.ResetPin = "HWTEST_ALIAS"
	s := hw.New(cfg)
	defer s.Close()
	if _, err := s.OpenDoor(); err != nil {
		t.Fatal(err)
	}
	_, err := s.OpenReader(nil)
	if err == nil || err.Error() != "hw: card reader: reset pin HWTEST_ALIAS is already the door switch's switch pin: give each role its own pin" {
		t.Fatalf("OpenReader = %v", err)
	}
	// The failed Open gave its bus and IRQ pin back.
	if x.opens.Load() != 1 || x.closes.Load() != 1 || x.irq.halts.Load() != 1 {
		t.Fatalf("bus opened %d, closed %d; IRQ halted %d", x.opens.Load(), x.closes.Load(), x.irq.halts.Load())
	}
}
