package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"station.dev/agent/agent/contract"
	"station.dev/agent/internal/stationproc"
)

// pick returns quick in a -quick run, full otherwise.
func pick[T any](b *bench, full, quick T) T {
	if b.o.quick {
		return quick
	}
	return full
}

// pause waits d unless ctx ends first.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// startToOnline measures from the exec of `station run` to the retained "online" status on the
// broker. The runs share one data directory: the first creates the store, the others reopen it
// as after a reboot.
func (b *bench) startToOnline(ctx context.Context) (err error) {
	runs := pick(b, 7, 3)
	id := b.uniqueID("online")
	sub, err := b.subscribe(ctx, contract.Topic(contract.DefaultTopicPrefix, id, contract.KindStatus))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.closeSub(sub)) }()
	spec := agentSpec{id: id, broker: b.broker, dataDir: filepath.Join(b.work, id+".data")}
	var ms []float64
	for i := range runs {
		t0 := monoNow()
		a, err := b.startAgent(spec)
		if err != nil {
			return err
		}
		var m subMsg
		for {
			m, err = sub.next(ctx, 20*time.Second)
			// A retained message is an earlier run's; this run's status comes live.
			if err != nil || !m.Retained && m.State == "online" {
				break
			}
		}
		if err != nil {
			return errors.Join(fmt.Errorf("run %d: %w\n%s", i+1, err, a.Tail(5)), b.stopAgent(a))
		}
		ms = append(ms, float64(m.At-t0)/1e6)
		if err := b.stopAgent(a); err != nil {
			return err
		}
	}
	b.progress("   start to online, ms: %.1f (first run, new store)", ms[0])
	b.progress("   start to online, ms, all runs: %.1f", ms)
	b.emit("start_to_online_ms", median(ms), "ms")
	return nil
}

// idle measures an idle agent (online, reader polling, default telemetry interval): resident
// memory once it has settled and CPU over a window.
func (b *bench) idle(ctx context.Context) (err error) {
	settle := pick(b, 10*time.Second, 5*time.Second)
	window := pick(b, 20*time.Second, 10*time.Second)
	a, err := b.startAgent(agentSpec{id: b.uniqueID("idle"), broker: b.broker})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.stopAgent(a)) }()
	if err := a.waitReady(ctx, 15*time.Second); err != nil {
		return err
	}
	if _, err := a.waitQueue(ctx, 100*time.Millisecond, 15*time.Second, func(q contract.QueueStatus) bool {
		return q.Depth == 0
	}); err != nil {
		return fmt.Errorf("the boot record did not reach the broker: %w", err)
	}
	if err := pause(ctx, settle); err != nil {
		return err
	}
	pid := a.Pid()
	cpu0, err1 := readCPU(pid)
	io0, err2 := readIO(pid)
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	t0 := time.Now()
	sampler := stationproc.SampleMemory(pid, time.Second)
	perr := pause(ctx, window)
	peak, _, serr := sampler.Stop()
	if err := errors.Join(perr, serr); err != nil {
		return err
	}
	cpu1, err1 := readCPU(pid)
	io1, err2 := readIO(pid)
	end, err3 := stationproc.ReadMemory(pid)
	elapsed := time.Since(t0)
	if err := errors.Join(err1, err2, err3); err != nil {
		return err
	}
	b.progress("   idle RSS at the end: VmRSS %.1f MiB (anon %.1f, file %.1f); peak %.1f MiB",
		mib(end.RSS), mib(end.Anon), mib(end.File), mib(peak.RSS))
	b.progress("   idle CPU %v over %v; page cache dirtied (write_bytes) %d B", cpu1-cpu0,
		elapsed.Round(time.Millisecond), io1.WriteBytes-io0.WriteBytes)
	b.emit("rss_idle_mib", mib(end.RSS), "MiB")
	b.emit("rss_idle_anon_mib", mib(end.Anon), "MiB")
	b.emit("cpu_idle_percent", 100*(cpu1-cpu0).Seconds()/elapsed.Seconds(), "%")
	return nil
}

// tapTimes are the timestamps of one tap.
type tapTimes struct {
	start    int64     // CLOCK_MONOTONIC before POST /api/v0/tap
	answer   int64     // when its answer was read
	startW   time.Time // wall clock before the POST, to compare with the record's ts
	id       string
	recorded time.Time // the record's ts: when the agent built it, after the read
	arrived  int64     // when the subscriber received the record; 0 until then
}

// tapSpacing is the least time between the starts of two taps. Stations see a tap every few
// seconds at most; spacing them out of each other's way keeps each record's append and delete
// its own commits, as on a station, instead of sharing them as a burst would.
const tapSpacing = 25 * time.Millisecond

// arrivalLog collects what a subscriber receives: records by id, and the size on the wire of
// every message, to tell the agent's MQTT traffic apart from its store writes.
type arrivalLog struct {
	mu   sync.Mutex
	byID map[string]subMsg
	all  []subMsg      // every message, in order of arrival
	got  chan struct{} // a token after each arrival
	done chan struct{} // closed when the subscriber's output has ended
}

func collectArrivals(sub *subscriber) *arrivalLog {
	l := &arrivalLog{byID: map[string]subMsg{}, got: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for m := range sub.msgs {
			l.mu.Lock()
			l.all = append(l.all, m)
			if _, dup := l.byID[m.ID]; !dup && m.ID != "" {
				l.byID[m.ID] = m
			}
			l.mu.Unlock()
			select {
			case l.got <- struct{}{}:
			default:
			}
		}
	}()
	return l
}

// wireBytes sums the PUBLISH packets that arrived from from to to (CLOCK_MONOTONIC). Retained
// messages delivered on subscribing are not the agent's traffic.
func (l *arrivalLog) wireBytes(from, to int64) (n int64, msgs int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.all {
		if m.At >= from && m.At <= to && !m.Retained {
			n += m.wireBytes()
			msgs++
		}
	}
	return n, msgs
}

// wait fills in the arrival of every tap, waiting at most timeout for the missing ones.
func (l *arrivalLog) wait(ctx context.Context, taps []tapTimes, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		missing := 0
		for i := range taps {
			m, ok := l.byID[taps[i].id]
			if !ok {
				missing++
				continue
			}
			taps[i].arrived = m.At
			taps[i].recorded, _ = time.Parse(time.RFC3339Nano, m.TS)
		}
		l.mu.Unlock()
		if missing == 0 {
			return nil
		}
		select {
		case <-l.got:
		case <-l.done:
			return fmt.Errorf("the subscriber ended with %d records missing", missing)
		case <-deadline.C:
			return fmt.Errorf("%d of %d records did not reach the subscriber in %v", missing, len(taps), timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// taps presents cards one at a time through the local API and times each to its answer (the
// record is durable) and to its arrival at a subscriber on the broker. It also counts the bytes
// the agent wrote to its store per card record (its append and, once the broker has
// acknowledged it, its delete), over several windows of taps.
func (b *bench) taps(ctx context.Context) (err error) {
	windows := pick(b, 4, 3)
	perWindow := pick(b, 100, 50)
	id := b.uniqueID("tap")
	sub, err := b.subscribe(ctx, "stations/"+id+"/#")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.closeSub(sub)) }()
	a, err := b.startAgent(agentSpec{id: id, broker: b.broker})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.stopAgent(a)) }()
	if err := a.waitReady(ctx, 15*time.Second); err != nil {
		return err
	}
	disk, err := newDiskCounter(a.spec.dataDir)
	if err != nil {
		return err
	}
	log := collectArrivals(sub)
	empty := func(q contract.QueueStatus) bool { return q.Depth == 0 }
	if _, err := a.waitQueue(ctx, 50*time.Millisecond, 15*time.Second, empty); err != nil {
		return fmt.Errorf("the boot record did not reach the broker: %w", err)
	}
	var all []tapTimes
	var store, device []float64
	for w := range windows {
		s0, err := a.snap(disk)
		if err != nil {
			return err
		}
		m0 := monoNow()
		taps := make([]tapTimes, 0, perWindow)
		var last time.Time
		for range perWindow {
			if err := pause(ctx, time.Until(last.Add(tapSpacing))); err != nil {
				return err
			}
			t := tapTimes{startW: time.Now(), start: monoNow()}
			last = t.startW
			r, err := a.tap(ctx)
			if err != nil {
				return err
			}
			t.answer = monoNow()
			t.id = r.ID
			taps = append(taps, t)
		}
		// Every record at the subscriber, and deleted from the store.
		if err := log.wait(ctx, taps, 30*time.Second); err != nil {
			return err
		}
		if _, err := a.waitQueue(ctx, 20*time.Millisecond, 30*time.Second, empty); err != nil {
			return err
		}
		s1, err := a.snap(disk)
		if err != nil {
			return err
		}
		mq, msgs := log.wireBytes(m0, monoNow())
		sb := storeBytes(s0, s1, mq)
		store = append(store, float64(sb)/float64(perWindow))
		device = append(device, float64(s1.device-s0.device)/float64(perWindow))
		b.progress("   window %d: %d taps: store %d B (%.0f B per record); %d B on %s's device (all processes); "+
			"MQTT %d B in %d messages; write_bytes %d B",
			w+1, perWindow, sb, float64(sb)/float64(perWindow), s1.device-s0.device, disk.name, mq, msgs,
			s1.io.WriteBytes-s0.io.WriteBytes)
		all = append(all, taps...)
	}
	n := len(all)

	var durable, puback, read []float64
	for _, t := range all {
		durable = append(durable, float64(t.answer-t.start)/1e6)
		puback = append(puback, float64(t.arrived-t.start)/1e6)
		if !t.recorded.IsZero() {
			read = append(read, float64(t.recorded.Sub(t.startW))/1e6)
		}
	}
	durableP50 := percentile(durable, 50)
	b.emit("tap_to_durable_p50_ms", durableP50, "ms")
	b.emit("tap_to_durable_p99_ms", percentile(durable, 99), "ms")
	b.emit("tap_to_puback_p50_ms", percentile(puback, 50), "ms")
	b.emit("tap_to_puback_p99_ms", percentile(puback, 99), "ms")
	// The record's ts is taken when the agent builds the record from the driver's result, just
	// before the store append: from the POST to ts is the emulated chip, the PN532 driver and
	// the EMV read.
	if len(read) == n {
		readP50 := percentile(read, 50)
		b.emit("tap_read_p50_ms", readP50, "ms")
		b.emit("tap_read_p99_ms", percentile(read, 99), "ms")
		b.emit("tap_read_share_percent", 100*readP50/durableP50, "%")
	} else {
		b.note("%d of %d records had no readable ts: tap_read not measured", n-len(read), n)
	}
	if b.appendP50ms > 0 {
		b.emit("tap_store_share_percent", 100*b.appendP50ms/durableP50, "%")
	}
	b.emit("disk_bytes_per_card_record", median(store), "B")
	b.progress("   the device's count per record, least of the windows: %.0f B (journal included; other processes too)",
		slices.Min(device))
	return nil
}

// telemetryDisk counts the bytes the agent writes per telemetry record with a 1 s interval:
// online (published at QoS 0, never stored) and offline (kept in the store's telemetry stream),
// over several windows each.
func (b *bench) telemetryDisk(ctx context.Context) (err error) {
	windows := pick(b, 4, 3)
	window := pick(b, 6*time.Second, 4*time.Second)

	// Online: count the heartbeats a subscriber receives.
	id := b.uniqueID("telemetry")
	sub, err := b.subscribe(ctx, "stations/"+id+"/#")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.closeSub(sub)) }()
	a, err := b.startAgent(agentSpec{id: id, broker: b.broker, telemetry: "1s"})
	if err != nil {
		return err
	}
	stop := func(err error) error { return errors.Join(err, b.stopAgent(a)) }
	if err := a.waitReady(ctx, 15*time.Second); err != nil {
		return stop(err)
	}
	disk, err := newDiskCounter(a.spec.dataDir)
	if err != nil {
		return stop(err)
	}
	log := collectArrivals(sub)
	if _, err := a.waitQueue(ctx, 100*time.Millisecond, 15*time.Second, func(q contract.QueueStatus) bool {
		return q.Depth == 0
	}); err != nil {
		return stop(err)
	}
	heartbeats := func(from, to int64) (n, bytes int) {
		log.mu.Lock()
		defer log.mu.Unlock()
		for _, m := range log.all {
			if m.At >= from && m.At <= to && strings.HasSuffix(m.Topic, "/"+contract.KindTelemetry) {
				n++
				bytes += m.Len
			}
		}
		return n, bytes
	}
	var online []float64
	for range windows {
		s0, err := a.snap(disk)
		if err != nil {
			return stop(err)
		}
		m0 := monoNow()
		if err := pause(ctx, window); err != nil {
			return stop(err)
		}
		s1, err := a.snap(disk)
		if err != nil {
			return stop(err)
		}
		m1 := monoNow()
		count, size := heartbeats(m0, m1)
		if count == 0 {
			return stop(errors.New("online: no telemetry reached the subscriber"))
		}
		mq, _ := log.wireBytes(m0, m1)
		sb := storeBytes(s0, s1, mq)
		online = append(online, float64(sb)/float64(count))
		b.progress("   online window: %d heartbeats of %d B: store %d B; write_bytes %d B; %d B on %s's device (all processes)",
			count, size/count, sb, s1.io.WriteBytes-s0.io.WriteBytes, s1.device-s0.device, disk.name)
	}
	if err := stop(nil); err != nil {
		return err
	}
	b.emit("disk_bytes_per_telemetry_record_online", median(online), "B")

	// Offline: a broker URL where nothing listens; heartbeats go to the store.
	port, err := freePort()
	if err != nil {
		return err
	}
	a, err = b.startAgent(agentSpec{id: b.uniqueID("offline"), broker: fmt.Sprintf("tcp://127.0.0.1:%d", port),
		telemetry: "1s"})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.stopAgent(a)) }()
	if err := a.waitReady(ctx, 15*time.Second); err != nil {
		return err
	}
	// Offline heartbeats are kept in memory and stored in batches (30 by default): each window
	// spans one whole batch.
	depth := func(q contract.QueueStatus) int { return q.Streams["telemetry"].Depth }
	batchWait := 90 * time.Second
	q0, err := a.waitQueue(ctx, 100*time.Millisecond, batchWait, func(q contract.QueueStatus) bool {
		return depth(q) > 0 // the first batch is in: the loop runs
	})
	if err != nil {
		return err
	}
	var offline, device []float64
	for range pick(b, 2, 1) {
		s0, err := a.snap(disk)
		if err != nil {
			return err
		}
		if _, err := a.waitQueue(ctx, 100*time.Millisecond, batchWait, func(q contract.QueueStatus) bool {
			return depth(q) > depth(q0) // the next batch is in
		}); err != nil {
			return err
		}
		q1, err1 := a.queue(ctx)
		s1, err2 := a.snap(disk)
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		stored := depth(q1) - depth(q0)
		if stored <= 0 {
			return errors.New("offline: no telemetry was stored")
		}
		sb := storeBytes(s0, s1, 0) // no broker: no MQTT traffic
		offline = append(offline, float64(sb)/float64(stored))
		device = append(device, float64(s1.device-s0.device)/float64(stored))
		b.progress("   offline window: %d heartbeats stored: store %d B (%.0f B per record); %d B on %s's device (all processes); write_bytes %d B",
			stored, sb, float64(sb)/float64(stored), s1.device-s0.device, disk.name, s1.io.WriteBytes-s0.io.WriteBytes)
		q0 = q1
	}
	b.emit("disk_bytes_per_telemetry_record", median(offline), "B")
	b.progress("   the device's count per record, least of the windows: %.0f B (journal included; other processes too)",
		slices.Min(device))
	return nil
}

// appendVsBolt runs the append probe: store.Append against a bare bbolt Update, p50 each,
// interleaved, files in the work directory (the disk the agents use).
func (b *bench) appendVsBolt(ctx context.Context) error {
	n := pick(b, 3000, 600)
	dir := filepath.Join(b.work, "append")
	if err := mkdir(dir); err != nil {
		return err
	}
	var r appendResult
	if err := b.runProbe(ctx, "append", 5*time.Minute, &r, "append", dir, fmt.Sprint(n)); err != nil {
		return err
	}
	b.progress("   %d pairs, payload %d B: append p50 %.0f µs p99 %.0f µs; bbolt p50 %.0f µs p99 %.0f µs; median of pair ratios %.3f",
		r.N, r.PayloadLen, r.AppendP50us, r.AppendP99us, r.BareP50us, r.BareP99us, r.RatioP50)
	b.appendP50ms = r.AppendP50us / 1e3
	b.emit("append_vs_bbolt_ratio", r.AppendP50us/r.BareP50us, "x")
	b.emit("store_append_p50_ms", r.AppendP50us/1e3, "ms")
	b.emit("bbolt_update_p50_ms", r.BareP50us/1e3, "ms")
	return nil
}
