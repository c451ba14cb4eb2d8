package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"syscall"

	"station.dev/agent/agent"
	"station.dev/agent/agent/config"
	"station.dev/agent/internal/release"
	"station.dev/agent/mqtt/operator"
)

// The launcher: the packaged `station run` starts the newest committed or pending version
// installed under <data_dir>/versions (see internal/release.Decide) by exec, in place, so the
// service manager keeps watching the same process (Type=notify, the watchdog). It never
// rewrites itself and writes nothing outside the data directory: a `dpkg -i` of a newer package
// still wins, and the service's ProtectSystem=strict holds. A start of the pending version is
// counted before the exec: when the new file exits, is killed or is not a program at all, the
// supervisor's restarts count up to release.MaxAttempts and the next start runs the previous
// version.

// envLaunched holds the version the launcher exec'd: that process runs as itself and does not
// launch again.
const envLaunched = "STATION_LAUNCHED"

// launch execs the version to run, if it is not this one. It returns nil to run this binary,
// and an error only when a pending version could not be exec'd (the start is counted: the
// supervisor's next start tries again or rolls back).
func launch(dataDir string, stderr io.Writer) error {
	if os.Getenv(envLaunched) != "" {
		return nil
	}
	st, err := release.ReadState(dataDir)
	if err != nil {
		fmt.Fprintf(stderr, "station: %s: starting the packaged version %s\n", oneLine(err.Error()), version)
		return nil
	}
	installed := func(v string) bool {
		fi, err := os.Stat(release.BinaryPath(dataDir, v))
		return err == nil && fi.Mode().IsRegular()
	}
	run, next, changed := release.Decide(st, version, installed)
	if changed {
		if err := release.WriteState(dataDir, next); err != nil {
			// Without the attempt counted a broken version could run for ever: run this one.
			fmt.Fprintf(stderr, "station: %s: starting the packaged version %s\n", oneLine(err.Error()), version)
			return nil
		}
	}
	if run == "" {
		return nil
	}
	path := release.BinaryPath(dataDir, run)
	env := append(os.Environ(), envLaunched+"="+run)
	err = syscall.Exec(path, append([]string{path}, os.Args[1:]...), env)
	if run == next.Pending {
		return fmt.Errorf("starting version %s (%s): %w: the next start tries again, and after %d the previous version runs",
			run, path, err, release.MaxAttempts)
	}
	fmt.Fprintf(stderr, "station: starting version %s (%s): %v: starting the packaged version %s\n", run, path, err, version)
	return nil
}

// updateFetcher dials the broker for update downloads: a connection of its own (client id
// {station_id}.update, clean session) with the link's credentials, so a download never holds up
// records.
func updateFetcher(cfg *config.Config, brokerURL, password string, log *slog.Logger) func(context.Context) (agent.ChunkFetcher, error) {
	return func(ctx context.Context) (agent.ChunkFetcher, error) {
		return operator.Dial(ctx, operator.Options{
			Broker: brokerURL, ClientID: cfg.StationID + ".update", Username: cfg.MQTT.Username, Password: password,
			CAFile: cfg.MQTT.CAFile, CertFile: cfg.MQTT.CertFile, KeyFile: cfg.MQTT.KeyFile,
			KeepAlive: cfg.MQTT.KeepAlive.D(), Logger: log.With("component", "update"),
		})
	}
}
