package agent

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"station.dev/agent/agent/contract"
	"station.dev/agent/drivers/cardreader"
	"station.dev/agent/drivers/emv"
	"station.dev/agent/drivers/pn532"
	"station.dev/agent/internal/clock/clocktest"
)

func TestReaderLoopRecordsPresentations(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	// An EMV card as the reader reports it: token and masked number only (synthetic card).
	h.reader.c <- cardreader.Presentation{Card: &emv.Identity{Kind: contract.CardEMV, Token: "9f2c",
		Masked: "622848******1234", Scheme: "unionpay", AID: "A000000333010101"}}
	h.reader.c <- cardreader.Presentation{Error: cardreader.CodeRemoved, Detail: "card left the field"}
	waitFor(t, func() bool { return len(recordsOfType(t, h.a, contract.TypeCardError)) == 1 })

	taps := recordsOfType(t, h.a, contract.TypeCardTap)
	want := contract.Card{Kind: contract.CardEMV, Token: "9f2c", Masked: "622848******1234", Scheme: "unionpay", AID: "A000000333010101"}
	if len(taps) != 1 || taps[0].Card == nil || *taps[0].Card != want || taps[0].Seq != 2 || taps[0].BootID != h.a.bootID {
		t.Fatalf("card.tap records %+v", taps)
	}
	e := recordsOfType(t, h.a, contract.TypeCardError)[0]
	if e.Error == nil || e.Error.Code != cardreader.CodeRemoved || e.Error.Detail != "card left the field" || e.Card != nil || e.Seq != 3 {
		t.Fatalf("card.error record %+v", e)
	}
}

func TestPresentationResults(t *testing.T) {
	h := startHarness(t, harnessOpts{noRun: true})
	if res := h.a.handlePresentation(card(1)); !res.OK || res.Type != contract.TypeCardTap || res.Seq != 1 || res.Error != "" {
		t.Fatalf("tap %+v", res)
	}
	res := h.a.handlePresentation(cardreader.Presentation{Error: cardreader.CodeUnsupported, Detail: "no known application"})
	if res.OK || res.Type != contract.TypeCardError || res.Seq != 2 || res.Error != "card not read: unsupported: no known application" {
		t.Fatalf("unreadable card %+v", res)
	}
	res = h.a.handlePresentation(cardreader.Presentation{Error: cardreader.CodeMalformed})
	if res.OK || res.Error != "card not read: malformed" {
		t.Fatalf("malformed card %+v", res)
	}
}

func TestReaderOpenedAfterFailure(t *testing.T) {
	clk := clocktest.New()
	var working atomic.Bool
	h := startHarness(t, harnessOpts{clock: clk, noRun: true, hardware: func(hw *Hardware, f *fakes) {
		hw.Reader = func(func()) (Reader, error) {
			if !working.Load() {
				return nil, errors.New("pn532: no answer on i2c-1 at 0x24")
			}
			return f.reader, nil
		}
	}})
	if rh := h.a.readerHealth(); rh.State != contract.HealthDown || rh.Detail != "starting" {
		t.Fatalf("reader before the loop %+v", rh)
	}
	runLoop(t, h.a.readerLoop)
	clk.WaitCreated(t, 1) // failed, waits to retry
	if rh := h.a.readerHealth(); rh.State != contract.HealthDown || !strings.Contains(rh.Detail, "no answer") {
		t.Fatalf("reader that failed to open %+v", rh)
	}
	if k := h.a.statusKey(); !strings.HasPrefix(k, "down/") {
		t.Fatalf("status key %q with the reader down", k)
	}
	for _, c := range h.a.selfTest().Checks {
		if c.Name == "reader" && (c.OK || !strings.Contains(c.Detail, "no answer")) {
			t.Fatalf("self-test reader %+v", c)
		}
	}
	clk.Do(t, func() { clk.Advance(readerBackoffMin) }) // fails again, waits longer
	working.Store(true)
	clk.Advance(readerBackoffMax)
	waitFor(t, func() bool { return h.a.readerHealth().State == contract.HealthOK })
	if rh := h.a.readerHealth(); rh.Firmware != "PN532 v1.6" {
		t.Fatalf("reader health %+v", rh)
	}
	h.reader.c <- card(1)
	waitFor(t, func() bool { return len(recordsOfType(t, h.a, contract.TypeCardTap)) == 1 })
}

func TestReaderDownIsReopened(t *testing.T) {
	clk := clocktest.New()
	var opens atomic.Int32
	h := startHarness(t, harnessOpts{clock: clk, noRun: true, hardware: func(hw *Hardware, f *fakes) {
		hw.Reader = func(func()) (Reader, error) {
			opens.Add(1)
			f.reader.setHealth(pn532.Health{State: contract.HealthOK, Firmware: "PN532 v1.6"}) // reset by the open
			return f.reader, nil
		}
	}})
	runLoop(t, h.a.readerLoop)
	waitFor(t, func() bool { return h.a.readerHealth().State == contract.HealthOK })

	// An error while the reader says it still works: no reopening, the next card is read.
	h.reader.setHealth(pn532.Health{State: contract.HealthDegraded, Firmware: "PN532 v1.6", Errors: 1, LastError: "checksum"})
	h.reader.errs <- errors.New("pn532: bad checksum")
	clk.WaitCreated(t, 1)
	clk.Advance(readerBackoffMax)
	h.reader.c <- card(1)
	waitFor(t, func() bool { return len(recordsOfType(t, h.a, contract.TypeCardTap)) == 1 })
	if n := opens.Load(); n != 1 {
		t.Fatalf("a degraded reader was opened again (%d opens)", n)
	}
	if rh := h.a.readerHealth(); rh.State != contract.HealthDegraded || rh.LastError != "checksum" || rh.Counters["errors"] != 1 {
		t.Fatalf("degraded reader health %+v", rh)
	}

	// An error after which the reader reports itself down: it is opened again.
	h.reader.setHealth(pn532.Health{State: contract.HealthDown, LastError: "timeout"})
	h.reader.errs <- errors.New("pn532: no answer")
	clk.WaitCreated(t, 2)
	if rh := h.a.readerHealth(); rh.State != contract.HealthDown || rh.Detail != "pn532: no answer" {
		t.Fatalf("reader after a fatal error %+v", rh)
	}
	clk.Advance(readerBackoffMax)
	waitFor(t, func() bool { return opens.Load() == 2 && h.a.readerHealth().State == contract.HealthOK })
	h.reader.c <- card(2)
	waitFor(t, func() bool { return len(recordsOfType(t, h.a, contract.TypeCardTap)) == 2 })
}

func TestNoReaderFitted(t *testing.T) {
	h := startHarness(t, harnessOpts{hardware: func(hw *Hardware, _ *fakes) { hw.Reader = nil }})
	if rh := h.a.readerHealth(); rh.State != contract.HealthAbsent {
		t.Fatalf("reader %+v", rh)
	}
	for _, c := range h.a.selfTest().Checks {
		if c.Name == "reader" && (!c.OK || c.Detail != "not configured") {
			t.Fatalf("self-test reader %+v", c)
		}
	}
}
