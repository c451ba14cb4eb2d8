package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"station.dev/agent/agent"
	"station.dev/agent/agent/config"
	"station.dev/agent/drivers/display"
	"station.dev/agent/drivers/door"
	"station.dev/agent/drivers/envsensor"
	"station.dev/agent/drivers/hw"
	"station.dev/agent/drivers/hw/hwsim"
	"station.dev/agent/drivers/indicator"
	"station.dev/agent/mqtt"
	"station.dev/agent/mqtt/embedded"
	"station.dev/agent/store"
)

// The assembly: the one place that turns a configuration into the agent's parts (store, broker
// link, hardware) and closes them again after the agent has stopped.

// embeddedAddr is where `broker = "embedded"` listens.
const embeddedAddr = "127.0.0.1:1883"

// legacyOverridesKey is where earlier versions kept the fleet's overrides, in the store.
const legacyOverridesKey = "config.overrides"

// station is an assembled agent with what must be closed after it stops.
type station struct {
	agent   *agent.Agent
	cfg     *config.Config
	closers []func() error // in the order they run
}

// close releases the parts, hardware first and the store last.
func (s *station) close(log *slog.Logger) {
	for _, c := range s.closers {
		if err := c(); err != nil {
			log.Error("closing", "err", err)
		}
	}
	s.closers = nil
}

// effectiveConfig lays the fleet's overrides (kept beside the store) over the file and the
// flags. Overrides that cannot be read or do not fit are ignored with an error in the log: the
// station keeps working on its file.
func effectiveConfig(base *config.Config, flags func(*config.Config), log *slog.Logger) (*config.Config, config.Overrides) {
	ov, err := config.ReadOverrides(config.OverridesPath(base.DataDir))
	if err != nil {
		log.Error("ignoring the fleet's configuration overrides", "err", err)
		return base, nil
	}
	ov, ignored := ov.Remote()
	if len(ignored) > 0 {
		log.Error("ignoring fleet overrides of keys that are set in the configuration file only; see station config overrides, clear them with station config reset", "keys", ignored)
	}
	if len(ov) == 0 {
		return base, ov
	}
	c, err := ov.Apply(base, flags)
	if err != nil {
		log.Error("ignoring the fleet's configuration overrides", "err", err)
		return base, nil
	}
	c.Update = base.Update // file-only: which releases to trust is not the fleet's to change
	log.Info("fleet configuration overrides in force", "keys", ov.Keys())
	return c, ov
}

// assemble builds the agent's parts from base (the file and the flags) and the agent from them.
// On error everything built so far is closed again.
func assemble(base *config.Config, flags func(*config.Config), opts agent.Options, log *slog.Logger) (_ *station, err error) {
	if err := os.MkdirAll(base.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	cfg, ov := effectiveConfig(base, flags, log)
	s := &station{cfg: cfg}
	defer func() {
		if err != nil {
			s.close(log)
		}
	}()
	if opts.LogLevel != nil {
		_ = opts.LogLevel.UnmarshalText([]byte(cfg.LogLevel))
	}

	// The store writes its store.recovered alarm itself, in the transaction that completes a
	// salvaged store: nothing that fails later in the assembly can lose it.
	if opts.BootID == "" {
		opts.BootID = agent.NewBootID()
	}
	st, err := store.Open(filepath.Join(cfg.DataDir, "station.db"), &store.Options{
		MaxBytes: int64(cfg.Store.MaxBytes), Logger: log.With("component", "store"),
		RecoveryAlarm: agent.RecoveryAlarm(opts.BootID, time.Now()),
	})
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, st.Close)
	if rec := st.Recovered(); rec != nil {
		log.Error("store was broken: salvaged into a new one", "moved_to", rec.MovedTo, "reason", rec.Reason,
			"salvaged", rec.Salvaged, "lost", rec.Lost, "seq_restarted", rec.SeqRestarted)
	}
	if ov == nil {
		ov = config.Overrides{}
	}
	if err := migrateOverrides(st, cfg.DataDir, ov, log); err != nil {
		log.Error("moving the fleet's overrides out of the store", "err", err)
	}

	hardware, closeHW, err := buildHardware(cfg, log)
	if err != nil {
		return nil, err
	}
	s.closers = append([]func() error{closeHW}, s.closers...)

	brokerURL := cfg.MQTT.Broker
	if brokerURL == config.Embedded {
		b, err := embedded.Start(embeddedAddr, nil)
		if err != nil {
			return nil, fmt.Errorf("embedded broker on %s: %w (is another broker running? use --broker)", embeddedAddr, err)
		}
		s.closers = append([]func() error{b.Close}, s.closers...)
		brokerURL = b.URL()
		log.Info("embedded MQTT broker listening", "addr", b.Addr())
	}
	password := ""
	if cfg.MQTT.PasswordFile != "" {
		b, err := os.ReadFile(cfg.MQTT.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt.password_file: %w", err)
		}
		password = strings.TrimRight(string(b), "\r\n")
	}
	s.agent, err = agent.New(agent.Parts{
		Config: cfg, Base: base, Store: st, Hardware: hardware, Logger: log,
		Link: agent.MQTTLink(mqtt.Config{
			Broker: brokerURL, ClientID: cfg.StationID, Username: cfg.MQTT.Username, Password: password,
			CAFile: cfg.MQTT.CAFile, CertFile: cfg.MQTT.CertFile, KeyFile: cfg.MQTT.KeyFile,
			KeepAlive: cfg.MQTT.KeepAlive.D(), BackoffMax: cfg.MQTT.BackoffMax.D(), Window: cfg.MQTT.Window,
			Logger: log.With("component", "mqtt"),
		}),
		Updates: updateFetcher(cfg, brokerURL, password, log),
	}, opts)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// migrateOverrides moves overrides that earlier versions kept in the store into their file.
// They are in force from the next start.
func migrateOverrides(st *store.Store, dataDir string, ov config.Overrides, log *slog.Logger) error {
	b, err := st.GetSetting(legacyOverridesKey)
	if err != nil || b == nil {
		return err
	}
	var legacy config.Overrides
	if err := json.Unmarshal(b, &legacy); err != nil {
		return err
	}
	if err := config.WriteOverrides(config.OverridesPath(dataDir), legacy.Merge(ov)); err != nil {
		return err
	}
	log.Warn("fleet configuration overrides moved out of the store: in force from the next start", "keys", legacy.Keys())
	return st.DeleteSetting(legacyOverridesKey)
}

// devCardKey is the card token key of the emulated reader. Tokens made with it mean nothing
// outside a development setup.
var devCardKey = sha256.Sum256([]byte("station-agent development card key (not for production)"))

// readCardKey reads the fleet's card token key ([card] key_file): hex digits (32 or more, an even
// number; surrounding white space ignored) or raw bytes (at least 16, not text). A file other
// users can read (others, or a group the agent is not in) is refused: the key turns card numbers
// into tokens, and whoever holds it can test guesses of a card number against a token.
func readCardKey(path string) ([]byte, error) {
	if path == "" {
		return nil, errors.New("card.key_file is required to read cards (the fleet's token key)")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("card.key_file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("card.key_file: %w", err)
	}
	if err := privateFile(fi); err != nil {
		return nil, fmt.Errorf("card.key_file %s: %w", path, err)
	}
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return nil, fmt.Errorf("card.key_file: %w", err)
	}
	if s := strings.TrimSpace(string(b)); s != "" && isText(s) {
		if !isHex(s) {
			return nil, fmt.Errorf("card.key_file %s: text that is not hex digits: write the key as 64 hex digits (openssl rand -hex 32 > %s)", path, path)
		}
		if len(s)%2 != 0 || len(s) < 32 {
			return nil, fmt.Errorf("card.key_file %s: %d hex digits: want an even number, at least 32 (openssl rand -hex 32 > %s)", path, len(s), path)
		}
		k, _ := hex.DecodeString(s)
		return k, nil
	}
	if len(b) < 16 {
		return nil, fmt.Errorf("card.key_file %s: key must be at least 16 bytes", path)
	}
	return b, nil
}

// privateFile refuses a file that users other than the agent's can read: readable by others,
// or by a group the agent is not in.
func privateFile(fi os.FileInfo) error {
	mode := fi.Mode().Perm()
	if mode&0o007 != 0 {
		return fmt.Errorf("mode %#o lets every user read it: chmod 0600 (or 0640 with the station group)", mode)
	}
	if mode&0o070 == 0 {
		return nil
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if int(st.Gid) == os.Getegid() {
		return nil
	}
	if groups, err := os.Getgroups(); err == nil && slices.Contains(groups, int(st.Gid)) {
		return nil
	}
	return fmt.Errorf("mode %#o lets group %d, which the agent is not in, read it: chmod 0600 or chgrp station", mode, st.Gid)
}

func isText(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 || c > 0x7e) && c != '\n' && c != '\r' && c != '\t' {
			return false
		}
	}
	return true
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// parts is what both hardware assemblies (drivers/hw and its emulated twin) offer.
type parts interface {
	Fitted() hw.Fitted
	OpenReader(beat func()) (*hw.CardReader, error)
	OpenIndicator() (*indicator.Indicator, error)
	OpenDoor() (*door.Door, error)
	OpenEnvironment() (*envsensor.Sensor, error)
	OpenDisplay() (*display.Display, error)
	Close() error
}

// buildHardware makes the hardware assembly the configuration asks for: the emulated station
// under --sim (always with the development card key), the real one otherwise.
func buildHardware(cfg *config.Config, log *slog.Logger) (agent.Hardware, func() error, error) {
	if cfg.Sim {
		if cfg.Card.KeyFile != "" {
			log.Warn("--sim: card.key_file is not used; the emulated reader uses the development card key")
		}
		s := hwsim.New(hwsim.Config{
			Key: devCardKey[:], MinInterval: cfg.Card.MinInterval.D(), PollInterval: cfg.Reader.PollInterval.D(),
			DoorOpenLow: cfg.Door.OpenLow, Display: cfg.Display.Enabled, Logger: log,
		})
		h := openers(s)
		h.Sim = s
		return h, s.Close, nil
	}
	var key []byte
	if cfg.Reader.Driver != "none" {
		var err error
		if key, err = readCardKey(cfg.Card.KeyFile); err != nil {
			return agent.Hardware{}, nil, err
		}
	}
	r, d, e, p := cfg.Reader, cfg.Door, cfg.Env, cfg.Display
	c := hw.Config{
		Reader: hw.Reader{Driver: r.Driver, Bus: r.Bus, Device: r.Device, Address: uint16(r.Address),
			IRQPin: r.IRQPin, ResetPin: r.ResetPin, PollInterval: r.PollInterval.D(), Key: key,
			MinInterval: cfg.Card.MinInterval.D()},
		Indicator: hw.Indicator{Red: cfg.Indicator.Red, Green: cfg.Indicator.Green, Blue: cfg.Indicator.Blue,
			Buzzer: cfg.Indicator.Buzzer, ActiveLow: cfg.Indicator.ActiveLow, BuzzerOnOff: cfg.Indicator.BuzzerOnOff},
		Door:        hw.Door{Pin: d.Pin, OpenLow: d.OpenLow, Debounce: d.Debounce.D()},
		Environment: hw.Environment{Enabled: e.Enabled, Bus: e.Bus, Address: uint16(e.Address)},
		Display:     hw.Display{Enabled: p.Enabled, Bus: p.Bus, Address: uint16(p.Address)},
		Logger:      log,
	}
	s := hw.New(c)
	return openers(s), s.Close, nil
}

// openers presents an assembly's parts to the agent; a part that is not fitted has no opener.
func openers(p parts) agent.Hardware {
	f := p.Fitted()
	var h agent.Hardware
	if f.Reader {
		h.Reader = func(beat func()) (agent.Reader, error) { return some[agent.Reader](p.OpenReader(beat)) }
	}
	if f.Indicator {
		h.Indicator = func() (agent.Indicator, error) { return some[agent.Indicator](p.OpenIndicator()) }
	}
	if f.Door {
		h.Door = func() (agent.Door, error) { return some[agent.Door](p.OpenDoor()) }
	}
	if f.Environment {
		h.Environment = func() (agent.EnvSensor, error) { return some[agent.EnvSensor](p.OpenEnvironment()) }
	}
	if f.Display {
		h.Display = func() (agent.Display, error) { return some[agent.Display](p.OpenDisplay()) }
	}
	return h
}

// some turns an opener's result into the agent's interface, keeping a failed open's nil a nil
// interface.
func some[I any, T any](v T, err error) (I, error) {
	var zero I
	if err != nil {
		return zero, err
	}
	i, ok := any(v).(I)
	if !ok {
		return zero, fmt.Errorf("%T does not provide what the agent needs", v)
	}
	return i, nil
}
