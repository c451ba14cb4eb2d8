package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"station.dev/agent/agent"
	"station.dev/agent/agent/config"
	"station.dev/agent/agent/localapi"
	"station.dev/agent/systemd"
)

// runFlags are the flags of `station run`; they override the config file.
type runFlags struct {
	config, broker, dataDir, stationID, socket, logLevel string
	sim                                                  bool
}

func (f *runFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.config, "config", "", "configuration `file` (TOML)")
	fs.BoolVar(&f.sim, "sim", false, "emulated hardware; with no broker configured, an embedded broker")
	fs.StringVar(&f.broker, "broker", "", "broker `URL` (tcp://host:port, tls://host:port) or embedded")
	fs.StringVar(&f.dataDir, "data-dir", "", "`dir`ectory of the local store")
	fs.StringVar(&f.stationID, "station-id", "", "station `id`")
	fs.StringVar(&f.socket, "socket", "", "local API socket `path`")
	fs.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error")
}

// loadConfig reads the config file (if any), applies flags and normalises.
func (f *runFlags) loadConfig() (*config.Config, error) {
	cfg := &config.Config{}
	if f.config != "" {
		c, err := config.Load(f.config)
		if err != nil {
			return nil, err
		}
		cfg = c
	}
	f.apply(cfg)
	if err := cfg.Normalize(); err != nil {
		return nil, err
	}
	if cfg.Socket == "" {
		cfg.Socket = config.DefaultSocket()
	}
	return cfg, nil
}

// apply lays the flags over a configuration.
func (f *runFlags) apply(cfg *config.Config) {
	cfg.Sim = f.sim
	for _, o := range []struct {
		v   string
		dst *string
	}{
		{f.broker, &cfg.MQTT.Broker}, {f.dataDir, &cfg.DataDir}, {f.stationID, &cfg.StationID},
		{f.socket, &cfg.Socket}, {f.logLevel, &cfg.LogLevel},
	} {
		if o.v != "" {
			*o.dst = o.v
		}
	}
}

// errRestart makes the process exit with status 75 (EX_TEMPFAIL) after a fleet restart command;
// systemd's Restart=always starts it again.
var errRestart = errors.New("restart requested")

func cmdRun(args []string, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var f runFlags
	f.register(fs)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	cfg, err := f.loadConfig()
	if err != nil {
		return err
	}
	if err := launch(cfg.DataDir, stderr); err != nil {
		return err
	}
	ring := agent.NewLogRing(500)
	logger, level := newLogger(io.MultiWriter(stderr, ring))
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return fmt.Errorf("log level: %w", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// systemd: READY once the store is open and the socket listens, STATUS lines, and watchdog
	// pings only while every main loop makes progress. All no-ops outside systemd.
	notifier, err := systemd.NewNotifier()
	if err != nil {
		logger.Warn("systemd notify socket", "err", err)
	}
	interval, err := systemd.WatchdogInterval()
	if err != nil {
		logger.Warn("systemd watchdog", "err", err)
	}
	wd := systemd.NewWatchdog(notifier, &systemd.WatchdogOptions{
		Interval: interval,
		OnStuck: func(stuck []string) {
			if stuck != nil {
				logger.Error("main loop stuck: watchdog pings stopped, systemd will restart the agent", "loops", stuck)
			}
		},
		OnError: func(err error) { logger.Warn("systemd watchdog ping", "err", err) },
	})
	go func() { _ = wd.Run(ctx) }()

	st, err := assemble(cfg, f.apply, agent.Options{
		Version:   version,
		BuildTime: buildTime(),
		Flags:     f.apply,
		LogLevel:  level,
		Logs:      ring,
		Heartbeat: func(name string) func() { return wd.Register(name).Beat },
		Status:    func(line string) { _ = notifier.Status(line) },
		OnReady:   func() { _ = notifier.Ready() },
		Stuck:     wd.Stuck,
	}, logger)
	if err != nil {
		return err
	}
	defer st.close(logger)
	ln, err := localapi.Listen(st.cfg.Socket)
	if err != nil {
		return err
	}
	defer func() { _ = notifier.Stopping() }()
	if err := st.agent.Run(ctx, ln); errors.Is(err, agent.ErrRestart) {
		logger.Info("station agent stopping for a restart")
		return errRestart
	} else if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	logger.Info("station agent stopped")
	return nil
}

// newLogger logs to stderr. Under journald (JOURNAL_STREAM set) each line carries a syslog
// priority prefix and no timestamp, since the journal stamps lines itself.
func newLogger(w io.Writer) (*slog.Logger, *slog.LevelVar) {
	level := new(slog.LevelVar)
	opts := &slog.HandlerOptions{Level: level}
	if os.Getenv("JOURNAL_STREAM") != "" {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
		pw := &prefixWriter{w: w}
		return slog.New(&journalHandler{Handler: slog.NewTextHandler(pw, opts), pw: pw}), level
	}
	return slog.New(slog.NewTextHandler(w, opts)), level
}
