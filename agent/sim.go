package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"station.dev/agent/agent/contract"
	"station.dev/agent/drivers/vcard"
)

// simTaps presents virtual cards to the emulated reader for `station tap` and hands each
// presentation's result back to the tap that caused it.
type simTaps struct {
	sim Simulator

	tapMu  sync.Mutex // one presentation at a time, so each result belongs to its tap
	wmu    sync.Mutex
	waiter chan contract.TapResult
	cards  map[string]int // next card number per profile, so each tap is a different card
}

func newSimTaps(s Simulator) *simTaps { return &simTaps{sim: s, cards: map[string]int{}} }

// tapTimeout bounds one presentation, from placing the card to its record being durable.
const tapTimeout = 10 * time.Second

// Tap presents the requested cards one by one (the local API's POST tap).
func (a *Agent) Tap(ctx context.Context, req contract.TapRequest, emit func(contract.TapResult) error) error {
	if a.sim == nil {
		return conflict("tap needs an agent started with --sim")
	}
	prof, err := tapProfile(req.Card, req.Profile)
	if err != nil {
		return badRequest("%v", err)
	}
	for i := 0; i < req.Count; i++ {
		res, err := a.sim.tap(ctx, prof, req.Same)
		if err != nil {
			res = contract.TapResult{Error: err.Error()}
		}
		if err := emit(res); err != nil {
			return err
		}
	}
	return nil
}

// tapProfile resolves a tap request's card: a built-in name or a profile document.
func tapProfile(name string, doc json.RawMessage) (*vcard.Profile, error) {
	switch {
	case len(doc) > 0 && name != "":
		return nil, errors.New("give a card name or a card file, not both")
	case len(doc) > 0:
		return vcard.ParseProfile(doc)
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
func (s *simTaps) tap(ctx context.Context, p *vcard.Profile, same bool) (contract.TapResult, error) {
	s.tapMu.Lock()
	defer s.tapMu.Unlock()
	n := s.cards[p.Name]
	if !same || n == 0 {
		s.cards[p.Name] = n + 1
	} else {
		n-- // the card of the previous presentation
	}
	w := make(chan contract.TapResult, 1)
	s.wmu.Lock()
	s.waiter = w
	s.wmu.Unlock()
	defer func() {
		s.wmu.Lock()
		s.waiter = nil
		s.wmu.Unlock()
	}()
	gone := s.sim.Present(p.Card(n))
	// The emulated reader runs in real time: these timeouts bound a wait on it, not the agent.
	t := time.NewTimer(tapTimeout)
	defer t.Stop()
	var res contract.TapResult
	select {
	case res = <-w:
	case <-ctx.Done():
		return contract.TapResult{}, ctx.Err()
	case <-t.C:
		return contract.TapResult{}, errors.New("the emulated reader did not read the card in time")
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
func (s *simTaps) done(r contract.TapResult) {
	s.wmu.Lock()
	w := s.waiter
	s.waiter = nil
	s.wmu.Unlock()
	if w != nil {
		w <- r
	}
}
