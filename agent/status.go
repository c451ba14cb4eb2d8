package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"station.dev/agent/agent/contract"
	"station.dev/agent/store"
)

func (a *Agent) queueStatus() contract.QueueStatus {
	st, err := a.store.Stats()
	if err != nil {
		return contract.QueueStatus{}
	}
	now := a.now()
	q := contract.QueueStatus{
		Bytes: st.Bytes, MaxBytes: st.MaxBytes, FileBytes: st.FileBytes,
		Refused: st.Refused, Evicted: st.Evicted, Streams: map[string]contract.StreamStatus{},
	}
	a.fullMu.Lock()
	q.Full, q.FullReason = a.full != "", a.full
	a.fullMu.Unlock()
	for name, s := range st.Streams {
		ss := contract.StreamStatus{Depth: s.Depth, Bytes: s.Bytes, LastSeq: s.LastSeq}
		if !s.Oldest.IsZero() {
			ss.OldestAgeS = max(0, now.Sub(s.Oldest).Seconds())
		}
		q.Streams[string(name)] = ss
		if name == store.Telemetry {
			continue // telemetry is evictable; the queue depth is what must reach the broker
		}
		q.Depth += s.Depth
		q.OldestAgeS = max(q.OldestAgeS, ss.OldestAgeS)
	}
	var fs unix.Statfs_t
	if unix.Statfs(a.cfg.DataDir, &fs) == nil {
		q.DiskFreeByte = uint64(fs.Bavail) * uint64(fs.Bsize)
	}
	return q
}

func (a *Agent) readerHealth() contract.ComponentHealth {
	if h, ok := a.reader.(ReaderHealth); ok {
		return h.Health()
	}
	if a.reader == nil {
		return contract.ComponentHealth{State: contract.HealthAbsent}
	}
	return contract.ComponentHealth{State: contract.HealthOK}
}

// status builds the full status object.
func (a *Agent) status(state, reason string) contract.Status {
	ls := a.link.Stats()
	s := contract.Status{
		State: state, Reason: reason, StationID: a.cfg.StationID, Version: a.version,
		BootID: a.bootID, Since: rfc3339(a.now().Add(-time.Since(a.start))), TS: rfc3339(a.now()),
		ClockSynced: a.synced(), UptimeMS: time.Since(a.start).Milliseconds(), Sim: a.cfg.Sim,
		Reader: a.readerHealth(), Queue: a.queueStatus(),
		Link: &contract.LinkStatus{
			Broker: a.cfg.MQTT.Broker, Connected: ls.Connected, Connects: ls.Connects,
			Failures: ls.Failures, LastError: ls.LastError, InFlight: ls.InFlight,
			Published: ls.Published, Acked: ls.Acked,
		},
		Components: a.components(), Environment: a.environment(), Indicator: a.indicatorState(),
	}
	if open := a.doorOpen(); open != nil {
		s.Door = &contract.DoorStatus{Open: *open}
	}
	if !ls.Since.IsZero() {
		s.Link.Since = rfc3339(ls.Since)
	}
	return s
}

// statusPayload is the retained online status (without the local-only link block).
func (a *Agent) statusPayload(state, reason string) []byte {
	s := a.status(state, reason)
	s.Link, s.Indicator = nil, nil
	b, _ := json.Marshal(s)
	return b
}

// offlinePayload is the last will (contract.ReasonLost) or the clean-stop status
// (contract.ReasonShutdown).
func (a *Agent) offlinePayload(reason string) []byte {
	b, _ := json.Marshal(contract.Offline{
		State: contract.StateOffline, Reason: reason, StationID: a.cfg.StationID,
		BootID: a.bootID, Version: a.version, TS: rfc3339(a.now()),
	})
	return b
}

// statusKey is what, when it changes, makes the retained status worth republishing.
func (a *Agent) statusKey() string {
	q := a.queueStatus()
	key := a.readerHealth().State
	if q.Full {
		key += "/full"
	}
	if open := a.doorOpen(); open != nil && *open {
		key += "/door-open"
	}
	for name, c := range a.components() {
		key += "/" + name + "=" + c.State
	}
	return key
}

// statusLoop republishes the retained status when something in it changes, and compacts the
// store once a backlog has drained.
func (a *Agent) statusLoop(ctx context.Context) error {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	beat := a.heartbeat("status")
	last := a.statusKey()
	lastLine := ""
	lastCompact := time.Now()
	clock := newClockWatch(a.now(), time.Since(a.start))
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if jump, from, to := clock.observe(a.now(), time.Since(a.start)); jump != 0 {
			a.clockJumped(jump, from, to)
		}
		beat()
		if k := a.statusKey(); k != last {
			last = k
			a.link.UpdateStatus()
		}
		if line := a.statusLine(); line != lastLine && a.statusFn != nil {
			lastLine = line
			a.statusFn(line)
		}
		if time.Since(lastCompact) > time.Hour {
			lastCompact = time.Now()
			if done, err := a.store.CompactIfWasteful(); err != nil {
				a.log.Warn("compacting store", "err", err)
			} else if done {
				a.log.Info("store compacted")
			}
		}
	}
}

// clockJumpThreshold is how far wall time may move against the monotonic clock between two checks
// before it counts as a jump (NTP slews small errors; steps are jumps).
const clockJumpThreshold = 2 * time.Second

// clockWatch notices wall-clock steps (NTP's first sync after a boot at 1970, a manual date -s) by
// comparing elapsed wall time against elapsed monotonic time.
type clockWatch struct {
	wall time.Time     // last wall reading
	mono time.Duration // last monotonic reading
}

func newClockWatch(wall time.Time, mono time.Duration) *clockWatch {
	return &clockWatch{wall: wall.Round(0), mono: mono}
}

// observe takes a wall and a monotonic reading and returns the jump (wall elapsed minus monotonic
// elapsed) if it exceeds the threshold, with the wall time expected and the one found.
func (c *clockWatch) observe(wall time.Time, mono time.Duration) (jump time.Duration, expected, got time.Time) {
	wall = wall.Round(0) // Round(0) strips Go's monotonic reading: compare wall to wall
	expected = c.wall.Add(mono - c.mono)
	c.wall, c.mono = wall, mono
	if d := wall.Sub(expected); d > clockJumpThreshold || d < -clockJumpThreshold {
		return d, expected, wall
	}
	return 0, time.Time{}, time.Time{}
}

// clockJumped writes a clock.jump record so the central side can correct earlier timestamps.
func (a *Agent) clockJumped(jump time.Duration, expected, actual time.Time) {
	a.log.Warn("wall clock jumped", "by", jump, "expected", rfc3339(expected), "now", rfc3339(actual))
	r := a.newRecord(contract.TypeClockJump)
	r.Data = map[string]any{"jump_ms": jump.Milliseconds(), "expected": rfc3339(expected), "now": rfc3339(actual)}
	if _, err := a.appendRecord(r, store.Critical); err != nil {
		a.log.Error("writing clock.jump record", "err", err)
	}
}

// statusLine is the one-line summary for systemd's STATUS=.
func (a *Agent) statusLine() string {
	link := "offline"
	if a.link.Stats().Connected {
		link = "online"
	}
	q := a.queueStatus()
	line := fmt.Sprintf("%s, %d waiting, reader %s", link, q.Depth, a.readerHealth().State)
	if q.Full {
		line += ", STORE FULL"
	}
	return line
}

func (a *Agent) telemetry() contract.Telemetry {
	ls := a.link.Stats()
	q := a.queueStatus()
	q.Streams = nil
	t := contract.Telemetry{
		TS: rfc3339(a.now()), ClockSynced: a.synced(), BootID: a.bootID,
		UptimeMS: time.Since(a.start).Milliseconds(), Queue: q,
		Connects: ls.Connects, Failures: ls.Failures, Reader: a.readerHealth(),
		Components: a.components(), Environment: a.environment(), Commands: a.cmdStats.snapshot(),
	}
	if open := a.doorOpen(); open != nil {
		t.Door = &contract.DoorStatus{Open: *open}
	}
	return t
}

// telemetryLoop publishes a heartbeat every interval. Online it goes straight out at QoS 0 and
// costs no disk write; offline it is kept in the store's evictable telemetry stream and sent when
// the link returns.
func (a *Agent) telemetryLoop(ctx context.Context) error {
	interval := a.cfg.Telemetry.Interval.D()
	// A first heartbeat soon after start, spread so a fleet does not report in lockstep.
	first := time.NewTimer(time.Duration(rand.Int64N(int64(interval)/4 + 1)))
	defer first.Stop()
	select {
	case <-ctx.Done():
		return nil
	case <-first.C:
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		a.sendTelemetry()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
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
	a.telMu.Lock()
	a.telBuf = append(a.telBuf, b)
	full := len(a.telBuf) >= telemetryBatch
	a.telMu.Unlock()
	if full {
		a.flushTelemetry()
	}
}

// telemetryBatch is how many offline heartbeats are kept in memory before they are stored
// together. Stored one by one, each would cost a commit (about 20 KiB written to the SD card);
// together they share one or two. A power cut loses at most this many heartbeats, which are
// evictable anyway.
const telemetryBatch = 30

// flushTelemetry stores the heartbeats kept while offline. The appends are made at once so the
// store's group commit writes them together.
func (a *Agent) flushTelemetry() {
	a.telMu.Lock()
	batch := a.telBuf
	a.telBuf = nil
	a.telMu.Unlock()
	if len(batch) == 0 {
		return
	}
	var wg sync.WaitGroup
	for _, b := range batch {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := a.store.Append(store.Telemetry, store.Evictable, func(uint64) ([]byte, error) { return b, nil }); err != nil {
				a.log.Warn("keeping telemetry", "err", err)
			}
		}()
	}
	wg.Wait()
}

// kernelClockSynced asks the kernel whether NTP has synchronised the clock (adjtimex STA_UNSYNC).
func kernelClockSynced() bool {
	var tx unix.Timex
	state, err := unix.Adjtimex(&tx)
	if err != nil {
		return false
	}
	return state != unix.TIME_ERROR && tx.Status&unix.STA_UNSYNC == 0
}

// backoff is exponential backoff with full jitter.
type backoff struct {
	min, max, cur time.Duration
}

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max, cur: min} }

func (b *backoff) next() time.Duration {
	d := time.Duration(rand.Int64N(int64(b.cur)) + 1)
	b.cur = min(b.cur*2, b.max)
	return d
}

func (b *backoff) reset() { b.cur = b.min }
