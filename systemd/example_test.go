package systemd_test

import (
	"context"
	"log/slog"
	"time"

	"station.dev/agent/systemd"
)

// The agent's start-up: the watchdog runs from before READY=1, each main loop beats on every
// turn and from a ticker while it waits, and the notifier reports readiness and status.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.Default()

	n, err := systemd.NewNotifier()
	if err != nil {
		log.Warn("systemd notifications off", "err", err)
	}
	interval, err := systemd.WatchdogInterval()
	if err != nil {
		log.Warn("systemd watchdog off", "err", err)
	}
	w := systemd.NewWatchdog(n, &systemd.WatchdogOptions{
		Interval: interval,
		OnStuck: func(stuck []string) {
			if stuck != nil {
				log.Error("main loop stuck: no more watchdog pings", "loops", stuck)
			}
		},
		OnError: func(err error) { log.Warn("watchdog ping", "err", err) },
	})

	hb := w.Register("reader")
	go func() {
		defer hb.Stop()
		idle := time.NewTicker(max(w.MaxAge()/2, time.Second))
		defer idle.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-idle.C:
			}
			hb.Beat() // after each poll of the reader, and while idle
		}
	}()
	go w.Run(ctx)

	// … open the store, listen on the local socket …
	_ = n.Ready()
	_ = n.Status("online; queue 0")

	// … on SIGTERM:
	_ = n.Stopping()
}
