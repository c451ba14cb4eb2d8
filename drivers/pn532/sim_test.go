package pn532

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"

	"station.dev/agent/drivers/pn532/pn532sim"
)

// The driver against the emulated chip: the same code that runs on a station.

// testCard is a virtual ISO 14443-4 card. To READ BINARY (00 B0 P1 P2) it
// answers P1P2 bytes and 90 00, and anything else with its C-APDU reversed
// and 90 00. UIDs are synthetic.
type testCard struct {
	uid []byte
	// transmit, when set, replaces the behaviour above.
	transmit func(apdu []byte) ([]byte, error)
}

func newTestCard(n int) *testCard {
	uid := []byte{0x04, 0x5A, 0, 0, 0, 0, 0x80}
	binary.BigEndian.PutUint32(uid[2:6], uint32(n))
	return &testCard{uid: uid}
}

func (c *testCard) UID() []byte      { return c.uid }
func (c *testCard) SensRes() [2]byte { return [2]byte{0x00, 0x44} }
func (c *testCard) SelRes() byte     { return 0x20 }
func (c *testCard) ATS() []byte      { return []byte{0x78, 0x80, 0x70, 0x02} }

func (c *testCard) Transmit(apdu []byte) ([]byte, error) {
	if c.transmit != nil {
		return c.transmit(apdu)
	}
	if len(apdu) == 4 && apdu[0] == 0x00 && apdu[1] == 0xB0 {
		return append(pattern(int(apdu[2])<<8|int(apdu[3])), 0x90, 0x00), nil
	}
	r := make([]byte, 0, len(apdu)+2)
	for i := len(apdu) - 1; i >= 0; i-- {
		r = append(r, apdu[i])
	}
	return append(r, 0x90, 0x00), nil
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31 + i>>8)
	}
	return b
}

func readBinary(n int) []byte { return []byte{0x00, 0xB0, byte(n >> 8), byte(n)} }

type simConfig struct {
	name string
	spi  bool
	irq  bool
}

var simConfigs = []simConfig{
	{"I2C/IRQ", false, true},
	{"I2C/poll", false, false},
	{"SPI/IRQ", true, true},
	{"SPI/poll", true, false},
}

// newSim returns a chip and a driver for it; the driver's PollInterval is
// short so that polling configurations run fast.
func newSim(t testing.TB, cfg simConfig, simOpts *pn532sim.Opts, tweak func(*Opts)) (*pn532sim.Chip, *Dev) {
	t.Helper()
	chip := pn532sim.New(simOpts)
	opts := DefaultOpts
	opts.PollInterval = time.Millisecond
	if cfg.irq {
		opts.IRQ = chip.IRQ()
	}
	if tweak != nil {
		tweak(&opts)
	}
	var d *Dev
	var err error
	if cfg.spi {
		d, err = NewSPI(chip.SPI(), &opts)
	} else {
		d, err = NewI2C(chip.I2C(), 0x24, &opts)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Halt(); err != nil {
			t.Errorf("Halt: %v", err)
		}
	})
	return chip, d
}

// waitClosed waits for a presentation to end.
func waitClosed(t testing.TB, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: the card never left the field", what)
	}
}

func TestSimPresentation(t *testing.T) {
	for _, cfg := range simConfigs {
		t.Run(cfg.name, func(t *testing.T) {
			chip, d := newSim(t, cfg, nil, nil)
			ctx := context.Background()
			if fw := d.Firmware(); fw != (Firmware{0x32, 1, 6, 7}) {
				t.Errorf("firmware %+v", fw)
			}
			// No card: the chip answers after its retries.
			if tg, err := d.InListPassiveTarget(ctx); tg != nil || err != nil {
				t.Fatalf("empty field: %v, %v", tg, err)
			}
			card := newTestCard(1)
			gone := chip.Present(card)
			tg, err := d.InListPassiveTarget(ctx)
			if err != nil || tg == nil {
				t.Fatalf("InListPassiveTarget = %v, %v", tg, err)
			}
			if !bytes.Equal(tg.UID, card.uid) || !tg.ISO14443_4() || !bytes.Equal(tg.ATS, card.ATS()) || tg.SensRes != [2]byte{0x00, 0x44} {
				t.Errorf("target %v", tg)
			}
			// Short, extended-frame (> 254 bytes) and chained (> 262
			// bytes per frame) answers, and a chained command.
			for _, n := range []int{0, 10, 250, 253, 260, 300, 700, 4000} {
				got, err := d.InDataExchange(ctx, tg.Tg, readBinary(n))
				if err != nil {
					t.Fatalf("READ BINARY %d: %v", n, err)
				}
				if want := append(pattern(n), 0x90, 0x00); !bytes.Equal(got, want) {
					t.Fatalf("READ BINARY %d: got %d bytes, want %d", n, len(got), len(want))
				}
			}
			long := pattern(600)
			got, err := d.InDataExchange(ctx, tg.Tg, long)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 602 || got[0] != long[599] || got[599] != long[0] {
				t.Errorf("chained command: answer of %d bytes", len(got))
			}
			select {
			case <-gone:
				t.Fatal("presentation over before the release")
			default:
			}
			if err := d.InRelease(ctx, tg.Tg); err != nil {
				t.Fatal(err)
			}
			waitClosed(t, gone, "after InRelease")
			if h := d.Health(); h.State != "ok" || h.Errors != 0 {
				t.Errorf("Health() = %+v", h)
			}
		})
	}
}

func TestSimPollAgainEndsPresentation(t *testing.T) {
	chip, d := newSim(t, simConfigs[0], nil, nil)
	ctx := context.Background()
	a, b := newTestCard(1), newTestCard(2)
	goneA, goneB := chip.Present(a), chip.Present(b)
	// Each card leaves the field empty for one poll before the next enters, as a person takes a
	// card away before the next tap.
	for i, want := range []*testCard{a, nil, b, nil} {
		tg, err := d.InListPassiveTarget(ctx)
		if err != nil || (want == nil) != (tg == nil) || want != nil && !bytes.Equal(tg.UID, want.uid) {
			t.Fatalf("poll %d: %v, %v", i, tg, err)
		}
		if i == 1 {
			waitClosed(t, goneA, "first card, after the next poll")
		}
	}
	waitClosed(t, goneB, "second card, after the next poll")
}

func TestSimHeldCard(t *testing.T) {
	chip, d := newSim(t, simConfigs[0], nil, nil)
	ctx := context.Background()
	card := newTestCard(7)
	chip.Hold(card)
	queued := chip.Present(newTestCard(8))
	for i := range 3 {
		tg, err := d.InListPassiveTarget(ctx)
		if err != nil || tg == nil || !bytes.Equal(tg.UID, card.uid) {
			t.Fatalf("poll %d: %v, %v", i, tg, err)
		}
		if err := d.InRelease(ctx, tg.Tg); err != nil {
			t.Fatal(err)
		}
	}
	chip.Remove()
	tg, err := d.InListPassiveTarget(ctx)
	if err != nil || tg == nil || tg.UID[5] != 8 {
		t.Fatalf("after Remove: %v, %v", tg, err)
	}
	if err := d.InRelease(ctx, tg.Tg); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, queued, "queued card")
}

func TestSimCardRemovedMidExchange(t *testing.T) {
	for _, cfg := range simConfigs[:2] {
		t.Run(cfg.name, func(t *testing.T) {
			chip, d := newSim(t, cfg, nil, nil)
			ctx := context.Background()
			entered, release := make(chan struct{}), make(chan struct{})
			card := newTestCard(3)
			card.transmit = func(apdu []byte) ([]byte, error) {
				close(entered)
				<-release
				return []byte{0x90, 0x00}, nil
			}
			gone := chip.Present(card)
			tg, err := d.InListPassiveTarget(ctx)
			if err != nil || tg == nil {
				t.Fatalf("InListPassiveTarget = %v, %v", tg, err)
			}
			go func() {
				<-entered
				chip.Remove() // the card leaves while it computes its answer
				close(release)
			}()
			_, err = d.InDataExchange(ctx, tg.Tg, selectPPSE)
			var se *StatusError
			if !errors.As(err, &se) || se.Code != 0x01 || !errors.Is(err, ErrCardRemoved) {
				t.Fatalf("InDataExchange = %v, want status 0x01", err)
			}
			waitClosed(t, gone, "removed card")
			// The card stays gone; the reader releases it and polls on.
			if _, err := d.InDataExchange(ctx, tg.Tg, selectPPSE); !errors.Is(err, ErrCardRemoved) {
				t.Errorf("second exchange: %v", err)
			}
			if err := d.InRelease(ctx, tg.Tg); err != nil {
				t.Error(err)
			}
			if tg, err := d.InListPassiveTarget(ctx); tg != nil || err != nil {
				t.Errorf("poll after removal: %v, %v", tg, err)
			}
			if h := d.Health(); h.State != "ok" || h.Errors != 0 {
				t.Errorf("a card pulled away counted against the chip: %+v", h)
			}
		})
	}
}

func TestSimCardFailsMidExchange(t *testing.T) {
	chip, d := newSim(t, simConfigs[0], nil, nil)
	ctx := context.Background()
	card := newTestCard(4)
	card.transmit = func([]byte) ([]byte, error) { return nil, errors.New("card left") }
	gone := chip.Present(card)
	tg, err := d.InListPassiveTarget(ctx)
	if err != nil || tg == nil {
		t.Fatalf("InListPassiveTarget = %v, %v", tg, err)
	}
	if _, err := d.InDataExchange(ctx, tg.Tg, selectPPSE); !errors.Is(err, ErrCardRemoved) {
		t.Fatalf("InDataExchange = %v", err)
	}
	waitClosed(t, gone, "failed card")
}

func TestSimFaults(t *testing.T) {
	for _, cfg := range simConfigs {
		t.Run(cfg.name, func(t *testing.T) {
			chip, d := newSim(t, cfg, nil, func(o *Opts) { o.Timeout = 50 * time.Millisecond })
			ctx := context.Background()
			card := newTestCard(5)
			chip.Hold(card)
			tg, err := d.InListPassiveTarget(ctx)
			if err != nil || tg == nil {
				t.Fatalf("InListPassiveTarget = %v, %v", tg, err)
			}
			// Recovered within the command, transparently.
			for _, f := range []pn532sim.Fault{
				{Kind: pn532sim.Garbage, Count: 1},     // the ACK
				{Kind: pn532sim.Garbage, Count: 2},     // ACK and answer
				{Kind: pn532sim.BadChecksum, Count: 2}, // answer, twice
				{Kind: pn532sim.NACK, Count: 2},
			} {
				before := d.Health().Errors
				chip.Inject(f)
				got, err := d.InDataExchange(ctx, tg.Tg, readBinary(300))
				if err != nil || len(got) != 302 {
					t.Fatalf("%v ×%d: %d bytes, %v", f.Kind, f.Count, len(got), err)
				}
				if d.Health().Errors == before {
					t.Errorf("%v ×%d not counted", f.Kind, f.Count)
				}
			}
			// A lost command is sent again.
			chip.Inject(pn532sim.Fault{Kind: pn532sim.NoResponse, Count: 1})
			if _, err := d.GetFirmwareVersion(ctx); err != nil {
				t.Fatalf("lost command: %v", err)
			}
			// Lost every time: it times out; the next one works.
			chip.Inject(pn532sim.Fault{Kind: pn532sim.NoResponse, Count: maxResend})
			if _, err := d.GetFirmwareVersion(ctx); !errors.Is(err, ErrTimeout) {
				t.Fatalf("lost commands: %v", err)
			}
			if _, err := d.GetFirmwareVersion(ctx); err != nil {
				t.Fatal(err)
			}
			// Too many bad frames: the command fails, the chip stays usable.
			chip.Inject(pn532sim.Fault{Kind: pn532sim.BadChecksum, Count: maxResend + 1})
			if _, err := d.GetFirmwareVersion(ctx); !errors.Is(err, ErrChecksum) {
				t.Fatalf("persistent bad checksums: %v", err)
			}
			if err := d.Recover(ctx); err != nil {
				t.Fatal(err)
			}
			h := d.Health()
			if h.State != "degraded" || h.Timeouts != 1+maxResend || h.Checksum < 4 || h.Resets != 1 {
				t.Errorf("Health() = %+v", h)
			}
			// The card is still there, detected again after the re-initialisation.
			tg, err = d.InListPassiveTarget(ctx)
			if err != nil || tg == nil {
				t.Fatalf("after Recover: %v, %v", tg, err)
			}
		})
	}
}

// transientFaults are the single faults a command rides out.
var transientFaults = []pn532sim.Fault{
	{Kind: pn532sim.Garbage, Count: 1}, // the ACK, garbled
	{Kind: pn532sim.LostACK, Count: 1},
	{Kind: pn532sim.BadChecksum, Count: 1},
	{Kind: pn532sim.NACK, Count: 1},
	{Kind: pn532sim.NoResponse, Count: 1}, // a lost command
	{Kind: pn532sim.BusError, Count: 1},
	{Kind: pn532sim.Noise, Count: 2}, // the ACK and the answer
	{Kind: pn532sim.ExtraPreamble, Count: 2},
	{Kind: pn532sim.NotReady, Count: 2},
	{Kind: pn532sim.Doze},
	{Kind: pn532sim.BrokenRead, Count: 1},
}

// TestSimTransientFaults injects each transient fault into the emulated chip,
// before a command and while the card computes its answer, on every bus: the
// exchange succeeds, and the fault is counted.
func TestSimTransientFaults(t *testing.T) {
	for _, cfg := range simConfigs {
		t.Run(cfg.name, func(t *testing.T) {
			chip, d := newSim(t, cfg, nil, nil)
			ctx := context.Background()
			var during *pn532sim.Fault
			card := newTestCard(6)
			card.transmit = func(apdu []byte) ([]byte, error) {
				if during != nil {
					chip.Inject(*during)
					during = nil
				}
				return append(pattern(300), 0x90, 0x00), nil
			}
			chip.Hold(card)
			tg, err := d.InListPassiveTarget(ctx)
			if err != nil || tg == nil {
				t.Fatalf("InListPassiveTarget = %v, %v", tg, err)
			}
			for _, f := range transientFaults {
				for _, when := range []string{"before", "during"} {
					before := d.Health().Errors
					if when == "before" {
						chip.Inject(f)
					} else {
						during = &f
					}
					got, err := d.InDataExchange(ctx, tg.Tg, readBinary(300))
					if err != nil || len(got) != 302 {
						t.Fatalf("%v ×%d %s the command: %d bytes, %v", f.Kind, f.Count, when, len(got), err)
					}
					// Not counted: reads that find the chip not ready, an
					// extra preamble byte, and on SPI a doze that only cost
					// a status poll or read (it reads as not ready).
					quiet := f.Kind == pn532sim.NotReady || f.Kind == pn532sim.ExtraPreamble ||
						f.Kind == pn532sim.Doze && cfg.spi && when == "during"
					if d.Health().Errors == before && !quiet {
						t.Errorf("%v ×%d %s the command: not counted", f.Kind, f.Count, when)
					}
				}
			}
			if h := d.Health(); h.Resets != 0 || h.State != "degraded" {
				t.Errorf("Health() = %+v, want degraded without a reset", h)
			}
		})
	}
}

func TestSimAutoRecoveryWithReset(t *testing.T) {
	for _, cfg := range simConfigs[1:2] {
		chip, d := newSim(t, cfg, nil, nil)
		d.opts.Reset = chip.ResetPin()
		ctx := context.Background()
		chip.Inject(pn532sim.Fault{Kind: pn532sim.Hang})
		for i := range recoverAfter {
			if _, err := d.GetFirmwareVersion(ctx); err == nil {
				t.Fatalf("command %d worked on a hung chip", i)
			}
		}
		h := d.Health()
		if h.Resets != 1 || h.State != "degraded" || chip.Stats().Resets != 1 {
			t.Errorf("after %d failures: Health() = %+v, chip resets %d", recoverAfter, h, chip.Stats().Resets)
		}
		if _, err := d.GetFirmwareVersion(ctx); err != nil {
			t.Fatalf("after the reset: %v", err)
		}
	}
}

func TestSimDownAndBack(t *testing.T) {
	// Real time, shifted at will.
	var mu sync.Mutex
	var offset time.Duration
	old := timeNow
	timeNow = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return old().Add(offset)
	}
	t.Cleanup(func() { timeNow = old })
	skip := func(d time.Duration) {
		mu.Lock()
		offset += d
		mu.Unlock()
	}

	chip, d := newSim(t, simConfigs[0], nil, func(o *Opts) { o.Timeout = 20 * time.Millisecond })
	ctx := context.Background()
	chip.Inject(pn532sim.Fault{Kind: pn532sim.Hang}) // and no reset line
	for range recoverAfter {
		if _, err := d.InListPassiveTarget(ctx); err == nil {
			t.Fatal("poll worked on a hung chip")
		}
	}
	if h := d.Health(); h.State != "down" || h.LastError == "" || h.Resets != 1 {
		t.Fatalf("Health() = %+v, want down after one recovery", h)
	}
	// Until the next attempt is due, commands fail at once, quietly.
	tx := chip.Stats().BusTx
	if _, err := d.InListPassiveTarget(ctx); !errors.Is(err, ErrDown) {
		t.Fatalf("poll while down: %v, want ErrDown", err)
	}
	if chip.Stats().BusTx != tx {
		t.Error("a command while down touched the bus before the next attempt was due")
	}
	// Then each command tries again, and fails while the chip hangs.
	skip(downRetry)
	if _, err := d.InListPassiveTarget(ctx); err == nil || errors.Is(err, ErrDown) {
		t.Fatalf("poll after a second: %v, want a recovery failure", err)
	}
	// The reader is power-cycled.
	_ = chip.ResetPin().Out(gpio.Low)
	_ = chip.ResetPin().Out(gpio.High)
	skip(downRetry)
	if tg, err := d.InListPassiveTarget(ctx); tg != nil || err != nil {
		t.Fatalf("after the power cycle: %v, %v", tg, err)
	}
	if h := d.Health(); h.State != "degraded" || h.Resets != 3 {
		t.Errorf("Health() = %+v, want degraded after 3 recoveries", h)
	}
	skip(recentWindow) // a minute without errors
	if h := d.Health(); h.State != "ok" {
		t.Errorf("a minute later: Health() = %+v", h)
	}
}

func TestSimBusErrors(t *testing.T) {
	for _, cfg := range simConfigs {
		t.Run(cfg.name, func(t *testing.T) {
			chip, d := newSim(t, cfg, nil, nil)
			ctx := context.Background()
			// One failed transaction is tried again.
			chip.Inject(pn532sim.Fault{Kind: pn532sim.BusError, Count: 1})
			if _, err := d.GetFirmwareVersion(ctx); err != nil {
				t.Fatalf("one bus error: %v", err)
			}
			if h := d.Health(); h.Errors != 1 || h.State != "degraded" {
				t.Errorf("Health() = %+v", h)
			}
			// A bus that keeps failing fails the command.
			chip.Inject(pn532sim.Fault{Kind: pn532sim.BusError, Count: busTries})
			if _, err := d.GetFirmwareVersion(ctx); err == nil {
				t.Fatal("bus errors not reported")
			}
			if _, err := d.GetFirmwareVersion(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestSimPickUpWaitingPoll(t *testing.T) {
	for _, cfg := range []simConfig{simConfigs[0], simConfigs[2]} {
		t.Run(cfg.name, func(t *testing.T) {
			// A long emulated retry time: only an event-driven chip and
			// driver answer the waiting poll quickly.
			chip, d := newSim(t, cfg, &pn532sim.Opts{RetryTime: time.Hour}, nil)
			type result struct {
				tg  *Target
				err error
				at  time.Time
			}
			res := make(chan result, 1)
			go func() {
				tg, err := d.InListPassiveTarget(context.Background())
				res <- result{tg, err, time.Now()}
			}()
			// Wait for the poll to reach the chip.
			deadline := time.Now().Add(5 * time.Second)
			for chip.Stats().Polls < 1 {
				if time.Now().After(deadline) {
					t.Fatal("the poll never reached the chip")
				}
				time.Sleep(100 * time.Microsecond)
			}
			presented := time.Now()
			chip.Present(newTestCard(9))
			r := <-res
			if r.err != nil || r.tg == nil {
				t.Fatalf("InListPassiveTarget = %v, %v", r.tg, r.err)
			}
			t.Logf("picked up %v after the card came", r.at.Sub(presented))
			if lat := r.at.Sub(presented); lat > time.Second {
				t.Errorf("picked up after %v", lat)
			}
		})
	}
}

func TestSimHaltInterruptsPoll(t *testing.T) {
	chip, d := newSim(t, simConfigs[0], nil, nil)
	ctx := context.Background()
	if err := d.SetMaxRetries(ctx, 0xFF, 0x01, 0xFF); err != nil { // wait for a card forever
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() {
		_, err := d.InListPassiveTarget(ctx)
		res <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for chip.Stats().Polls < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the poll never reached the chip")
		}
		time.Sleep(100 * time.Microsecond)
	}
	if err := d.Halt(); err != nil {
		t.Fatal(err)
	}
	if err := <-res; !errors.Is(err, ErrHalted) {
		t.Fatalf("InListPassiveTarget = %v, want ErrHalted", err)
	}
	// Usable again, with the retries kept.
	chip.Present(newTestCard(10))
	if tg, err := d.InListPassiveTarget(ctx); tg == nil || err != nil {
		t.Fatalf("after Halt: %v, %v", tg, err)
	}
	if h := d.Health(); h.Errors != 0 {
		t.Errorf("Halt counted as an error: %+v", h)
	}
}

func TestSimContextCancel(t *testing.T) {
	chip, d := newSim(t, simConfigs[1], nil, nil)
	if err := d.SetMaxRetries(context.Background(), 0xFF, 0x01, 0xFF); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := d.InListPassiveTarget(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("InListPassiveTarget = %v, want the context's error", err)
	}
	if chip.Stats().Aborts < 2 { // the wake-up at init, then the abort
		t.Errorf("the waiting poll was not aborted: %+v", chip.Stats())
	}
	chip.Present(newTestCard(11))
	if tg, err := d.InListPassiveTarget(context.Background()); tg == nil || err != nil {
		t.Fatalf("after cancel: %v, %v", tg, err)
	}
}

func TestSimPowerDown(t *testing.T) {
	for _, cfg := range simConfigs {
		t.Run(cfg.name, func(t *testing.T) {
			chip, d := newSim(t, cfg, nil, nil)
			ctx := context.Background()
			if err := d.PowerDown(ctx); err != nil {
				t.Fatal(err)
			}
			chip.Present(newTestCard(12))
			tg, err := d.InListPassiveTarget(ctx)
			if err != nil || tg == nil {
				t.Fatalf("after PowerDown: %v, %v", tg, err)
			}
			if s := chip.Stats(); s.Wakeups != 1 {
				t.Errorf("%d wake-ups, want 1", s.Wakeups)
			}
			if h := d.Health(); h.Errors != 0 || h.State != "ok" {
				t.Errorf("Health() = %+v", h)
			}
		})
	}
}

func TestSimConcurrentPresentations(t *testing.T) {
	const n = 500
	chip, d := newSim(t, simConfigs[0], &pn532sim.Opts{RetryTime: time.Millisecond}, nil)
	ctx := context.Background()
	var wg sync.WaitGroup
	gone := make([]<-chan struct{}, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			gone[i] = chip.Present(newTestCard(i))
		}()
	}
	seen := map[string]int{}
	for len(seen) < n {
		tg, err := d.InListPassiveTarget(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if tg == nil {
			continue
		}
		seen[string(tg.UID)]++
		if _, err := d.InDataExchange(ctx, tg.Tg, selectPPSE); err != nil {
			t.Fatal(err)
		}
		if err := d.InRelease(ctx, tg.Tg); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	for uid, k := range seen {
		if k != 1 {
			t.Errorf("card % X detected %d times", uid, k)
		}
	}
	for i, ch := range gone {
		waitClosed(t, ch, fmt.Sprintf("card %d", i))
	}
	if s := chip.Stats(); s.Presentations != n || chip.Queued() != 0 {
		t.Errorf("%d presentations over, %d queued", s.Presentations, chip.Queued())
	}
}

func TestSimIdlePollTraffic(t *testing.T) {
	// With IRQ, an empty poll costs a fixed handful of transactions,
	// however long the chip takes; without, one status poll per
	// PollInterval on top.
	for _, cfg := range simConfigs[:2] {
		t.Run(cfg.name, func(t *testing.T) {
			chip, d := newSim(t, cfg, &pn532sim.Opts{RetryTime: 10 * time.Millisecond}, func(o *Opts) { o.PollInterval = 5 * time.Millisecond })
			const polls = 5
			before := chip.Stats().BusTx
			for range polls {
				if tg, err := d.InListPassiveTarget(context.Background()); tg != nil || err != nil {
					t.Fatal(tg, err)
				}
			}
			per := float64(chip.Stats().BusTx-before) / polls
			t.Logf("%.1f bus transactions per empty poll (30 ms)", per)
			limit := 3.0 // write, read ACK, read answer
			if !cfg.irq {
				limit = 3 + 2 + 30/5 + 2 // plus status polls, with slack for a slow machine
			}
			if per > limit {
				t.Errorf("%.1f transactions per empty poll, want ≤ %.0f", per, limit)
			}
		})
	}
}

// BenchmarkPresentation is one complete presentation through the I²C
// emulation: detect, six APDU round trips, release.
func BenchmarkPresentation(b *testing.B) {
	for _, cfg := range simConfigs[:2] {
		b.Run(cfg.name, func(b *testing.B) {
			chip, d := newSim(b, cfg, nil, nil)
			ctx := context.Background()
			cards := make([]*testCard, 64)
			for i := range cards {
				cards[i] = newTestCard(i)
			}
			apdus := [][]byte{selectPPSE, readBinary(40), readBinary(20), readBinary(10), readBinary(120), readBinary(60)}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				gone := chip.Present(cards[i%len(cards)])
				tg, err := d.InListPassiveTarget(ctx)
				if err != nil || tg == nil {
					b.Fatal(tg, err)
				}
				for _, a := range apdus {
					if _, err := d.InDataExchange(ctx, tg.Tg, a); err != nil {
						b.Fatal(err)
					}
				}
				if err := d.InRelease(ctx, tg.Tg); err != nil {
					b.Fatal(err)
				}
				<-gone
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "presentations/s")
		})
	}
}
