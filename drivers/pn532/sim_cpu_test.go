//go:build unix

package pn532

import (
	"context"
	"syscall"
	"testing"
	"time"
)

func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkIdlePoll measures what a reader polling an empty field of the
// emulated chip costs, as the process's CPU time over wall time (%cpu), with
// the default options (MaxRetries 2: an empty poll takes 30 ms emulated).
func BenchmarkIdlePoll(b *testing.B) {
	for _, cfg := range simConfigs[:2] {
		b.Run(cfg.name, func(b *testing.B) {
			_, d := newSim(b, cfg, nil, func(o *Opts) { o.PollInterval = DefaultOpts.PollInterval })
			ctx := context.Background()
			cpu0, wall0 := cpuTime(b), time.Now()
			for b.Loop() {
				if tg, err := d.InListPassiveTarget(ctx); tg != nil || err != nil {
					b.Fatal(tg, err)
				}
			}
			cpu, wall := cpuTime(b)-cpu0, time.Since(wall0)
			b.ReportMetric(100*cpu.Seconds()/wall.Seconds(), "%cpu")
		})
	}
}
