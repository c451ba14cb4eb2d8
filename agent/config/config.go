// Package config loads and checks the station agent's TOML configuration.
//
// Every key is documented in README.md. Unknown keys and bad values are errors that name the key,
// so a typo in the field never silently falls back to a default.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"station.dev/agent/agent/contract"
	"station.dev/agent/mqtt"
	"station.dev/agent/store"
)

// Config is the whole configuration. The zero value of a field means "use the default";
// call Normalize (Load does) to fill defaults and check values.
type Config struct {
	StationID string    `toml:"station_id"`
	DataDir   string    `toml:"data_dir"`
	Socket    string    `toml:"socket"`
	LogLevel  string    `toml:"log_level"`
	MQTT      MQTT      `toml:"mqtt"`
	Store     Store     `toml:"store"`
	Card      Card      `toml:"card"`
	Commands  Commands  `toml:"commands"`
	Clock     Clock     `toml:"clock"`
	Telemetry Telemetry `toml:"telemetry"`
	Reader    Reader    `toml:"reader"`
	Indicator Indicator `toml:"indicator"`
	Door      Door      `toml:"door"`
	Env       Env       `toml:"environment"`
	Display   Display   `toml:"display"`
	LocalAPI  LocalAPI  `toml:"local_api"`
	Update    Update    `toml:"update"`

	// Sim replaces all hardware with emulated hardware. Set by --sim, not by the file.
	Sim bool `toml:"-"`
}

// MQTT is the [mqtt] table: the broker link.
type MQTT struct {
	Broker       string   `toml:"broker"`
	TopicPrefix  string   `toml:"topic_prefix"`
	CAFile       string   `toml:"ca_file"`
	CertFile     string   `toml:"cert_file"`
	KeyFile      string   `toml:"key_file"`
	Username     string   `toml:"username"`
	PasswordFile string   `toml:"password_file"`
	Window       int      `toml:"window"`
	KeepAlive    Duration `toml:"keepalive"`
	BackoffMax   Duration `toml:"backoff_max"`
	// AllowEmbedded must be true for broker = "embedded" outside --sim: the embedded broker
	// lets anyone who reaches 127.0.0.1:1883 publish commands, without authentication.
	AllowEmbedded bool `toml:"allow_embedded"`
}

// LocalAPI is the [local_api] table: limits of submissions by the kiosk's software.
type LocalAPI struct {
	// SubmitRate is the records per second each local program may submit (429 beyond);
	// 0 means the default (localapi.DefaultSubmitRate); -1 means no limit.
	SubmitRate float64 `toml:"submit_rate"`
	// SubmitBurst is how many records a program may submit at once above the rate; 0 means the
	// default (localapi.DefaultSubmitBurst), and at least a full batch (100) is allowed.
	SubmitBurst int `toml:"submit_burst"`
}

// Store is the [store] table: the local outbox.
type Store struct {
	MaxBytes Size `toml:"max_bytes"`
}

// Card is the [card] table: card identity.
type Card struct {
	KeyFile     string   `toml:"key_file"`
	MinInterval Duration `toml:"min_interval"`
}

// Commands is the [commands] table: fleet commands.
type Commands struct {
	PublicKeys []string `toml:"public_keys"`
	// MaxLifetime is the longest a signed command may live: expires_at at most this long after
	// issued_at. A station keeps an executed command's id until it expires, so this bounds the
	// ledger too.
	MaxLifetime Duration `toml:"max_lifetime"`
}

// Clock is the [clock] table.
type Clock struct {
	AssumeSynced bool `toml:"assume_synced"`
}

// Telemetry is the [telemetry] table.
type Telemetry struct {
	Interval Duration `toml:"interval"`
}

// Reader is the [reader] table: the contactless card reader.
type Reader struct {
	Driver       string   `toml:"driver"`        // "pn532", "sim" or "none"
	Bus          string   `toml:"bus"`           // "i2c", "spi" or "uart"
	Device       string   `toml:"device"`        // bus name (periph) or serial device path
	Address      int      `toml:"address"`       // I2C address
	IRQPin       string   `toml:"irq_pin"`       // GPIO name, optional
	ResetPin     string   `toml:"reset_pin"`     // GPIO name, optional
	PollInterval Duration `toml:"poll_interval"` // pause between empty polls
}

// Indicator is the [indicator] table: status LEDs and buzzer. Absent when no pin is named.
type Indicator struct {
	Red         string `toml:"red"` // GPIO names, e.g. "GPIO17"; "" = not fitted
	Green       string `toml:"green"`
	Blue        string `toml:"blue"`
	Buzzer      string `toml:"buzzer"`
	ActiveLow   bool   `toml:"active_low"`   // outputs are on when the pin is low
	BuzzerOnOff bool   `toml:"buzzer_onoff"` // an active buzzer: on/off, no PWM tone
}

// Configured reports whether any output is named.
func (i Indicator) Configured() bool {
	return i.Red != "" || i.Green != "" || i.Blue != "" || i.Buzzer != ""
}

// Door is the [door] table: the cabinet door (tamper) switch. Absent when pin is "".
type Door struct {
	Pin      string   `toml:"pin"`
	OpenLow  bool     `toml:"open_low"` // the input reads low while the door is open
	Debounce Duration `toml:"debounce"`
}

// Env is the [environment] table: the cabinet's BME280/BMP280 sensor and its alarms.
type Env struct {
	Enabled      bool     `toml:"enabled"`
	Bus          string   `toml:"bus"`     // periph I2C bus name; "" = the first bus
	Address      int      `toml:"address"` // 0x76 or 0x77
	Interval     Duration `toml:"interval"`
	TempHigh     *float64 `toml:"temp_high"`     // °C; alarm above
	TempLow      *float64 `toml:"temp_low"`      // °C; alarm below
	HumidityHigh *float64 `toml:"humidity_high"` // %; alarm above
	Hysteresis   float64  `toml:"hysteresis"`    // how far back a value must come to clear an alarm
}

// Display is the [display] table: an optional SSD1306 panel.
type Display struct {
	Enabled bool   `toml:"enabled"`
	Bus     string `toml:"bus"`
	Address int    `toml:"address"` // 0x3C or 0x3D
}

// Defaults.
const (
	DefaultDataDir      = "/var/lib/station"
	DefaultTopicPrefix  = contract.DefaultTopicPrefix
	DefaultMaxBytes     = store.DefaultMaxBytes
	DefaultWindow       = mqtt.DefaultWindow
	DefaultKeepAlive    = mqtt.DefaultKeepAlive
	DefaultBackoffMax   = mqtt.DefaultBackoffMax
	DefaultTelemetry    = 60 * time.Second
	DefaultPollInterval = 100 * time.Millisecond
	DefaultI2CAddress   = 0x24
	DefaultDebounce     = 50 * time.Millisecond
	DefaultEnvInterval  = 30 * time.Second
	DefaultTempHigh     = 55.0
	DefaultTempLow      = -20.0
	DefaultHumidityHigh = 90.0
	DefaultHysteresis   = 2.0
	DefaultMaxLifetime  = 7 * 24 * time.Hour
	// MaxMaxLifetime bounds [commands] max_lifetime.
	MaxMaxLifetime = 30 * 24 * time.Hour
	// Embedded is the broker value that runs an MQTT broker inside the agent.
	Embedded = "embedded"
)

// Load reads and checks the file at path. The result is normalised (defaults filled in).
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("config: %s: %w", path, unwrapPrefix(err))
	}
	return c, nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func unwrapPrefix(err error) error {
	if s := err.Error(); strings.HasPrefix(s, "config: ") {
		return errors.New(strings.TrimPrefix(s, "config: "))
	}
	return err
}

// Parse decodes TOML bytes. Unknown keys are errors. The result is not yet normalised: flags may
// still override it; call Normalize after.
func Parse(b []byte) (*Config, error) {
	var c Config
	md, err := toml.NewDecoder(bytes.NewReader(b)).Decode(&c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			if pe.LastKey != "" {
				return nil, fmt.Errorf("config: line %d: %s: %s", pe.Position.Line, pe.LastKey, oneLine(pe.Message))
			}
			return nil, fmt.Errorf("config: line %d: %s", pe.Position.Line, oneLine(pe.Message))
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		sort.Strings(keys)
		return nil, fmt.Errorf("config: unknown key %s", strings.Join(keys, ", "))
	}
	return &c, nil
}

// Normalize fills in defaults and checks every value. Errors name the key.
func (c *Config) Normalize() error {
	if c.StationID == "" && c.Sim {
		c.StationID = simStationID()
	}
	if c.StationID == "" {
		return errors.New("config: station_id is required")
	}
	if !contract.ValidStationID(c.StationID) {
		return fmt.Errorf("config: station_id %q: must match %s", c.StationID, contract.StationIDSyntax)
	}
	if c.DataDir == "" {
		c.DataDir = defaultDataDir(c.Sim)
	}
	if !filepath.IsAbs(c.DataDir) {
		abs, err := filepath.Abs(c.DataDir)
		if err != nil {
			return fmt.Errorf("config: data_dir: %w", err)
		}
		c.DataDir = abs
	}
	switch strings.ToLower(c.LogLevel) {
	case "":
		c.LogLevel = "info"
	case "debug", "info", "warn", "error":
		c.LogLevel = strings.ToLower(c.LogLevel)
	default:
		return fmt.Errorf("config: log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	if err := c.MQTT.normalize(c.Sim); err != nil {
		return err
	}
	if c.Store.MaxBytes == 0 {
		c.Store.MaxBytes = DefaultMaxBytes
	}
	if c.Store.MaxBytes < 1<<20 {
		return fmt.Errorf("config: store.max_bytes %s: must be at least 1MiB", c.Store.MaxBytes)
	}
	if c.Store.MaxBytes > 1<<30 {
		// bbolt maps the whole file; 32-bit boards fail to grow the map much past 512 MiB.
		return fmt.Errorf("config: store.max_bytes %s: must be at most 1GiB", c.Store.MaxBytes)
	}
	if c.Card.MinInterval < 0 {
		return errors.New("config: card.min_interval: must not be negative")
	}
	for i, k := range c.Commands.PublicKeys {
		if err := checkPublicKey(k); err != nil {
			return fmt.Errorf("config: commands.public_keys[%d]: %w", i, err)
		}
	}
	if c.Commands.MaxLifetime == 0 {
		c.Commands.MaxLifetime = Duration(DefaultMaxLifetime)
	}
	if c.Commands.MaxLifetime < Duration(time.Minute) || c.Commands.MaxLifetime > Duration(MaxMaxLifetime) {
		return fmt.Errorf("config: commands.max_lifetime %s: want 1m to %s", c.Commands.MaxLifetime, Duration(MaxMaxLifetime))
	}
	if c.Telemetry.Interval == 0 {
		c.Telemetry.Interval = Duration(DefaultTelemetry)
	}
	if c.Telemetry.Interval < Duration(time.Second) {
		return fmt.Errorf("config: telemetry.interval %s: must be at least 1s", c.Telemetry.Interval)
	}
	if c.LocalAPI.SubmitRate < 0 && c.LocalAPI.SubmitRate != -1 || c.LocalAPI.SubmitBurst < 0 {
		return errors.New("config: local_api: submit_rate must be positive (or -1: no limit), submit_burst positive")
	}
	if err := c.Env.normalize(); err != nil {
		return err
	}
	if c.Door.Debounce == 0 {
		c.Door.Debounce = Duration(DefaultDebounce)
	}
	if c.Door.Debounce < 0 || c.Door.Debounce > Duration(5*time.Second) {
		return fmt.Errorf("config: door.debounce %s: want 0 to 5s", c.Door.Debounce)
	}
	if err := c.Update.normalize(); err != nil {
		return err
	}
	if c.Display.Address == 0 {
		c.Display.Address = 0x3C
	}
	if c.Display.Address != 0x3C && c.Display.Address != 0x3D {
		return fmt.Errorf("config: display.address %#x: want 0x3c or 0x3d", c.Display.Address)
	}
	return c.Reader.normalize(c.Sim)
}

func fptr(f float64) *float64 { return &f }

// Insecure lists, in words, what in the configuration leaves the station open to anyone who can
// publish on its broker or reach it: the agent warns at start, and status, selftest and config
// check show it. A simulated station (--sim) is insecure by design and lists nothing. keys is
// the number of command keys in force (the file's, or those set by keys.set).
func (c *Config) Insecure(keys int) []string {
	if c.Sim {
		return nil
	}
	var out []string
	if keys == 0 {
		out = append(out, "unsigned commands accepted (no [commands] public_keys)")
	}
	if c.MQTT.Broker == Embedded {
		out = append(out, "embedded broker without authentication (mqtt.allow_embedded)")
	} else if u, err := url.Parse(c.MQTT.Broker); err == nil && (u.Scheme == "tcp" || u.Scheme == "mqtt") {
		out = append(out, "broker connection not encrypted ("+u.Scheme+"://)")
	}
	return out
}

func (e *Env) normalize() error {
	if e.Address == 0 {
		e.Address = 0x76
	}
	if e.Address != 0x76 && e.Address != 0x77 {
		return fmt.Errorf("config: environment.address %#x: want 0x76 or 0x77", e.Address)
	}
	if e.Interval == 0 {
		e.Interval = Duration(DefaultEnvInterval)
	}
	if e.Interval < Duration(time.Second) {
		return fmt.Errorf("config: environment.interval %s: must be at least 1s", e.Interval)
	}
	if e.TempHigh == nil {
		e.TempHigh = fptr(DefaultTempHigh)
	}
	if e.TempLow == nil {
		e.TempLow = fptr(DefaultTempLow)
	}
	if e.HumidityHigh == nil {
		e.HumidityHigh = fptr(DefaultHumidityHigh)
	}
	if e.Hysteresis == 0 {
		e.Hysteresis = DefaultHysteresis
	}
	if e.Hysteresis < 0 {
		return errors.New("config: environment.hysteresis: must not be negative")
	}
	if *e.TempLow >= *e.TempHigh {
		return fmt.Errorf("config: environment.temp_low %g must be below temp_high %g", *e.TempLow, *e.TempHigh)
	}
	return nil
}

func (m *MQTT) normalize(sim bool) error {
	if m.Broker == "" {
		if !sim {
			return errors.New("config: mqtt.broker is required (tcp://host:port, tls://host:port or embedded)")
		}
		m.Broker = Embedded
	}
	if m.Broker == Embedded && !sim && !m.AllowEmbedded {
		return errors.New(`config: mqtt.broker "embedded" outside --sim: the embedded broker has no authentication; set [mqtt] allow_embedded = true to run it anyway`)
	}
	if m.Broker != Embedded {
		u, err := url.Parse(m.Broker)
		if err != nil {
			return fmt.Errorf("config: mqtt.broker %q: %w", m.Broker, err)
		}
		switch u.Scheme {
		case "tcp", "mqtt", "tls", "ssl", "mqtts":
		default:
			return fmt.Errorf("config: mqtt.broker %q: scheme must be tcp, tls or the word embedded", m.Broker)
		}
		if u.Host == "" || u.Port() == "" {
			return fmt.Errorf("config: mqtt.broker %q: want scheme://host:port", m.Broker)
		}
	}
	if m.TopicPrefix == "" {
		m.TopicPrefix = DefaultTopicPrefix
	}
	if !contract.ValidTopicPrefix(m.TopicPrefix) {
		return fmt.Errorf("config: mqtt.topic_prefix %q: %s", m.TopicPrefix, contract.TopicPrefixSyntax)
	}
	if (m.CertFile == "") != (m.KeyFile == "") {
		return errors.New("config: mqtt.cert_file and mqtt.key_file go together")
	}
	if m.Window == 0 {
		m.Window = DefaultWindow
	}
	if m.Window < 1 || m.Window > mqtt.MaxWindow {
		return fmt.Errorf("config: mqtt.window %d: want 1 to %d", m.Window, mqtt.MaxWindow)
	}
	if m.KeepAlive == 0 {
		m.KeepAlive = Duration(DefaultKeepAlive)
	}
	if m.KeepAlive < Duration(5*time.Second) {
		return fmt.Errorf("config: mqtt.keepalive %s: must be at least 5s", m.KeepAlive)
	}
	if m.BackoffMax == 0 {
		m.BackoffMax = Duration(DefaultBackoffMax)
	}
	if m.BackoffMax < Duration(time.Second) {
		return fmt.Errorf("config: mqtt.backoff_max %s: must be at least 1s", m.BackoffMax)
	}
	return nil
}

func (r *Reader) normalize(sim bool) error {
	if sim {
		r.Driver = "sim"
	}
	switch r.Driver {
	case "":
		r.Driver = "pn532"
	case "pn532", "none":
	case "sim":
		if !sim {
			// The emulated reader takes any card number: with the fleet's card key it would be
			// an oracle for card tokens.
			return errors.New(`config: reader.driver "sim": the emulated reader exists only under --sim`)
		}
	default:
		return fmt.Errorf("config: reader.driver %q: want pn532 or none (sim: only with --sim)", r.Driver)
	}
	switch r.Bus {
	case "":
		r.Bus = "i2c"
	case "i2c", "spi", "uart":
	default:
		return fmt.Errorf("config: reader.bus %q: want i2c, spi or uart", r.Bus)
	}
	if r.Address == 0 {
		r.Address = DefaultI2CAddress
	}
	if r.Address < 0x03 || r.Address > 0x77 {
		return fmt.Errorf("config: reader.address %#x: not a 7-bit I2C address", r.Address)
	}
	if r.PollInterval == 0 {
		r.PollInterval = Duration(DefaultPollInterval)
	}
	if r.PollInterval < Duration(time.Millisecond) || r.PollInterval > Duration(5*time.Second) {
		return fmt.Errorf("config: reader.poll_interval %s: want 1ms to 5s", r.PollInterval)
	}
	return nil
}

func checkPublicKey(k string) error {
	b, err := decodeBase64(k)
	if err != nil {
		return errors.New("not base64")
	}
	if len(b) != 32 {
		return fmt.Errorf("a raw Ed25519 public key is 32 bytes, this is %d", len(b))
	}
	return nil
}

// simStationID derives a stable station id for simulation from the host name.
func simStationID() string {
	h, _ := os.Hostname()
	h = strings.ToLower(h)
	var b strings.Builder
	for _, r := range h {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_' {
			b.WriteRune(r)
		}
	}
	id := "sim-" + b.String()
	if id == "sim-" {
		id = "sim-station"
	}
	if len(id) > 64 {
		id = id[:64]
	}
	return id
}

// defaultDataDir is $STATE_DIRECTORY (set by systemd's StateDirectory=), else /var/lib/station;
// a simulation run by a user who cannot write there keeps its data in the user's state directory.
func defaultDataDir(sim bool) string {
	if d := os.Getenv("STATE_DIRECTORY"); d != "" {
		return strings.Split(d, ":")[0]
	}
	if !sim {
		return DefaultDataDir
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "station-sim")
	}
	if os.Geteuid() == 0 {
		return "/var/lib/station-sim"
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "station-sim")
	}
	return filepath.Join(os.TempDir(), "station-sim")
}

// SocketCandidates lists where the local API socket is looked for, in order:
// $RUNTIME_DIRECTORY/station.sock (systemd), /run/station/station.sock, then a per-user path for
// simulation runs by users who cannot write /run.
func SocketCandidates() []string {
	var c []string
	if d := os.Getenv("RUNTIME_DIRECTORY"); d != "" {
		c = append(c, filepath.Join(strings.Split(d, ":")[0], "station.sock"))
	}
	c = append(c, "/run/station/station.sock")
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		c = append(c, filepath.Join(d, "station", "station.sock"))
	} else {
		c = append(c, filepath.Join(os.TempDir(), "station-"+strconv.Itoa(os.Getuid()), "station.sock"))
	}
	return c
}

// DefaultSocket is where a starting agent listens when no socket is configured: the first
// candidate whose directory exists or can be created.
func DefaultSocket() string {
	cands := SocketCandidates()
	for _, p := range cands {
		if err := os.MkdirAll(filepath.Dir(p), 0o750); err == nil {
			return p
		}
	}
	return cands[len(cands)-1]
}

// ClientSocket is the socket a CLI command talks to when none is given: the first candidate
// that exists, else the first candidate (so the error names the usual place).
func ClientSocket() string {
	cands := SocketCandidates()
	for _, p := range cands {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return p
		}
	}
	return cands[0]
}
