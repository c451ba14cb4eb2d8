//go:build faults

package faulttest

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"station.dev/agent/internal/stationproc"
	"station.dev/agent/mqtt/brokertest"
)

// connectLog collects, from Mosquitto's log, when each client of the fleet connected.
type connectLog struct {
	prefix string // client ids of the fleet start with it
	mu     sync.Mutex
	at     map[string][]time.Time
}

// line takes one log line: "<time>: New client connected from <addr> as <id> (p2, c0, k30).".
func (c *connectLog) line(at time.Time, line string) {
	i := strings.Index(line, "New client connected from ")
	if i < 0 {
		return
	}
	rest := line[i:]
	j := strings.Index(rest, " as ")
	if j < 0 {
		return
	}
	id := rest[j+4:]
	if k := strings.Index(id, " ("); k >= 0 {
		id = id[:k]
	}
	if !strings.HasPrefix(id, c.prefix) {
		return
	}
	c.mu.Lock()
	c.at[id] = append(c.at[id], at)
	c.mu.Unlock()
}

// firstAfter returns each client's first connect at or after t0.
func (c *connectLog) firstAfter(t0 time.Time) map[string]time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]time.Time{}
	for id, ts := range c.at {
		for _, at := range ts {
			if !at.Before(t0) {
				out[id] = at
				break
			}
		}
	}
	return out
}

// TestFleet runs a fleet of agents against one Mosquitto, restarts the broker after the agents
// have piled up a backlog during the outage, and measures how the fleet comes back: how the
// reconnections spread over time (the agents back off with full jitter, capped at 10s), how long
// until all are online, and the rate at which the broker takes the backlogs. Every record must
// arrive, gap-free per station.
func TestFleet(t *testing.T) {
	n := scale(20, 200)
	const backlog = 500
	const backoffMax = 10 * time.Second
	idPrefix := fmt.Sprintf("fleet-%d-", os.Getpid()%10000)
	conns := &connectLog{prefix: idPrefix, at: map[string][]time.Time{}}
	mq := startMosquitto(t, conns.line)
	prefix := brokertest.UniquePrefix(t)
	obs := observe(t, mq.URL(), prefix+"/+/events")

	// Start the fleet a few at a time: two cores.
	specs := make([]stationproc.Config, n)
	for i := range specs {
		specs[i] = newSpec(t, mq.URL())
		specs[i].StationID = fmt.Sprintf("%s%03d", idPrefix, i)
		specs[i].Prefix = prefix
		specs[i].BackoffMax = backoffMax.String()
	}
	agents := make([]*stationproc.Agent, n)
	start := time.Now()
	parallel(n, 4, func(i int) error {
		a, err := stationproc.Launch(t, specs[i], 2*time.Minute)
		agents[i] = a
		return err
	}, t)
	if !eventually(2*time.Minute, 100*time.Millisecond, func() bool { return len(conns.firstAfter(start)) == n }) {
		t.Fatalf("only %d of %d agents connected", len(conns.firstAfter(start)), n)
	}
	started := time.Since(start)
	var rss, anon int64
	for _, a := range agents {
		m, err := a.Memory()
		if err != nil {
			t.Fatal(err)
		}
		rss += m.RSS
		anon += m.Anon
	}
	t.Logf("%d agents started and online in %s; memory per agent: VmRSS %.1f MiB, RssAnon %.1f MiB (average)",
		n, started.Round(time.Millisecond), mib(rss)/float64(n), mib(anon)/float64(n))

	// The broker goes away; every station records a backlog meanwhile.
	mq.stop()
	down := time.Now()
	var wantMu sync.Mutex
	want := map[string]bool{}
	clients := make([]*http.Client, n)
	for i, a := range agents {
		clients[i] = a.HTTPClient()
	}
	parallel(n*backlog, 8, func(k int) error {
		i := k % n
		tl, code, err := submit(clients[i], "kiosk.receipt", map[string]any{"n": k / n})
		if err != nil || code != http.StatusOK || !tl.OK {
			return fmt.Errorf("agent %d: record %d: status %d, %+v, %v", i, k/n, code, tl, err)
		}
		wantMu.Lock()
		want[tl.ID] = true
		wantMu.Unlock()
		return nil
	}, t)
	filled := time.Since(down)
	t.Logf("%d records in the backlogs in %s", len(want), filled.Round(time.Millisecond))
	// Long enough down that every agent's backoff has reached its cap (1s, doubling, 10s).
	if rest := time.Duration(scale(2, 3))*backoffMax - filled; rest > 0 {
		<-time.After(rest) // the outage itself: nothing to wait for but its length
	}

	// The broker comes back.
	mq.start()
	t0 := mq.readyAt()
	if !eventually(3*backoffMax+time.Minute, 100*time.Millisecond, func() bool { return len(conns.firstAfter(t0)) == n }) {
		t.Fatalf("only %d of %d agents reconnected", len(conns.firstAfter(t0)), n)
	}
	obs.waitIDs(want, 10*time.Minute)
	drained := time.Since(t0)

	// Reconnection spread.
	first := conns.firstAfter(t0)
	var delays []time.Duration
	var times []time.Time
	for _, at := range first {
		delays = append(delays, at.Sub(t0))
		times = append(times, at)
	}
	perSec := perSecond(t0, times)
	allBack := percentile(delays, 100)
	// Broker-side message rate while the backlogs drain: events delivered per second.
	var evTimes []time.Time
	recs := obs.records()
	for _, r := range recs {
		if !r.At.Before(t0) {
			evTimes = append(evTimes, r.At)
		}
	}
	evPerSec := perSecond(t0, evTimes)
	avgRate := float64(len(evTimes)) / drained.Seconds()
	t.Logf("broker restart: all %d agents back within %s (median %s, p90 %s); connects per second %v",
		n, allBack.Round(time.Millisecond), percentile(delays, 50).Round(time.Millisecond),
		percentile(delays, 90).Round(time.Millisecond), perSec)
	t.Logf("backlogs drained in %s: %d messages, %.0f/s on average, at most %d in one second; per second %v",
		drained.Round(time.Millisecond), len(evTimes), avgRate, maxInt(evPerSec), evPerSec)

	// Every record, gap-free per station.
	byStation := map[string][]stationproc.Record{}
	for _, r := range recs {
		byStation[r.Station] = append(byStation[r.Station], r)
	}
	if len(byStation) != n {
		t.Fatalf("events from %d stations, want %d", len(byStation), n)
	}
	dups := 0
	for _, rs := range byStation {
		stationproc.CheckSeq(t, rs)
		dups += duplicates(rs)
	}
	t.Logf("duplicates on the wire: %d", dups)

	figure(t, "fleet_agents", float64(n), "count")
	figure(t, "fleet_agent_rss", round1(mib(rss)/float64(n)), "MiB")
	figure(t, "fleet_reconnect_all", round1(allBack.Seconds()), "s")
	figure(t, "fleet_reconnect_median", round1(percentile(delays, 50).Seconds()), "s")
	figure(t, "fleet_reconnect_peak", float64(maxInt(perSec)), "connects/s")
	figure(t, "fleet_drain_time", round1(drained.Seconds()), "s")
	figure(t, "fleet_drain_rate_avg", float64(int(avgRate)), "msg/s")
	figure(t, "fleet_drain_rate_peak", float64(maxInt(evPerSec)), "msg/s")

	// Full jitter over a 10s cap: the fleet comes back spread out, not in lockstep, and within
	// the cap (plus the time a loaded machine needs).
	if allBack > backoffMax+15*time.Second {
		t.Errorf("the last agent came back %s after the broker, more than the 10s backoff cap allows", allBack)
	}
	if peak := maxInt(perSec); n >= 20 && peak > n/2 {
		t.Errorf("%d of %d agents reconnected in the same second: no jitter", peak, n)
	}
}

// parallel runs fn(0..n-1) on workers goroutines and fails the test with the first error.
func parallel(n, workers int, fn func(i int) error, t testing.TB) {
	t.Helper()
	jobs := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := fn(i); err != nil {
					errs <- err
					for range jobs { // drain: stop the others
					}
					return
				}
			}
		}()
	}
	go func() {
		defer close(jobs)
		for i := 0; i < n; i++ {
			select {
			case jobs <- i:
			case err := <-errs:
				errs <- err
				return
			}
		}
	}()
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
}
