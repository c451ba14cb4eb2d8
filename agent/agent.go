// Package agent joins the station's parts: card reader -> record -> store -> broker link, plus
// status, telemetry, fleet commands and the local API's answers. It takes its parts already
// built (store, link, hardware, clock, logger, configuration: cmd/station assembles them) and
// depends on small interfaces of its own, so tests put fakes where hardware would be.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"station.dev/agent/agent/command"
	"station.dev/agent/agent/config"
	"station.dev/agent/agent/contract"
	"station.dev/agent/agent/localapi"
	"station.dev/agent/internal/clock"
	"station.dev/agent/store"
)

// Parts are what the agent is made of, built by the caller.
type Parts struct {
	// Config is the effective configuration: the file, the fleet's overrides, the flags.
	Config *config.Config
	// Base is the configuration before the fleet's overrides (file and flags): config.set lays
	// new overrides over it. Nil means Config.
	Base *config.Config
	// Store is the open store; the caller closes it after Run returns.
	Store *store.Store
	// Link builds the broker link from the agent's side of it (see MQTTLink).
	Link func(LinkHooks) (Link, error)
	// Hardware opens the station's parts; the caller closes it after Run returns.
	Hardware Hardware
	// Clock is the time source; nil means the system clock.
	Clock clock.Clock
	// ClockSynced reports whether the wall clock is trustworthy; nil asks the kernel (or trusts
	// it when [clock] assume_synced is set).
	ClockSynced func() bool
	// Logger receives the agent's log; nil means quiet.
	Logger *slog.Logger
	// Updates connects to where update artifacts are fetched (the broker); nil refuses
	// downloads.
	Updates func(ctx context.Context) (ChunkFetcher, error)
}

// Options are the agent's ties to the process around it. All are optional.
type Options struct {
	// Version is the agent's version, in status and boot records.
	Version string
	// Flags re-applies the command-line flags, which win over the fleet's overrides.
	Flags func(*config.Config)
	// LogLevel lets the fleet change the log level at run time (log.level, config.set).
	LogLevel *slog.LevelVar
	// Logs serves the logs.tail command.
	Logs LogTail
	// Heartbeat registers a main loop with the service watchdog and returns the function the
	// loop calls each time it makes progress.
	Heartbeat func(name string) (beat func())
	// Status receives a one-line summary whenever it changes (systemd STATUS=).
	Status func(line string)
	// OnReady is called once the local API listens.
	OnReady func()
	// Stuck names the main loops that stopped making progress (the service watchdog); a new
	// version is not healthy while any is stuck. Nil: not checked.
	Stuck func() []string
	// BootID is the agent's boot id; "" makes a new one. The assembly makes it before it opens
	// the store, whose store.recovered alarm carries it (see RecoveryAlarm).
	BootID string
	// BuildTime is when the agent was built: the trusted time never goes below it. Zero means
	// unknown.
	BuildTime time.Time
}

// LogTail returns the last lines logged.
type LogTail interface {
	Tail(n int) []string
}

// ErrRestart is returned by Run when a fleet command asked the agent to restart.
var ErrRestart = errors.New("agent: restart requested by a fleet command")

// Agent is the running station agent.
type Agent struct {
	publishedKey atomic.Value // statusKey of the last online status built for the link

	cfg    *config.Config
	base   *config.Config
	opts   Options
	log    *slog.Logger
	clk    clock.Clock
	synced func() bool
	mono0  time.Duration // the clock's monotonic reading at start, for uptime
	bootID string
	topics contract.Topics

	store *store.Store
	link  Link
	hw    Hardware

	reader  readerSlot
	recent  *recentRecords
	full    fullState
	periph  *peripherals
	cmds    commandState
	trust   *trustedTime
	hostile *rateLog // log lines about hostile or malformed input, rate-limited
	tel     telemetryBuffer
	sim     *simTaps // nil unless the hardware is emulated
	upd     *updater
	fetcher func(context.Context) (ChunkFetcher, error)
	stopRun func(error)

	keySource string // where the command keys in force come from
}

// New makes an agent of parts. It starts nothing: Run does.
func New(p Parts, o Options) (*Agent, error) {
	cfg := p.Config
	switch {
	case cfg == nil:
		return nil, errors.New("agent: no configuration")
	case p.Store == nil:
		return nil, errors.New("agent: no store")
	case p.Link == nil:
		return nil, errors.New("agent: no broker link")
	}
	a := &Agent{
		cfg: cfg, base: p.Base, opts: o, log: p.Logger, clk: p.Clock, synced: p.ClockSynced,
		bootID: newID(), topics: contract.TopicsFor(cfg.MQTT.TopicPrefix, cfg.StationID),
		store: p.Store, hw: p.Hardware, recent: newRecentRecords(256),
	}
	if o.BootID != "" {
		a.bootID = o.BootID
	}
	if a.base == nil {
		a.base = cfg
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.clk == nil {
		a.clk = clock.System
	}
	if a.synced == nil {
		assume := cfg.Clock.AssumeSynced
		a.synced = func() bool { return assume || kernelClockSynced() }
	}
	if a.opts.Version == "" {
		a.opts.Version = "dev"
	}
	a.mono0 = a.clk.Monotonic()
	pub, source := cfg.Commands.PublicKeys, "the configuration file"
	if set, ok, err := config.ReadKeys(config.KeysPath(cfg.DataDir)); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	} else if ok {
		pub, source = set, config.KeysPath(cfg.DataDir)+" (set by keys.set)"
	}
	keys, err := command.ParseKeys(pub)
	if err != nil {
		return nil, fmt.Errorf("agent: commands.public_keys: %w", err)
	}
	a.cmds.wake = make(chan struct{}, 1)
	a.cmds.keys.Store(keys)
	a.keySource = source
	a.hostile = newRateLog(a.log, a.clk, 10, time.Minute)
	if a.trust, err = newTrustedTime(p.Store, a.clk.Now, a.synced, o.BuildTime); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if a.upd, err = newUpdater(cfg.Update.PublicKeys); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.fetcher = p.Updates
	a.periph = newPeripherals(p.Hardware)
	if p.Hardware.Sim != nil {
		a.sim = newSimTaps(p.Hardware.Sim)
	}
	if a.link, err = p.Link(a.linkHooks()); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return a, nil
}

// heartbeat registers a loop with the watchdog; without one it returns a no-op.
func (a *Agent) heartbeat(name string) func() {
	if a.opts.Heartbeat == nil {
		return func() {}
	}
	return a.opts.Heartbeat(name)
}

// Run serves the local API on ln and runs the agent's loops until ctx is cancelled (the normal
// way to stop: Run then returns nil) or a loop fails. The link publishes the shutdown status
// before Run returns. Run closes ln.
func (a *Agent) Run(ctx context.Context, ln net.Listener) error {
	a.writeBootRecords()

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	a.stopRun = cancel
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
		{"update", a.updateLoop},
		{"api", func(ctx context.Context) error {
			return localapi.Serve(ctx, ln, localapi.NewHandler(a, a.apiOptions()))
		}},
	}
	var wg sync.WaitGroup
	for _, l := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.fn(ctx); err != nil && ctx.Err() == nil {
				cancel(fmt.Errorf("agent: %s: %w", l.name, err))
			}
		}()
	}
	a.log.Info("station agent running", "station_id", a.cfg.StationID, "version", a.opts.Version,
		"socket", a.cfg.Socket, "data_dir", a.cfg.DataDir, "broker", a.cfg.MQTT.Broker, "sim", a.cfg.Sim)
	for _, w := range a.cfg.Insecure(a.keys().Len()) {
		a.log.Warn("INSECURE: " + w)
	}
	if a.opts.OnReady != nil {
		a.opts.OnReady()
	}
	<-ctx.Done()
	wg.Wait()
	a.flushTelemetry()
	if err := context.Cause(ctx); !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// stop ends Run, which then returns err.
func (a *Agent) stop(err error) {
	if a.stopRun != nil {
		a.stopRun(err)
	}
}
