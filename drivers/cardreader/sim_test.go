package cardreader_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/physic"

	"station.dev/agent/drivers/cardreader"
	"station.dev/agent/drivers/pn532"
	"station.dev/agent/drivers/pn532/pn532sim"
	"station.dev/agent/drivers/vcard"
)

// The reader loop over the PN532 driver over the emulated chip, as a station
// runs it: faults injected into the chip in the middle of a card's read must
// not cost the tap.

// pn532Chip adapts the driver to the reader, as the agent does.
type pn532Chip struct {
	dev *pn532.Dev
	tg  byte
}

func (c *pn532Chip) Detect(ctx context.Context) (*cardreader.Target, error) {
	t, err := c.dev.InListPassiveTarget(ctx)
	if err != nil || t == nil {
		return nil, err
	}
	c.tg = t.Tg
	return &cardreader.Target{UID: t.UID, SensRes: t.SensRes, SelRes: t.SelRes, ATS: t.ATS}, nil
}

func (c *pn532Chip) Transmit(ctx context.Context, apdu []byte) ([]byte, error) {
	r, err := c.dev.InDataExchange(ctx, c.tg, apdu)
	if errors.Is(err, pn532.ErrCardRemoved) {
		return nil, fmt.Errorf("%w: %w", cardreader.ErrRemoved, err)
	}
	return r, err
}

func (c *pn532Chip) Release(ctx context.Context) error { return c.dev.InRelease(ctx, c.tg) }

type simBus struct {
	name     string
	spi, irq bool
}

var simBuses = []simBus{{"I2C", false, false}, {"I2C+IRQ", false, true}, {"SPI", true, false}, {"SPI+IRQ", true, true}}

// simStation is an emulated chip with the driver and the reader on top.
type simStation struct {
	chip *pn532sim.Chip
	dev  *pn532.Dev
	r    *cardreader.Reader
}

func newSimStation(t *testing.T, b simBus) *simStation {
	t.Helper()
	chip := pn532sim.New(&pn532sim.Opts{RetryTime: 5 * time.Millisecond})
	opts := pn532.DefaultOpts
	opts.PollInterval = time.Millisecond
	if b.irq {
		opts.IRQ = chip.IRQ()
	}
	var dev *pn532.Dev
	var err error
	if b.spi {
		dev, err = pn532.NewSPI(chip.SPI(), &opts)
	} else {
		dev, err = pn532.NewI2C(chip.I2C(), pn532sim.Address, &opts)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dev.Halt() })
	r, err := cardreader.New(&pn532Chip{dev: dev}, &cardreader.Opts{Key: bytes.Repeat([]byte{0x5A}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	return &simStation{chip: chip, dev: dev, r: r}
}

// next returns the next presentation, within 10 s.
func (s *simStation) next(t *testing.T) cardreader.Presentation {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := s.r.Next(ctx)
	if err != nil {
		t.Fatalf("no presentation: %v (driver %+v, reader %+v)", err, s.dev.Health(), s.r.Health())
	}
	return p
}

// faultyCard injects faults into the chip when the card gets its n-th APDU
// (the first is 1), while it computes its answer.
type faultyCard struct {
	*vcard.Card
	chip   *pn532sim.Chip
	at     int
	faults []pn532sim.Fault
	mu     sync.Mutex
	n      int
}

func (c *faultyCard) Transmit(apdu []byte) ([]byte, error) {
	c.mu.Lock()
	c.n++
	if c.n == c.at {
		for _, f := range c.faults {
			c.chip.Inject(f)
		}
	}
	c.mu.Unlock()
	return c.Card.Transmit(apdu)
}

// TestSimFaultDuringRead presents cards whose read meets one transient fault
// of each kind, on each bus, at the second APDU (SELECT of the application):
// every tap is recorded, none as a failure.
func TestSimFaultDuringRead(t *testing.T) {
	prof, ok := vcard.Builtin("unionpay-debit")
	if !ok {
		t.Fatal("no built-in unionpay-debit")
	}
	faults := []pn532sim.Fault{
		{Kind: pn532sim.Garbage, Count: 1},
		{Kind: pn532sim.LostACK, Count: 1},
		{Kind: pn532sim.BadChecksum, Count: 1},
		{Kind: pn532sim.NACK, Count: 1},
		{Kind: pn532sim.NoResponse, Count: 1},
		{Kind: pn532sim.BusError, Count: 1},
		{Kind: pn532sim.Noise, Count: 3},
		{Kind: pn532sim.ExtraPreamble, Count: 3},
		{Kind: pn532sim.NotReady, Count: 3},
		{Kind: pn532sim.Doze},
		{Kind: pn532sim.BrokenRead, Count: 1},
	}
	for _, b := range simBuses {
		t.Run(b.name, func(t *testing.T) {
			s := newSimStation(t, b)
			for i, f := range faults {
				card := &faultyCard{Card: prof.Card(i), chip: s.chip, at: 2, faults: []pn532sim.Fault{f}}
				gone := s.chip.Present(card)
				p := s.next(t)
				if p.Card == nil || p.Card.Kind != "emv" || p.Error != "" {
					t.Errorf("%v during the read: %+v, want the card", f.Kind, p)
				}
				<-gone
			}
			if h := s.r.Health(); h.Failures != 0 || h.Presentations != uint64(len(faults)) {
				t.Errorf("reader health %+v", h)
			}
		})
	}
}

// TestSimReadAgain: a burst of faults defeats the driver in the middle of a
// read (the answer garbled every time it is asked for). The person still
// holds the card: it is read once more, and the tap is recorded.
func TestSimReadAgain(t *testing.T) {
	prof, ok := vcard.Builtin("unionpay-debit")
	if !ok {
		t.Fatal("no built-in unionpay-debit")
	}
	for _, b := range simBuses {
		t.Run(b.name, func(t *testing.T) {
			s := newSimStation(t, b)
			// The answer to the second APDU and every time it is asked
			// for again; the rest hits the release, which recovers.
			card := &faultyCard{Card: prof.Card(0), chip: s.chip, at: 2, faults: []pn532sim.Fault{{Kind: pn532sim.BadChecksum, Count: 8}}}
			s.chip.Hold(card)
			p := s.next(t)
			if p.Card == nil || p.Error != "" {
				t.Fatalf("presentation %+v, want the card", p)
			}
			h := s.r.Health()
			if h.Failures != 0 || h.ChipErrors != 1 {
				t.Errorf("reader health %+v, want one chip error and no failure", h)
			}
			if dh := s.dev.Health(); dh.Checksum < 4 {
				t.Errorf("driver health %+v", dh)
			}
		})
	}
}

// meteredBus counts what goes over an I²C bus: bus time at 100 kHz, and the
// NACK frames the host writes (each one means a frame is read again).
type meteredBus struct {
	i2c.Bus
	mu    sync.Mutex
	time  time.Duration
	nacks int
}

var nackFrame = []byte{0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00}

func (b *meteredBus) Tx(addr uint16, w, r []byte) error {
	b.mu.Lock()
	b.time += time.Duration(9*(1+len(w)+len(r))+2) * 10 * time.Microsecond
	if bytes.Equal(w, nackFrame) {
		b.nacks++
	}
	b.mu.Unlock()
	return b.Bus.Tx(addr, w, r)
}

func (b *meteredBus) SetSpeed(f physic.Frequency) error { return b.Bus.SetSpeed(f) }

func (b *meteredBus) read() (time.Duration, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.time, b.nacks
}

// TestSimNoFrameReadTwice reads cards of each built-in EMV profile over I²C
// with IRQ and checks that, once the reader has seen a card of the kind, no
// frame is read twice: no NACK goes to the chip. It logs the bus time of a
// tap (detection, EMV read, release) at 100 kHz.
func TestSimNoFrameReadTwice(t *testing.T) {
	for _, name := range []string{"unionpay-debit", "unionpay-credit", "random-uid"} {
		t.Run(name, func(t *testing.T) {
			prof, ok := vcard.Builtin(name)
			if !ok {
				t.Fatalf("no built-in %s", name)
			}
			chip := pn532sim.New(&pn532sim.Opts{RetryTime: 5 * time.Millisecond})
			bus := &meteredBus{Bus: chip.I2C()}
			opts := pn532.DefaultOpts
			opts.IRQ = chip.IRQ()
			dev, err := pn532.NewI2C(bus, pn532sim.Address, &opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = dev.Halt() })
			r, err := cardreader.New(&pn532Chip{dev: dev}, &cardreader.Opts{Key: bytes.Repeat([]byte{0x5A}, 32)})
			if err != nil {
				t.Fatal(err)
			}
			s := &simStation{chip: chip, dev: dev, r: r}
			for i := range 3 {
				t0, n0 := bus.read()
				gone := chip.Present(prof.Card(i))
				if p := s.next(t); p.Card == nil {
					t.Fatalf("tap %d: %+v", i, p)
				}
				<-gone
				t1, n1 := bus.read()
				t.Logf("tap %d: %.1f ms of bus, %d frames read twice", i+1, float64(t1-t0)/float64(time.Millisecond), n1-n0)
				if i > 0 && n1 != n0 {
					t.Errorf("tap %d: %d frames read twice", i+1, n1-n0)
				}
			}
		})
	}
}
