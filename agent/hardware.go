package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"station.dev/agent/agent/contract"
	"station.dev/agent/drivers"
	"station.dev/agent/drivers/cardreader"
	"station.dev/agent/drivers/pn532"
)

// setupHardware builds the card reader (and, in simulation, the emulated chip) from config.
// A configured part that is missing does not stop the agent: it is reported down and retried.
func (a *Agent) setupHardware() error {
	a.readerBeat = func() {}
	if a.reader != nil {
		return nil
	}
	cfg := a.cfg
	if cfg.Reader.Driver != "none" {
		beat := a.heartbeat("reader")
		a.readerBeat = beat
	}
	switch cfg.Reader.Driver {
	case "none":
		return nil
	case "sim":
		key, err := a.cardKey()
		if err != nil {
			return err
		}
		a.sim, err = newSimHardware(key, cfg.Card.MinInterval.D(), a.log, a.readerBeat)
		if err != nil {
			return err
		}
		a.reader = a.sim.reader
		return nil
	}
	key, err := a.cardKey()
	if err != nil {
		return err
	}
	a.hostInit()
	a.reader = &hwReader{a: a, key: key, beat: a.readerBeat}
	return nil
}

// hostInit loads periph's host drivers (GPIO, I2C, SPI) once. A failure is logged: each part then
// fails to open with its own reason and is retried.
func (a *Agent) hostInit() {
	if err := drivers.HostInit(); err != nil {
		a.log.Warn("periph host init", "err", err)
	}
}

// devCardKey is the card token key used in simulation when none is configured. Tokens made with
// it mean nothing outside a development setup.
var devCardKey = sha256.Sum256([]byte("station-agent development card key (not for production)"))

// cardKey reads the fleet's card token key ([card] key_file): raw bytes or hex, 16 bytes or more.
func (a *Agent) cardKey() ([]byte, error) {
	path := a.cfg.Card.KeyFile
	if path == "" {
		if a.cfg.Sim {
			a.log.Warn("no card.key_file: using the development card key; card tokens are not the fleet's")
			return devCardKey[:], nil
		}
		return nil, errors.New("agent: card.key_file is required to read cards (the fleet's token key)")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("agent: card.key_file: %w", err)
	}
	if s := strings.TrimSpace(string(b)); len(s) >= 32 {
		if k, err := hex.DecodeString(s); err == nil {
			b = k
		}
	}
	if len(b) < 16 {
		return nil, fmt.Errorf("agent: card.key_file %s: key must be at least 16 bytes", path)
	}
	return b, nil
}

// pn532Chip adapts the PN532 driver to the card reader's Chip interface.
type pn532Chip struct {
	dev  *pn532.Dev
	tg   byte
	beat func() // each poll is progress of the reader loop, for the watchdog
}

func (c *pn532Chip) Detect(ctx context.Context) (*cardreader.Target, error) {
	c.beat()
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

// hwReader opens the configured PN532 on first use and again after it was lost, so a reader
// missing at boot is reported down and picked up once it answers.
type hwReader struct {
	a    *Agent
	key  []byte
	beat func()

	mu      sync.Mutex
	bus     io.Closer
	dev     *pn532.Dev
	r       *cardreader.Reader
	lastErr string
}

func (h *hwReader) open() error {
	cfg := h.a.cfg.Reader
	opts := pn532.DefaultOpts
	opts.Logger = h.a.log.With("component", "pn532")
	dev, bus, err := pn532.Open(pn532.Conn{
		Bus: cfg.Bus, Device: cfg.Device, Address: uint16(cfg.Address),
		IRQPin: cfg.IRQPin, ResetPin: cfg.ResetPin,
	}, opts)
	if err != nil {
		return err
	}
	h.bus, h.dev = bus, dev
	r, err := cardreader.New(&pn532Chip{dev: h.dev, beat: h.beat}, &cardreader.Opts{
		Key: h.key, MinInterval: h.a.cfg.Card.MinInterval.D(), PollInterval: cfg.PollInterval.D(),
		Logger: h.a.log.With("component", "cardreader"),
	})
	if err != nil {
		h.closeLocked()
		return err
	}
	h.r = r
	return nil
}

func (h *hwReader) closeLocked() {
	if h.dev != nil {
		_ = h.dev.Halt()
		h.dev = nil
	}
	if h.bus != nil {
		_ = h.bus.Close()
		h.bus = nil
	}
	h.r = nil
}

func (h *hwReader) Next(ctx context.Context) (cardreader.Presentation, error) {
	h.mu.Lock()
	if h.r == nil {
		if err := h.open(); err != nil {
			h.lastErr = err.Error()
			h.mu.Unlock()
			return cardreader.Presentation{}, err
		}
		h.lastErr = ""
	}
	r := h.r
	h.mu.Unlock()
	return r.Next(ctx)
}

func (h *hwReader) Health() contract.ComponentHealth {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.dev == nil {
		return contract.ComponentHealth{State: contract.HealthDown, Detail: h.lastErr}
	}
	return pn532Health(h.dev.Health())
}

func pn532Health(hl pn532.Health) contract.ComponentHealth {
	return contract.ComponentHealth{
		State: hl.State, Firmware: hl.Firmware, LastError: hl.LastError,
		Counters: map[string]uint64{"errors": hl.Errors, "timeouts": hl.Timeouts, "checksum": hl.Checksum, "resets": hl.Resets},
	}
}
