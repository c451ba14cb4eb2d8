package hw

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpioreg"
	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/i2c/i2creg"
	"periph.io/x/conn/v3/spi"
	"periph.io/x/conn/v3/spi/spireg"
)

// openBus is one open bus or serial port, shared by the parts on it.
type openBus struct {
	key   string    // kind and registered name, e.g. "i2c I2C1"
	what  string    // for errors, e.g. "I²C bus I2C1"
	c     io.Closer // the handle: i2c.BusCloser, spi.PortCloser or *os.File
	users int       // parts holding it
}

// openPin is one GPIO pin a part holds.
type openPin struct {
	name string // the pin's real name
	pin  gpio.PinIO
	part partID
	role string // e.g. "IRQ", "red"
}

// busRef is a registry entry of a bus, as i2creg and spireg list them.
type busRef struct {
	name    string
	aliases []string
	number  int
}

// resolve finds the registered bus a configured name means, as i2creg.Open
// and spireg.Open do: "" is the bus with the lowest number (or the first
// name when none has a number), else the name, an alias or a number.
func resolve(name string, refs []busRef) (string, bool) {
	if name == "" {
		best := -1
		for i, r := range refs {
			switch {
			case best < 0:
				best = i
			case r.number >= 0 && (refs[best].number < 0 || r.number < refs[best].number):
				best = i
			case r.number < 0 && refs[best].number < 0 && r.name < refs[best].name:
				best = i
			}
		}
		if best < 0 {
			return "", false
		}
		return refs[best].name, true
	}
	for _, r := range refs {
		if r.name == name || slices.Contains(r.aliases, name) {
			return r.name, true
		}
	}
	if n, err := strconv.Atoi(name); err == nil {
		for _, r := range refs {
			if r.number == n && n >= 0 {
				return r.name, true
			}
		}
	}
	return "", false
}

// notFound explains a bus name that matches no registered bus.
func notFound(id partID, kind, name string, refs []busRef, enable string) error {
	want := strconv.Quote(name)
	if name == "" {
		want = "(the first one)"
	}
	if len(refs) == 0 {
		return fmt.Errorf("hw: %s: %s %s not found: no %s is enabled on this computer (%s)", nouns[id], kind, want, kind, enable)
	}
	names := make([]string, len(refs))
	for i, r := range refs {
		names[i] = r.name
	}
	return fmt.Errorf("hw: %s: %s %s not found: check the name (this computer has %s)", nouns[id], kind, want, strings.Join(names, ", "))
}

// share takes one more user of the bus under key, if it is open.
func (s *Station) share(key string, h *holding) io.Closer {
	b := s.buses[key]
	if b == nil {
		return nil
	}
	b.users++
	h.buses = append(h.buses, b)
	return b.c
}

// keep records a newly opened bus as held by h.
func (s *Station) keep(key, what string, c io.Closer, h *holding) {
	b := &openBus{key: key, what: what, c: c, users: 1}
	s.buses[key] = b
	h.buses = append(h.buses, b)
}

// i2cBus returns the I²C bus called name for part id, opening it unless a
// part already did. Called with s.mu held.
func (s *Station) i2cBus(id partID, name string, h *holding) (i2c.Bus, error) {
	var refs []busRef
	for _, r := range i2creg.All() {
		refs = append(refs, busRef{r.Name, r.Aliases, r.Number})
	}
	reg, ok := resolve(name, refs)
	if !ok {
		return nil, notFound(id, "I²C bus", name, refs, "raspi-config, or dtparam=i2c_arm=on in config.txt")
	}
	key := "i2c " + reg
	if c := s.share(key, h); c != nil {
		return c.(i2c.Bus), nil
	}
	b, err := i2creg.Open(reg)
	if err != nil {
		return nil, fmt.Errorf("hw: %s: opening I²C bus %s: %w", nouns[id], reg, err)
	}
	s.keep(key, "I²C bus "+reg, b, h)
	return b, nil
}

// spiPort returns the SPI port called name for part id, opening it unless
// a part already did. Called with s.mu held.
func (s *Station) spiPort(id partID, name string, h *holding) (spi.Port, error) {
	var refs []busRef
	for _, r := range spireg.All() {
		refs = append(refs, busRef{r.Name, r.Aliases, r.Number})
	}
	reg, ok := resolve(name, refs)
	if !ok {
		return nil, notFound(id, "SPI port", name, refs, "raspi-config, or dtparam=spi=on in config.txt")
	}
	key := "spi " + reg
	if c := s.share(key, h); c != nil {
		return c.(spi.Port), nil
	}
	p, err := spireg.Open(reg)
	if err != nil {
		return nil, fmt.Errorf("hw: %s: opening SPI port %s: %w", nouns[id], reg, err)
	}
	s.keep(key, "SPI port "+reg, p, h)
	return p, nil
}

// serialPort opens the serial device at path for part id. Called with s.mu
// held.
func (s *Station) serialPort(id partID, path string, h *holding) (io.ReadWriter, error) {
	if path == "" {
		return nil, fmt.Errorf("hw: %s: a serial device is required for uart, e.g. /dev/serial0", nouns[id])
	}
	key := "uart " + path
	if c := s.share(key, h); c != nil {
		return c.(io.ReadWriter), nil
	}
	f, err := openSerial(path)
	if err != nil {
		return nil, fmt.Errorf("hw: %s: %w", nouns[id], err)
	}
	s.keep(key, "serial port "+path, f, h)
	return f, nil
}

// pin looks up the GPIO called name for one role of part id. A pin serves
// one role only. Called with s.mu held.
func (s *Station) pin(id partID, role, name string, h *holding) (gpio.PinIO, error) {
	p := gpioreg.ByName(name)
	if p == nil {
		why := "check the name (e.g. GPIO17)"
		if len(gpioreg.All()) == 0 {
			why = "this computer has no GPIO pins periph can drive"
		}
		return nil, fmt.Errorf("hw: %s: %s pin %s not found: %s", nouns[id], role, name, why)
	}
	real := p.Name()
	if r, ok := p.(gpio.RealPin); ok {
		real = r.Real().Name()
	}
	if o := s.pins[real]; o != nil {
		return nil, fmt.Errorf("hw: %s: %s pin %s is already the %s's %s pin: give each role its own pin", nouns[id], role, name, nouns[o.part], o.role)
	}
	o := &openPin{name: real, pin: p, part: id, role: role}
	s.pins[real] = o
	h.pins = append(h.pins, o)
	return p, nil
}
