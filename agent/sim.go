package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"station.dev/agent/agent/config"
	"station.dev/agent/drivers/hw"
	"station.dev/agent/drivers/hw/hwsim"
	"station.dev/agent/drivers/vcard"
)

// simHardware is the emulated station: a software PN532 on an emulated I2C bus, driven by the
// same driver and reader code as the real one, holding virtual cards that `station tap` presents.
type simHardware struct {
	hw     *hwsim.Station
	reader *simReader

	tapMu  sync.Mutex // one presentation at a time, so each result belongs to its tap
	wmu    sync.Mutex
	waiter chan TapResult
	cards  map[string]int // next card number per profile, so each tap is a different card
}

// simReader is the card reader over the emulated chip, with the chip's health.
type simReader struct {
	*hw.CardReader
}

func (r *simReader) Health() ComponentHealth { return pn532Health(r.CardReader.Health()) }

// tapTimeout bounds one presentation, from placing the card to its record being durable.
const tapTimeout = 10 * time.Second

func newSimHardware(key []byte, cfg *config.Config, log *slog.Logger, beat func()) (*simHardware, error) {
	st := hwsim.New(hwsim.Config{
		Key: key, MinInterval: cfg.Card.MinInterval.D(), PollInterval: cfg.Reader.PollInterval.D(),
		DoorOpenLow: cfg.Door.OpenLow, Display: cfg.Display.Enabled, Logger: log,
	})
	r, err := st.OpenReader(beat)
	if err != nil {
		return nil, fmt.Errorf("agent: emulated reader: %w", err)
	}
	return &simHardware{hw: st, reader: &simReader{CardReader: r}, cards: map[string]int{}}, nil
}

func (s *simHardware) close() { _ = s.hw.Close() }

// profile resolves a tap request's card: a built-in name or a profile document.
func (s *simHardware) profile(name string, doc json.RawMessage) (*vcard.Profile, error) {
	switch {
	case len(doc) > 0 && name != "":
		return nil, errors.New("give a card name or a card file, not both")
	case len(doc) > 0:
		p, err := vcard.ParseProfile(doc)
		if err != nil {
			return nil, err
		}
		return p, nil
	case name == "":
		name = "unionpay-debit"
	}
	p, ok := vcard.Builtin(name)
	if !ok {
		return nil, fmt.Errorf("no built-in card %q (built-in: %v)", name, vcard.BuiltinNames())
	}
	return p, nil
}

// tap presents one card of the profile and waits for its record.
func (s *simHardware) tap(ctx context.Context, p *vcard.Profile, same bool) (TapResult, error) {
	s.tapMu.Lock()
	defer s.tapMu.Unlock()
	n := s.cards[p.Name]
	if !same || n == 0 {
		s.cards[p.Name] = n + 1
	} else {
		n-- // the card of the previous presentation
	}
	w := make(chan TapResult, 1)
	s.wmu.Lock()
	s.waiter = w
	s.wmu.Unlock()
	defer func() {
		s.wmu.Lock()
		s.waiter = nil
		s.wmu.Unlock()
	}()
	gone := s.hw.Present(p.Card(n))
	t := time.NewTimer(tapTimeout)
	defer t.Stop()
	var res TapResult
	select {
	case res = <-w:
	case <-ctx.Done():
		return TapResult{}, ctx.Err()
	case <-t.C:
		return TapResult{}, errors.New("the emulated reader did not read the card in time")
	}
	// Wait for the card to leave the field, so the next tap is a new presentation.
	select {
	case <-gone:
	case <-ctx.Done():
	case <-t.C:
	}
	return res, nil
}

// done hands a presentation's result to the tap waiting for it.
func (s *simHardware) done(r TapResult) {
	s.wmu.Lock()
	w := s.waiter
	s.waiter = nil
	s.wmu.Unlock()
	if w != nil {
		w <- r
	}
}
