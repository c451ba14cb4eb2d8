// Package agent joins the station's parts: card reader -> record -> store -> broker link, plus
// status, telemetry and the local API. It depends on small interfaces of its own so tests can put
// fakes where hardware would be; the store and the broker are always real.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"station.dev/agent/agent/command"
	"station.dev/agent/agent/config"
	"station.dev/agent/agent/contract"
	"station.dev/agent/drivers/cardreader"
	"station.dev/agent/mqtt"
	"station.dev/agent/mqtt/embedded"
	"station.dev/agent/store"
)

// Reader yields card presentations. Next blocks until a presentation completes or ctx ends.
type Reader interface {
	Next(ctx context.Context) (cardreader.Presentation, error)
}

// ReaderHealth is optionally implemented by a Reader to report the chip's health.
type ReaderHealth interface {
	Health() contract.ComponentHealth
}

// Indicator tells the person at the kiosk what happened (LEDs, buzzer).
type Indicator interface {
	Show(pattern string)
}

// Indicator patterns the agent uses.
const (
	PatternRecorded        = "recorded"
	PatternRecordedOffline = "recorded_offline"
	PatternRefused         = "refused"
	PatternError           = "error"
)

// Link is the broker link as the agent uses it (implemented by *mqtt.Link).
type Link interface {
	Run(ctx context.Context) error
	Stats() mqtt.Stats
	UpdateStatus()
	PublishNow(topic string, payload []byte) bool
}

// Options configure an Agent. Config is required; the rest have defaults.
type Options struct {
	Config  *config.Config
	Logger  *slog.Logger
	Version string
	// EmbeddedAddr is where `broker = "embedded"` listens; default 127.0.0.1:1883.
	EmbeddedAddr string
	// Reader replaces the configured card reader (tests).
	Reader Reader
	// Indicator replaces the configured indicator (tests).
	Indicator Indicator
	// Now is the wall clock; default time.Now.
	Now func() time.Time
	// ClockSynced reports whether the wall clock is trustworthy; default asks the kernel.
	ClockSynced func() bool
	// OnReady is called once the store is open and the local API listens.
	OnReady func()
	// Flags re-applies the command-line flags, which win over the fleet's remote configuration
	// (config.set) as they win over the file.
	Flags func(*config.Config)
	// LogLevel, when set, lets the fleet change the log level at run time (log.level, config.set).
	LogLevel *slog.LevelVar
	// Logs, when set, serves the logs.tail command.
	Logs LogTail
	// Heartbeat, when set, registers a main loop with the service watchdog and returns the
	// function the loop calls each time it makes progress.
	Heartbeat func(name string) (beat func())
	// Status, when set, receives a one-line summary whenever it changes (systemd STATUS=).
	Status func(line string)
}

// heartbeat registers a loop with the watchdog; without one it returns a no-op.
func (a *Agent) heartbeat(name string) func() {
	if a.heartbeatFn == nil {
		return func() {}
	}
	return a.heartbeatFn(name)
}

// LogTail returns the last lines logged.
type LogTail interface {
	Tail(n int) []string
}

// Agent is the running station agent.
type Agent struct {
	cfg     *config.Config
	log     *slog.Logger
	version string
	now     func() time.Time
	synced  func() bool
	start   time.Time // monotonic reference for uptime
	bootID  string

	store  *store.Store
	link   Link
	broker *embedded.Broker
	reader Reader
	ind    Indicator
	sim    *simHardware
	periph *peripherals
	api    *apiServer

	recent *recentRecords
	fullMu sync.Mutex // serialises the store-full alarm bookkeeping
	full   string     // "" or why the store refuses records (store_full, disk_full)

	fullAlarmPending *contract.Record // a store.full alarm the full disk could not take

	onReady func()
	topics  contract.Topics

	base  *config.Config // as started: file and flags, before the fleet's overrides
	flags func(*config.Config)
	level *slog.LevelVar
	logs  LogTail

	cmdKeys  *command.Keys
	cmdWake  chan struct{}
	cmdStats commandStats

	stopMu  sync.Mutex
	stopFn  func()
	stopErr error

	telMu  sync.Mutex
	telBuf [][]byte // heartbeats kept while offline, stored in batches

	heartbeatFn func(string) func()
	statusFn    func(string)
	readerBeat  func()
}

// New opens the store, prepares the hardware and the broker link. It does not start any loop:
// Run does. On error everything opened so far is closed again.
func New(opts Options) (*Agent, error) {
	cfg := opts.Config
	if cfg == nil {
		return nil, errors.New("agent: no configuration")
	}
	a := &Agent{
		cfg:     cfg,
		log:     opts.Logger,
		version: opts.Version,
		now:     opts.Now,
		synced:  opts.ClockSynced,
		start:   time.Now(),
		bootID:  newID(),
		reader:  opts.Reader,
		ind:     opts.Indicator,
		recent:  newRecentRecords(256),
		onReady: opts.OnReady,
		base:    cfg,
		flags:   opts.Flags,
		level:   opts.LogLevel,
		logs:    opts.Logs,
		cmdWake: make(chan struct{}, 1),

		heartbeatFn: opts.Heartbeat,
		statusFn:    opts.Status,
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.version == "" {
		a.version = "dev"
	}
	built := false
	defer func() {
		if !built {
			a.close()
		}
	}()

	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("agent: data directory: %w", err)
	}
	openStore := func(maxBytes int64) (err error) {
		a.store, err = store.Open(filepath.Join(cfg.DataDir, "station.db"), &store.Options{MaxBytes: maxBytes})
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		return nil
	}
	if err := openStore(int64(cfg.Store.MaxBytes)); err != nil {
		return nil, err
	}
	if rec := a.store.Recovered(); rec != nil {
		a.log.Error("store was broken: moved aside, started a new one", "moved_to", rec.MovedTo, "reason", rec.Reason)
	}
	if ov, err := a.loadOverrides(); err != nil {
		a.log.Error("ignoring the fleet's configuration overrides", "err", err)
	} else if len(ov) > 0 {
		c, err := a.applyOverrides(ov)
		if err != nil {
			a.log.Error("ignoring the fleet's configuration overrides", "err", err)
		} else {
			if c.Store.MaxBytes != cfg.Store.MaxBytes { // the store's cap is set when it opens
				if err := a.store.Close(); err != nil {
					return nil, fmt.Errorf("agent: %w", err)
				}
				if err := openStore(int64(c.Store.MaxBytes)); err != nil {
					return nil, err
				}
			}
			a.cfg, cfg = c, c
			a.log.Info("fleet configuration overrides in force", "keys", flatKeys("", ov))
			if a.level != nil {
				_ = a.level.UnmarshalText([]byte(c.LogLevel))
			}
		}
	}
	if a.synced == nil {
		assume := cfg.Clock.AssumeSynced
		a.synced = func() bool { return assume || kernelClockSynced() }
	}
	a.topics = contract.TopicsFor(cfg.MQTT.TopicPrefix, cfg.StationID)
	var err error
	if a.cmdKeys, err = command.ParseKeys(cfg.Commands.PublicKeys); err != nil {
		return nil, fmt.Errorf("agent: commands.public_keys: %w", err)
	}

	if err := a.setupHardware(); err != nil {
		return nil, err
	}
	a.setupPeripherals()

	brokerURL := cfg.MQTT.Broker
	if brokerURL == config.Embedded {
		addr := opts.EmbeddedAddr
		if addr == "" {
			addr = "127.0.0.1:1883"
		}
		a.broker, err = embedded.Start(addr, nil)
		if err != nil {
			return nil, fmt.Errorf("agent: embedded broker on %s: %w (is another broker running? use --broker)", addr, err)
		}
		brokerURL = a.broker.URL()
		a.log.Info("embedded MQTT broker listening", "addr", a.broker.Addr())
	}
	password := ""
	if cfg.MQTT.PasswordFile != "" {
		b, err := os.ReadFile(cfg.MQTT.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("agent: mqtt.password_file: %w", err)
		}
		password = string(trimNewline(b))
	}
	link, err := mqtt.New(mqtt.Config{
		Broker:         brokerURL,
		ClientID:       cfg.StationID,
		Username:       cfg.MQTT.Username,
		Password:       password,
		CAFile:         cfg.MQTT.CAFile,
		CertFile:       cfg.MQTT.CertFile,
		KeyFile:        cfg.MQTT.KeyFile,
		KeepAlive:      cfg.MQTT.KeepAlive.D(),
		BackoffMax:     cfg.MQTT.BackoffMax.D(),
		Window:         cfg.MQTT.Window,
		StatusTopic:    a.topics.Status,
		Status:         func() []byte { return a.statusPayload(contract.StateOnline, "") },
		WillPayload:    a.offlinePayload(contract.ReasonLost),
		ShutdownStatus: func() []byte { return a.offlinePayload(contract.ReasonShutdown) },
		Streams: []mqtt.Stream{
			{Name: string(store.Events), Topic: a.topics.Events, QoS: 1},
			{Name: string(store.Responses), Topic: a.topics.Resp, QoS: 1},
			{Name: string(store.Telemetry), Topic: a.topics.Telemetry, QoS: 1},
		},
		Subscriptions: []string{a.topics.Cmd, a.topics.FleetCmd},
		Progress:      a.heartbeat("link"),
		OnMessage:     a.onMessage,
		Logger:        a.log.With("component", "mqtt"),
	}, outbox{a.store})
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.link = link
	built = true
	return a, nil
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// Run runs the agent until ctx is cancelled. Cancellation is the normal way to stop and returns
// nil; the link publishes the shutdown status before it returns.
func (a *Agent) Run(ctx context.Context) error {
	defer a.close()

	ln, err := listenSocket(a.cfg.Socket)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.api = newAPIServer(a, ln)

	a.writeBootRecords()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.stopMu.Lock()
	a.stopFn = cancel
	a.stopMu.Unlock()
	var wg sync.WaitGroup
	loops := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"link", a.link.Run},
		{"reader", a.readerLoop},
		{"telemetry", a.telemetryLoop},
		{"status", a.statusLoop},
		{"peripherals", a.peripheralsLoop},
		{"commands", a.commandLoop},
		{"api", a.api.serve},
	}
	errc := make(chan error, len(loops))
	for _, l := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.fn(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("agent: %s: %w", l.name, err)
				cancel()
			}
		}()
	}
	a.log.Info("station agent running", "station_id", a.cfg.StationID, "version", a.version,
		"socket", a.cfg.Socket, "data_dir", a.cfg.DataDir, "broker", a.cfg.MQTT.Broker, "sim", a.cfg.Sim)
	if a.onReady != nil {
		a.onReady()
	}
	<-ctx.Done()
	wg.Wait()
	a.flushTelemetry()
	select {
	case err := <-errc:
		return err
	default:
	}
	a.stopMu.Lock()
	defer a.stopMu.Unlock()
	return a.stopErr
}

// stop ends Run, which then returns err.
func (a *Agent) stop(err error) {
	a.stopMu.Lock()
	defer a.stopMu.Unlock()
	a.stopErr = err
	if a.stopFn != nil {
		a.stopFn()
	}
}

// close releases what New opened, in reverse order. Safe on a partly built Agent.
func (a *Agent) close() {
	if a.sim != nil {
		a.sim.close()
	}
	if a.broker != nil {
		_ = a.broker.Close()
		a.broker = nil
	}
	if a.store != nil {
		if err := a.store.Close(); err != nil {
			a.log.Error("closing store", "err", err)
		}
		a.store = nil
	}
}

// listenSocket listens on the unix socket at path. A socket file left by a dead agent is replaced;
// one a live agent answers on is refused.
func listenSocket(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("local API socket directory: %w", err)
	}
	if _, err := os.Lstat(path); err == nil {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("another agent is already serving %s: stop it first (systemctl stop station)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing stale socket %s: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("local API socket: %w", err)
	}
	// Root and the station group only. The directory (RuntimeDirectory=) is 0750 too.
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("local API socket: %w", err)
	}
	return ln, nil
}
