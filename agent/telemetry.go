package agent

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"sync"
	"time"

	"station.dev/agent/agent/contract"
	"station.dev/agent/store"
)

// telemetryBatch is how many offline heartbeats are kept in memory before they are stored
// together. Stored one by one, each would cost a commit (about 20 KiB written to the SD card);
// together they share one or two. A power cut loses at most this many heartbeats, which are
// evictable anyway.
const telemetryBatch = 30

// telemetryBuffer holds heartbeats made while offline.
type telemetryBuffer struct {
	mu  sync.Mutex
	buf [][]byte
}

func (a *Agent) telemetry() contract.Telemetry {
	ls := a.link.Stats()
	q := a.Queue()
	q.Streams = nil
	return contract.Telemetry{
		TS: rfc3339(a.clk.Now()), ClockSynced: a.synced(), BootID: a.bootID,
		UptimeMS: a.uptime().Milliseconds(), Queue: q,
		Connects: ls.Connects, Failures: ls.Failures, Reader: a.readerHealth(),
		Components: a.components(), Environment: a.environment(), Commands: a.cmds.stats.snapshot(),
		Door: a.doorStatus(),
	}
}

// telemetryLoop publishes a heartbeat every interval. Online it goes straight out at QoS 0 and
// costs no disk write; offline it is kept in the store's evictable telemetry stream and sent when
// the link returns.
func (a *Agent) telemetryLoop(ctx context.Context) error {
	interval := a.cfg.Telemetry.Interval.D()
	// A first heartbeat soon after start, spread so a fleet does not report in lockstep.
	if !a.sleep(ctx, time.Duration(rand.Int64N(int64(interval)/4+1))) {
		return nil
	}
	for {
		a.sendTelemetry()
		if !a.sleep(ctx, interval) {
			return nil
		}
	}
}

func (a *Agent) sendTelemetry() {
	b, err := json.Marshal(a.telemetry())
	if err != nil {
		return
	}
	if a.link.PublishNow(a.topics.Telemetry, b) {
		a.flushTelemetry() // back online: what was kept goes out through the store
		return
	}
	a.tel.mu.Lock()
	a.tel.buf = append(a.tel.buf, b)
	full := len(a.tel.buf) >= telemetryBatch
	a.tel.mu.Unlock()
	if full {
		a.flushTelemetry()
	}
}

// flushTelemetry stores the heartbeats kept while offline, in the order they were made, in one
// transaction (one commit for the batch).
func (a *Agent) flushTelemetry() {
	a.tel.mu.Lock()
	batch := a.tel.buf
	a.tel.buf = nil
	a.tel.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	if _, err := a.store.AppendBatch(store.Telemetry, store.Evictable, batch); err != nil {
		a.log.Warn("keeping telemetry", "err", err)
	}
}
