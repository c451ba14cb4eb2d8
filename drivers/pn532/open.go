package pn532

import (
	"errors"
	"fmt"
	"io"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpioreg"
	"periph.io/x/conn/v3/i2c/i2creg"
	"periph.io/x/conn/v3/spi/spireg"
)

// Conn names the chip's connection as the station's configuration does.
type Conn struct {
	Bus      string // "i2c", "spi" or "uart"
	Device   string // periph bus name (I²C, SPI; "" = the first) or serial device path (UART)
	Address  uint16 // I²C address; 0 = 0x24
	IRQPin   string // GPIO name of the IRQ line; "" = poll the status
	ResetPin string // GPIO name of the RSTPDN line; "" = no hard reset
}

// Open opens the bus named by c, looks up the pins and returns the chip and the bus. The caller
// runs periph's host.Init first, and closes the bus after Halt (the driver never closes it).
func Open(c Conn, opts Opts) (*Dev, io.Closer, error) {
	if c.IRQPin != "" {
		p := gpioreg.ByName(c.IRQPin)
		if p == nil {
			return nil, nil, fmt.Errorf("pn532: IRQ pin %s not found", c.IRQPin)
		}
		if err := p.In(gpio.PullUp, gpio.FallingEdge); err != nil {
			return nil, nil, fmt.Errorf("pn532: IRQ pin %s: %w", c.IRQPin, err)
		}
		opts.IRQ = p
	}
	if c.ResetPin != "" {
		p := gpioreg.ByName(c.ResetPin)
		if p == nil {
			return nil, nil, fmt.Errorf("pn532: reset pin %s not found", c.ResetPin)
		}
		opts.Reset = p
	}
	var (
		bus io.Closer
		dev *Dev
		err error
	)
	switch c.Bus {
	case "i2c", "":
		b, oerr := i2creg.Open(c.Device)
		if oerr != nil {
			return nil, nil, fmt.Errorf("pn532: I2C bus %q: %w", c.Device, oerr)
		}
		bus = b
		dev, err = NewI2C(b, c.Address, &opts)
	case "spi":
		p, oerr := spireg.Open(c.Device)
		if oerr != nil {
			return nil, nil, fmt.Errorf("pn532: SPI port %q: %w", c.Device, oerr)
		}
		bus = p
		dev, err = NewSPI(p, &opts)
	case "uart":
		if c.Device == "" {
			return nil, nil, errors.New("pn532: a serial device is required for uart, e.g. /dev/serial0")
		}
		f, oerr := OpenSerial(c.Device)
		if oerr != nil {
			return nil, nil, oerr
		}
		bus = f
		dev, err = NewUART(f, &opts)
	default:
		return nil, nil, fmt.Errorf("pn532: unknown bus %q: want i2c, spi or uart", c.Bus)
	}
	if err != nil {
		bus.Close()
		return nil, nil, err
	}
	return dev, bus, nil
}
