// Command station-bench measures the station agent against the targets of BENCHMARKS.md.
//
//	go run ./cmd/station-bench [-quick] [-dir DIR]
//
// It builds the station binary, starts a Mosquitto of its own on a free loopback port, runs the
// agent (`station run --sim`) through each measurement and prints one `name value unit` line
// per figure on stdout; progress, the machine and a summary against the targets go to stderr.
// Everything it starts (agents, Mosquitto, probe processes) is stopped and its work directory
// removed when it ends, on error and on Ctrl-C too. It sends traffic only to 127.0.0.1.
//
// The baselines (bare paho, bare bbolt) and the MQTT subscriber that observes the broker run
// in a probe process: the package's test binary, built with `go test -c` and dispatched by
// TestMain (baseline_test.go). Only store/ may import bbolt and only mqtt/ may import paho in
// the module's non-test code, so the probe's code lives in a _test.go file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	quick bool
	dir   string
	keep  bool
	only  map[string]bool // phases to run (with build and mosquitto); nil: all
}

func main() {
	var o options
	flag.BoolVar(&o.quick, "quick", false, "smaller runs (100k backlog, fewer samples): well under 3 minutes")
	flag.StringVar(&o.dir, "dir", "", "parent of the work `directory` (default: the system temp dir); "+
		"it must be on the disk to measure and not a tmpfs")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (logs, stores) instead of removing it")
	only := flag.String("only", "", "run only these `phases` (comma-separated): "+strings.Join(phaseNames, ","))
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: go run ./cmd/station-bench [-quick] [-dir DIR] [-keep] [-only PHASES]\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if *only != "" {
		o.only = map[string]bool{}
		for _, p := range strings.Split(*only, ",") {
			if !slices.Contains(phaseNames, p) {
				fmt.Fprintf(os.Stderr, "station-bench: unknown phase %q (phases: %s)\n", p, strings.Join(phaseNames, ","))
				os.Exit(2)
			}
			o.only[p] = true
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "station-bench:", err)
		os.Exit(1)
	}
}

// Run-time bounds: the whole run is cancelled when they pass.
const (
	quickBudget = 170 * time.Second
	fullBudget  = 14 * time.Minute
)

// phaseNames are the measurements -only may select.
var phaseNames = []string{"size", "online", "idle", "append", "taps", "submit", "telemetry", "drain", "backlog"}

// run measures everything and prints the figures on stdout.
func run(ctx context.Context, o options, stdout, stderr io.Writer) (err error) {
	budget := fullBudget
	if o.quick {
		budget = quickBudget
	}
	ctx, cancel := context.WithTimeoutCause(ctx, budget,
		fmt.Errorf("the run took longer than its %v budget", budget))
	defer cancel()

	b, err := newBench(ctx, o, stdout, stderr)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := b.cleanup(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r) // cleanup still runs
		}
	}()

	b.machine()
	phases := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"build", b.build},
		{"mosquitto", b.startMosquitto},
		{"size", b.binarySize},
		{"online", b.startToOnline},
		{"idle", b.idle},
		{"append", b.appendVsBolt},
		{"taps", b.taps},
		{"submit", b.submit},
		{"telemetry", b.telemetryDisk},
		{"drain", b.drainVsPaho},
		{"backlog", b.backlog},
	}
	var failed []string
	for i, ph := range phases {
		if i >= 2 && o.only != nil && !o.only[ph.name] {
			continue
		}
		if ctx.Err() != nil {
			return fmt.Errorf("stopped before %s: %w", ph.name, context.Cause(ctx))
		}
		b.progress("== %s", ph.name)
		t0 := time.Now()
		if err := ph.fn(ctx); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%s: %w (%v)", ph.name, err, context.Cause(ctx))
			}
			b.progress("%s FAILED: %v", ph.name, err)
			failed = append(failed, ph.name)
			if i < 2 { // nothing works without the binaries and the broker
				return fmt.Errorf("%s: %w", ph.name, err)
			}
			continue
		}
		b.progress("   %s done in %.1fs", ph.name, time.Since(t0).Seconds())
	}
	b.summary()
	if len(failed) > 0 {
		return fmt.Errorf("measurements failed: %v (see above)", failed)
	}
	return nil
}
