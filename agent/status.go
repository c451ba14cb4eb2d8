package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"station.dev/agent/agent/contract"
	"station.dev/agent/store"
)

// Queue summarises the store (the local API's GET queue).
func (a *Agent) Queue() contract.QueueStatus {
	st, err := a.store.Stats()
	if err != nil {
		return contract.QueueStatus{}
	}
	now := a.clk.Now()
	q := contract.QueueStatus{
		Bytes: st.Bytes, MaxBytes: st.MaxBytes, FileBytes: st.FileBytes,
		Refused: st.Refused, Evicted: st.Evicted, Streams: map[string]contract.StreamStatus{},
	}
	q.FullReason = a.full.get()
	q.Full = q.FullReason != ""
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
	if files, err := a.store.BrokenFiles(); err == nil {
		for _, f := range files {
			q.BrokenFiles++
			q.BrokenBytes += f.Bytes
		}
	}
	var fs unix.Statfs_t
	if unix.Statfs(a.cfg.DataDir, &fs) == nil {
		q.DiskFreeByte = uint64(fs.Bavail) * uint64(fs.Bsize)
	}
	return q
}

// status builds the full status object.
func (a *Agent) status(state, reason string) contract.Status {
	ls := a.link.Stats()
	now := a.clk.Now()
	up := a.uptime()
	s := contract.Status{
		State: state, Reason: reason, StationID: a.cfg.StationID, Version: a.opts.Version,
		BootID: a.bootID, Since: rfc3339(now.Add(-up)), TS: rfc3339(now),
		ClockSynced: a.synced(), UptimeMS: up.Milliseconds(), Sim: a.cfg.Sim,
		Reader: a.readerHealth(), Queue: a.Queue(),
		Link: &contract.LinkStatus{
			Broker: a.cfg.MQTT.Broker, Connected: ls.Connected, Connects: ls.Connects,
			Failures: ls.Failures, LastError: ls.LastError, InFlight: ls.InFlight,
			Published: ls.Published, Acked: ls.Acked, Alarm: ls.Alarm,
		},
		Components: a.components(), Environment: a.environment(), Indicator: a.indicatorState(),
		Door: a.doorStatus(), Insecure: a.cfg.Insecure(a.keys().Len()), Update: a.updateStatus(),
	}
	if !ls.Since.IsZero() {
		s.Link.Since = rfc3339(ls.Since)
	}
	if ls.Alarm != "" {
		// In the retained status too: the broker may still take it while it drops records.
		if s.Components == nil {
			s.Components = map[string]contract.ComponentHealth{}
		}
		s.Components[linkComponent] = contract.ComponentHealth{State: contract.HealthDegraded, Detail: "records not delivered: kept on the station", LastError: ls.Alarm}
	}
	return s
}

// statusPayload is the retained online status (without the local-only link and indicator).
func (a *Agent) statusPayload() []byte {
	a.publishedKey.Store(a.statusKey()) // what the broker will hold: the loop compares with it
	s := a.status(contract.StateOnline, "")
	s.Link, s.Indicator = nil, nil
	b, _ := json.Marshal(s)
	return b
}

// offlinePayload is the last will (contract.ReasonLost) or the clean-stop status
// (contract.ReasonShutdown).
func (a *Agent) offlinePayload(reason string) []byte {
	b, _ := json.Marshal(contract.Offline{
		State: contract.StateOffline, Reason: reason, StationID: a.cfg.StationID,
		BootID: a.bootID, Version: a.opts.Version, TS: rfc3339(a.clk.Now()),
	})
	return b
}

// linkComponent names the broker link among the status's components when it raises an alarm.
const linkComponent = "broker_link"

// statusKey is what, when it changes, makes the retained status worth republishing.
func (a *Agent) statusKey() string {
	var b strings.Builder
	b.WriteString(a.readerHealth().State)
	if a.full.get() != "" {
		b.WriteString("/full")
	}
	if d := a.doorStatus(); d != nil && d.Open {
		b.WriteString("/door-open")
	}
	if a.link.Stats().Alarm != "" {
		b.WriteString("/link-alarm")
	}
	comps := a.components()
	for _, name := range slices.Sorted(maps.Keys(comps)) {
		b.WriteString("/" + name + "=" + comps[name].State)
	}
	return b.String()
}

// Status loop timing.
const (
	statusInterval  = 5 * time.Second
	compactInterval = time.Hour
)

// statusLoop republishes the retained status when something in it changes, notices wall-clock
// steps, and compacts the store once a backlog has drained.
func (a *Agent) statusLoop(ctx context.Context) error {
	beat := a.heartbeat("status")
	lastLine := ""
	lastCompact := a.clk.Monotonic()
	clock := newClockWatch(a.clk.Now(), a.clk.Monotonic())
	for a.sleep(ctx, statusInterval) {
		if jump, from, to := clock.observe(a.clk.Now(), a.clk.Monotonic()); jump != 0 {
			a.clockJumped(jump, from, to)
		}
		beat()
		// Compared with the status the link last published (on connect or on request), not with
		// an earlier reading of the loop's: a change already published at connect is not
		// published again, and a change made while away goes out once.
		if k, _ := a.publishedKey.Load().(string); a.statusKey() != k {
			a.link.UpdateStatus()
		}
		if line := a.statusLine(); line != lastLine && a.opts.Status != nil {
			lastLine = line
			a.opts.Status(line)
		}
		if now := a.clk.Monotonic(); now-lastCompact > compactInterval {
			lastCompact = now
			if done, err := a.store.CompactIfWasteful(); err != nil {
				a.log.Warn("compacting store", "err", err)
			} else if done {
				a.log.Info("store compacted")
			}
		}
	}
	return nil
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
	q := a.Queue()
	line := fmt.Sprintf("%s, %d waiting, reader %s", link, q.Depth, a.readerHealth().State)
	if q.Full {
		line += ", STORE FULL"
	}
	if a.link.Stats().Alarm != "" {
		line += ", BROKER DROPS RECORDS"
	}
	return line
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
