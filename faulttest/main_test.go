//go:build faults

package faulttest

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"station.dev/agent/internal/stationproc"
)

func TestMain(m *testing.M) {
	if os.Getenv("STATION_FAULTS_RACE") == "1" {
		stationproc.Race = true
	}
	stationproc.Tags = "faults" // the agent's fault points (agent/fault_faults.go), inert unless asked for
	os.Exit(stationproc.Main(m))
}

// newRand returns the random source of a test, seeded from STATION_FAULTS_SEED or the clock, and
// logs the seed so that a failure can be replayed.
func newRand(t testing.TB) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("STATION_FAULTS_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("STATION_FAULTS_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("random seed %d (STATION_FAULTS_SEED=%d replays it)", seed, seed)
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

// scale picks the bounded figure under -short and the full one otherwise.
func scale(short, full int) int {
	if testing.Short() {
		return short
	}
	return full
}

var figureMu sync.Mutex

// figure reports one measured figure: in the test log, and as a "name value unit" line in the
// file STATION_FAULTS_FIGURES names, if any.
func figure(t testing.TB, name string, value float64, unit string) {
	t.Helper()
	line := fmt.Sprintf("%s %s %s", name, strconv.FormatFloat(value, 'f', -1, 64), unit)
	t.Log("figure: " + line)
	path := os.Getenv("STATION_FAULTS_FIGURES")
	if path == "" {
		return
	}
	figureMu.Lock()
	defer figureMu.Unlock()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Errorf("figures file: %v", err)
		return
	}
	defer f.Close()
	if _, err := fmt.Fprintln(f, line); err != nil {
		t.Errorf("figures file: %v", err)
	}
}

// eventually polls cond every interval until it holds or timeout passes, for states that only a
// poll can observe (another process's status, its memory). It reports whether cond held.
func eventually(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// round1 rounds to one decimal.
func round1(x float64) float64 { return float64(int64(x*10+0.5)) / 10 }
