package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"station.dev/agent/drivers/cardreader"
	"station.dev/agent/drivers/display"
	"station.dev/agent/drivers/door"
	"station.dev/agent/drivers/envsensor"
	"station.dev/agent/drivers/hw"
	"station.dev/agent/drivers/hw/hwsim"
	"station.dev/agent/drivers/indicator"
	"station.dev/agent/drivers/pn532"
)

// hardware is the station's hardware as the agent opens it: drivers/hw on a station,
// drivers/hw/hwsim under --sim.
type hardware interface {
	Fitted() hw.Fitted
	OpenReader(beat func()) (*hw.CardReader, error)
	OpenIndicator() (*indicator.Indicator, error)
	OpenDoor() (*door.Door, error)
	OpenEnvironment() (*envsensor.Sensor, error)
	OpenDisplay() (*display.Display, error)
	Close() error
}

var (
	_ hardware = (*hw.Station)(nil)
	_ hardware = (*hwsim.Station)(nil)
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
		a.sim, err = newSimHardware(key, cfg, a.log, a.readerBeat)
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
	a.reader = &hwReader{st: a.newStation(key), beat: a.readerBeat}
	return nil
}

// newStation builds the hardware assembly from the configuration; key is the card token key, nil
// when the agent reads no cards. It opens nothing yet.
func (a *Agent) newStation(key []byte) *hw.Station {
	c := a.cfg
	r := hw.Reader{Driver: "none"}
	if key != nil {
		r = hw.Reader{
			Driver: c.Reader.Driver, Bus: c.Reader.Bus, Device: c.Reader.Device, Address: uint16(c.Reader.Address),
			IRQPin: c.Reader.IRQPin, ResetPin: c.Reader.ResetPin, PollInterval: c.Reader.PollInterval.D(),
			Key: key, MinInterval: c.Card.MinInterval.D(),
		}
	}
	return hw.New(hw.Config{
		Reader: r,
		Indicator: hw.Indicator{Red: c.Indicator.Red, Green: c.Indicator.Green, Blue: c.Indicator.Blue,
			Buzzer: c.Indicator.Buzzer, ActiveLow: c.Indicator.ActiveLow, BuzzerOnOff: c.Indicator.BuzzerOnOff},
		Door:        hw.Door{Pin: c.Door.Pin, OpenLow: c.Door.OpenLow, Debounce: c.Door.Debounce.D()},
		Environment: hw.Environment{Enabled: c.Env.Enabled, Bus: c.Env.Bus, Address: uint16(c.Env.Address)},
		Display:     hw.Display{Enabled: c.Display.Enabled, Bus: c.Display.Bus, Address: uint16(c.Display.Address)},
		Logger:      a.log,
	})
}

// hardware returns the hardware the peripherals open: the emulated station under --sim, else
// the assembly the card reader uses, so that a bus they share is opened once.
func (a *Agent) hardware() hardware {
	if a.sim != nil {
		return a.sim.hw
	}
	if a.cfg.Sim {
		return hwsim.New(hwsim.Config{DoorOpenLow: a.cfg.Door.OpenLow, Display: a.cfg.Display.Enabled, Logger: a.log})
	}
	if r, ok := a.reader.(*hwReader); ok {
		return r.st
	}
	return a.newStation(nil)
}

// closeHardware halts the reader and the peripherals, then closes their buses and pins.
func (a *Agent) closeHardware() {
	var hs []hardware
	if a.periph != nil && a.periph.hw != nil {
		hs = append(hs, a.periph.hw)
	}
	if r, ok := a.reader.(*hwReader); ok {
		hs = append(hs, r.st)
	}
	if a.sim != nil {
		hs = append(hs, a.sim.hw)
	}
	for _, h := range hs {
		if err := h.Close(); err != nil {
			a.log.Warn("closing the hardware", "err", err)
		}
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

// hwReader opens the configured PN532 on first use, so a reader missing at boot is reported down
// and picked up once it answers.
type hwReader struct {
	st   *hw.Station
	beat func()

	mu      sync.Mutex
	r       *hw.CardReader
	lastErr string
}

func (h *hwReader) Next(ctx context.Context) (cardreader.Presentation, error) {
	h.mu.Lock()
	if h.r == nil {
		r, err := h.st.OpenReader(h.beat)
		if err != nil {
			h.lastErr = err.Error()
			h.mu.Unlock()
			return cardreader.Presentation{}, err
		}
		h.r, h.lastErr = r, ""
	}
	r := h.r
	h.mu.Unlock()
	return r.Next(ctx)
}

func (h *hwReader) Health() ComponentHealth {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.r == nil {
		return ComponentHealth{State: "down", Detail: h.lastErr}
	}
	return pn532Health(h.r.Health())
}

func pn532Health(hl pn532.Health) ComponentHealth {
	return ComponentHealth{
		State: hl.State, Firmware: hl.Firmware, LastError: hl.LastError,
		Counters: map[string]uint64{"errors": hl.Errors, "timeouts": hl.Timeouts, "checksum": hl.Checksum, "resets": hl.Resets},
	}
}
