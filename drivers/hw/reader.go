package hw

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/spi"

	"station.dev/agent/drivers/cardreader"
	"station.dev/agent/drivers/pn532"
)

// CardReader is the card reader over the PN532: card presentations from
// cardreader, the chip's health from pn532.
type CardReader struct {
	dev  *pn532.Dev
	r    *cardreader.Reader
	chip *pn532Chip
}

// NewCardReader joins a PN532 that the caller opened to the card reader
// logic: opts go to cardreader.New, and beat (may be nil) is called on
// every poll of the chip, as progress for a watchdog. Station.OpenReader
// uses it for the station's reader and hwsim for the emulated one. Whoever
// calls NewCardReader halts the CardReader (Halt), which halts dev.
func NewCardReader(dev *pn532.Dev, beat func(), opts *cardreader.Opts) (*CardReader, error) {
	ctx, stop := context.WithCancel(context.Background())
	c := &pn532Chip{dev: dev, beat: beat, halted: ctx, stop: stop}
	r, err := cardreader.New(c, opts)
	if err != nil {
		stop()
		return nil, err
	}
	return &CardReader{dev: dev, r: r, chip: c}, nil
}

// Next waits for the next presentation and returns it. It returns ctx.Err()
// when ctx is done, and an error wrapping pn532.ErrHalted, at once, when the
// reader was halted (by a later Open, or by Close).
func (r *CardReader) Next(ctx context.Context) (cardreader.Presentation, error) {
	if r.chip.halted.Err() != nil {
		return cardreader.Presentation{}, fmt.Errorf("hw: card reader: %w", pn532.ErrHalted)
	}
	nctx, cancel := context.WithCancel(ctx)
	defer cancel()
	unhook := context.AfterFunc(r.chip.halted, cancel)
	defer unhook()
	p, err := r.r.Next(nctx)
	if err != nil && ctx.Err() == nil && r.chip.halted.Err() != nil {
		return cardreader.Presentation{}, fmt.Errorf("hw: card reader: %w", pn532.ErrHalted)
	}
	return p, err
}

// Health returns the chip's health.
func (r *CardReader) Health() pn532.Health {
	return r.dev.Health()
}

// String describes the reader, e.g. "PN532{I2C1 0x24}".
func (r *CardReader) String() string {
	return r.dev.String()
}

// Halt ends a Next in progress (and every later one) and halts the chip.
// Calling it again does nothing more.
func (r *CardReader) Halt() error {
	return r.chip.halt()
}

// pn532Chip adapts the PN532 driver to cardreader's Chip interface.
type pn532Chip struct {
	dev  *pn532.Dev
	tg   byte
	beat func() // each poll is progress of the reader loop, for the watchdog

	halted context.Context // done once halted
	stop   context.CancelFunc
	mu     sync.RWMutex // read-held through each call to the chip; Halt waits for them
	once   sync.Once
	err    error
}

// call runs one operation on the chip unless it was halted, with ctx ended
// by Halt as well.
func (c *pn532Chip) call(ctx context.Context, fn func(context.Context) error) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.halted.Err() != nil {
		return pn532.ErrHalted
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(c.halted, cancel)()
	return fn(ctx)
}

func (c *pn532Chip) Detect(ctx context.Context) (*cardreader.Target, error) {
	if c.beat != nil {
		c.beat()
	}
	var t *pn532.Target
	err := c.call(ctx, func(ctx context.Context) (err error) {
		t, err = c.dev.InListPassiveTarget(ctx)
		return err
	})
	if err != nil || t == nil {
		return nil, err
	}
	c.tg = t.Tg
	return &cardreader.Target{UID: t.UID, SensRes: t.SensRes, SelRes: t.SelRes, ATS: t.ATS}, nil
}

func (c *pn532Chip) Transmit(ctx context.Context, apdu []byte) ([]byte, error) {
	var r []byte
	err := c.call(ctx, func(ctx context.Context) (err error) {
		r, err = c.dev.InDataExchange(ctx, c.tg, apdu)
		return err
	})
	if errors.Is(err, pn532.ErrCardRemoved) {
		return nil, fmt.Errorf("%w: %w", cardreader.ErrRemoved, err)
	}
	return r, err
}

func (c *pn532Chip) Release(ctx context.Context) error {
	return c.call(ctx, func(ctx context.Context) error { return c.dev.InRelease(ctx, c.tg) })
}

// halt stops every operation, waits for the one in progress to end and
// halts the chip, once.
func (c *pn532Chip) halt() error {
	c.once.Do(func() {
		c.stop()
		c.mu.Lock()
		defer c.mu.Unlock()
		c.err = c.dev.Halt()
	})
	return c.err
}

// OpenReader opens the card reader: the PN532 on its bus (and IRQ and reset
// pins), behind cardreader with the configured key and intervals. beat (may
// be nil) is called on every poll: watchdog progress. An open reader is
// halted and released first, so a reader lost at run time can be opened
// again.
func (s *Station) OpenReader(beat func()) (*CardReader, error) {
	c := s.cfg.Reader
	const id = partReader
	var (
		i2cBus  i2c.Bus
		spiPort spi.Port
		serial  io.ReadWriter
		irq     gpio.PinIO
		rst     gpio.PinIO
		cr      *CardReader
	)
	acquire := func(h *holding) error {
		if c.Driver != "pn532" {
			return fmt.Errorf("hw: %s: unknown driver %q: want pn532 or none", nouns[id], c.Driver)
		}
		var err error
		switch c.Bus {
		case "i2c", "":
			i2cBus, err = s.i2cBus(id, c.Device, h)
		case "spi":
			spiPort, err = s.spiPort(id, c.Device, h)
		case "uart":
			serial, err = s.serialPort(id, c.Device, h)
		default:
			err = fmt.Errorf("hw: %s: unknown bus %q: want i2c, spi or uart", nouns[id], c.Bus)
		}
		if err != nil {
			return err
		}
		if c.IRQPin != "" && serial == nil {
			if irq, err = s.pin(id, "IRQ", c.IRQPin, h); err != nil {
				return err
			}
		}
		if c.ResetPin != "" {
			if rst, err = s.pin(id, "reset", c.ResetPin, h); err != nil {
				return err
			}
		}
		return nil
	}
	build := func() (func() error, error) {
		opts := pn532.DefaultOpts
		if irq != nil {
			opts.IRQ = irq
		}
		if rst != nil {
			opts.Reset = rst
		}
		opts.Logger = s.logger("pn532")
		var (
			dev *pn532.Dev
			err error
		)
		switch {
		case i2cBus != nil:
			dev, err = pn532.NewI2C(i2cBus, c.Address, &opts)
		case spiPort != nil:
			dev, err = pn532.NewSPI(spiPort, &opts)
		default:
			dev, err = pn532.NewUART(serial, &opts)
		}
		if err != nil {
			return nil, fmt.Errorf("hw: %s: %w", nouns[id], err)
		}
		cr, err = NewCardReader(dev, beat, &cardreader.Opts{
			Key: c.Key, MinInterval: c.MinInterval, PollInterval: c.PollInterval,
			Logger: s.logger("cardreader"),
		})
		if err != nil {
			_ = dev.Halt()
			return nil, fmt.Errorf("hw: %s: %w", nouns[id], err)
		}
		return cr.Halt, nil
	}
	if err := s.open(id, s.Fitted().Reader, acquire, build); err != nil {
		return nil, err
	}
	return cr, nil
}
