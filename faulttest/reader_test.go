//go:build faults

package faulttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"station.dev/agent/drivers/cardreader"
	"station.dev/agent/drivers/pn532"
	"station.dev/agent/drivers/pn532/pn532sim"
	"station.dev/agent/drivers/vcard"
)

// The station binary has no way to make its emulated chip misbehave, so the reader is tested
// here as the agent assembles it: the PN532 driver over the emulated chip's I²C bus and IRQ line,
// under the card reader loop.

// readerChip adapts the PN532 driver to the card reader, as the agent does.
type readerChip struct {
	dev *pn532.Dev
	tg  byte
}

func (c *readerChip) Detect(ctx context.Context) (*cardreader.Target, error) {
	t, err := c.dev.InListPassiveTarget(ctx)
	if err != nil || t == nil {
		return nil, err
	}
	c.tg = t.Tg
	return &cardreader.Target{UID: t.UID, SensRes: t.SensRes, SelRes: t.SelRes, ATS: t.ATS}, nil
}

func (c *readerChip) Transmit(ctx context.Context, apdu []byte) ([]byte, error) {
	r, err := c.dev.InDataExchange(ctx, c.tg, apdu)
	if errors.Is(err, pn532.ErrCardRemoved) {
		return nil, fmt.Errorf("%w: %w", cardreader.ErrRemoved, err)
	}
	return r, err
}

func (c *readerChip) Release(ctx context.Context) error { return c.dev.InRelease(ctx, c.tg) }

// simReader is an emulated chip with the driver and the reader loop on top.
type simReader struct {
	t     *testing.T
	chip  *pn532sim.Chip
	dev   *pn532.Dev
	r     *cardreader.Reader
	prof  *vcard.Profile
	cards int
}

func newSimReader(t *testing.T, resetWired bool) *simReader {
	t.Helper()
	chip := pn532sim.New(nil)
	opts := pn532.DefaultOpts
	opts.IRQ = chip.IRQ()
	opts.Timeout = 200 * time.Millisecond
	if resetWired {
		opts.Reset = chip.ResetPin()
	}
	dev, err := pn532.NewI2C(chip.I2C(), pn532sim.Address, &opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dev.Halt() })
	r, err := cardreader.New(&readerChip{dev: dev}, &cardreader.Opts{
		Key: bytes.Repeat([]byte{0x5a}, 32), MaxBackoff: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	prof, ok := vcard.Builtin("unionpay-debit")
	if !ok {
		t.Fatal("no built-in unionpay-debit card")
	}
	return &simReader{t: t, chip: chip, dev: dev, r: r, prof: prof}
}

// nextCard returns a new card of the profile.
func (s *simReader) nextCard() *vcard.Card {
	s.cards++
	return s.prof.Card(s.cards)
}

// read presents card and returns the presentation the reader makes of it, once the card has
// left the field.
func (s *simReader) read(card pn532sim.Card) cardreader.Presentation {
	s.t.Helper()
	gone := s.chip.Present(card)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := s.r.Next(ctx)
	if err != nil {
		s.t.Fatalf("no presentation within 30s: %v (driver %+v, reader %+v)", err, s.dev.Health(), s.r.Health())
	}
	select {
	case <-gone:
	case <-ctx.Done():
		s.t.Fatal("the card did not leave the field after its presentation")
	}
	return p
}

// mustRead presents a new card and fails unless it is read.
func (s *simReader) mustRead(what string) {
	s.t.Helper()
	if p := s.read(s.nextCard()); p.Card == nil || p.Card.Kind != "emv" || p.Card.Token == "" {
		s.t.Fatalf("%s: card not read: %+v", what, p)
	}
}

// faultyCard injects a fault into the chip on its first APDU, while the reader is reading it.
type faultyCard struct {
	*vcard.Card
	chip  *pn532sim.Chip
	fault pn532sim.Fault
	once  sync.Once
}

func (c *faultyCard) Transmit(apdu []byte) ([]byte, error) {
	c.once.Do(func() { c.chip.Inject(c.fault) })
	return c.Card.Transmit(apdu)
}

// TestReaderFaults makes the emulated PN532 send garbage, NACKs, bad checksums, lose commands,
// fail bus transactions and hang, and checks that the reader recovers by itself, that a card
// being read when the chip fails is answered (error "reader") rather than forgotten, and that
// the driver's health tells the truth: ok, degraded while errors are recent, down while the chip
// does not answer, degraded once it answers again, ok a minute after the last error.
func TestReaderFaults(t *testing.T) {
	t.Parallel() // it waits a minute for the health to turn ok: let other tests run meanwhile
	s := newSimReader(t, true)
	states := []string{s.dev.Health().State}
	note := func(st string) {
		if states[len(states)-1] != st {
			states = append(states, st)
		}
	}
	s.mustRead("a working chip")
	if h := s.dev.Health(); h.State != "ok" || h.Errors != 0 {
		t.Fatalf("health of a working chip: %+v", h)
	}

	// Faults the driver rides out within a command, or with one retry of the reader loop.
	for _, f := range []pn532sim.Fault{
		{Kind: pn532sim.Garbage, Count: 2},
		{Kind: pn532sim.NACK, Count: 2},
		{Kind: pn532sim.BadChecksum, Count: 2},
		{Kind: pn532sim.NoResponse, Count: 1},
		{Kind: pn532sim.BusError, Count: 2},
	} {
		before := s.dev.Health().Errors
		s.chip.Inject(f)
		s.mustRead(fmt.Sprintf("after %v ×%d", f.Kind, f.Count))
		h := s.dev.Health()
		if h.Errors == before || h.State != "degraded" || h.LastError == "" {
			t.Errorf("after %v ×%d: health %+v, want the errors counted and degraded", f.Kind, f.Count, h)
		}
		if rh := s.r.Health(); rh.ConsecutiveChipErrors != 0 {
			t.Errorf("after %v ×%d and a good read: reader health %+v, want no consecutive chip errors", f.Kind, f.Count, rh)
		}
		note(h.State)
	}

	// The chip fails in the middle of a card's read: the kiosk still gets an answer for it.
	bad := &faultyCard{Card: s.nextCard(), chip: s.chip, fault: pn532sim.Fault{Kind: pn532sim.Garbage, Count: 8}}
	if p := s.read(bad); p.Card != nil || p.Error != cardreader.CodeReader {
		t.Errorf("a read the chip broke: %+v, want the reader error", p)
	}
	s.mustRead("the card after a broken read")

	// The chip hangs; with its reset line wired the driver resets it after a few failures.
	resets := s.dev.Health().Resets
	s.chip.Inject(pn532sim.Fault{Kind: pn532sim.Hang})
	s.mustRead("after the chip hung (reset wired)")
	if h := s.dev.Health(); h.Resets == resets || h.State != "degraded" || s.chip.Stats().Resets == 0 {
		t.Errorf("after a hang with the reset line wired: health %+v, chip resets %d", h, s.chip.Stats().Resets)
	}
	note(s.dev.Health().State)

	// Without a reset line the chip stays hung: the driver says down, the reader keeps trying
	// and makes no presentation, until the reader is power-cycled.
	s2 := newSimReader(t, false)
	s2.mustRead("a second working chip")
	s2.chip.Inject(pn532sim.Fault{Kind: pn532sim.Hang})
	card := s2.nextCard()
	gone := s2.chip.Present(card)
	got := make(chan cardreader.Presentation, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go func() {
		p, err := s2.r.Next(ctx)
		if err != nil {
			p.Error = "no presentation: " + err.Error()
		}
		got <- p
	}()
	if !eventually(20*time.Second, 20*time.Millisecond, func() bool { return s2.dev.Health().State == "down" }) {
		t.Fatalf("a hung chip without reset line: health %+v, want down", s2.dev.Health())
	}
	states = append(states, "down")
	if !eventually(10*time.Second, 20*time.Millisecond, func() bool { return s2.r.Health().ConsecutiveChipErrors >= 3 }) {
		t.Errorf("reader health while the chip is down: %+v, want consecutive chip errors", s2.r.Health())
	}
	select {
	case p := <-got:
		t.Fatalf("a presentation while the chip hangs: %+v", p)
	default:
	}
	_ = s2.chip.ResetPin().Out(false) // power cycle
	_ = s2.chip.ResetPin().Out(true)
	select {
	case p := <-got:
		if p.Card == nil {
			t.Fatalf("the card waiting at the reader after the power cycle: %+v", p)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no presentation within 30s of the power cycle: driver %+v, reader %+v", s2.dev.Health(), s2.r.Health())
	}
	<-gone
	h2 := s2.dev.Health()
	if h2.State != "degraded" || s2.r.Health().ConsecutiveChipErrors != 0 {
		t.Errorf("after the power cycle: driver %+v, reader %+v; want degraded and no consecutive errors", h2, s2.r.Health())
	}
	note(h2.State)

	// A minute without errors: ok again. The driver's clock cannot be injected from outside its
	// package, so this waits for real.
	start := time.Now()
	if !eventually(75*time.Second, time.Second, func() bool {
		return s.dev.Health().State == "ok" && s2.dev.Health().State == "ok"
	}) {
		t.Fatalf("not ok a minute after the last error: %+v, %+v", s.dev.Health(), s2.dev.Health())
	}
	note("ok")
	s.mustRead("a chip back to ok")
	t.Logf("health went %v; ok again %s after the checks ended; driver counters %+v", states, time.Since(start).Round(time.Second), s.dev.Health())
	if want := []string{"ok", "degraded", "down", "degraded", "ok"}; fmt.Sprint(states) != fmt.Sprint(want) {
		t.Errorf("health went %v, want %v", states, want)
	}
}
