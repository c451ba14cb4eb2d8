//go:build faults

package faulttest

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"station.dev/agent/internal/stationproc"
	"station.dev/agent/mqtt/brokertest"
)

// TestCrashLoop kills the agent with SIGKILL at random moments of tap bursts, again and again,
// while the broker restarts now and then (during a burst, or while the agent is down). Every tap
// the agent answered "recorded" must reach the broker, and the events stream must arrive gap-free
// from seq 1 to the last seq the store handed out, duplicates only as the same record again.
func TestCrashLoop(t *testing.T) {
	rng := newRand(t)
	mq := startMosquitto(t, nil)
	s := newSpec(t, mq.URL())
	obs := observe(t, mq.URL(), s.Prefix+"/+/events")
	kills := scale(5, 20)
	want := map[string]bool{}
	restarts := 0
	for round := 0; round < kills; round++ {
		a := startAgent(t, s)
		killAt := 1 + rng.IntN(150)
		// 0: the broker restarts during the burst; 1: while the agent is dead; otherwise it stays.
		flap := rng.IntN(4)
		burst := a.StartTaps(400)
		n := 0
		for l := range burst.Lines {
			if !l.OK {
				continue
			}
			want[l.ID] = true // answered "recorded": it must reach the broker
			n++
			if flap == 0 && n == killAt/2 {
				mq.restart()
				restarts++
			}
			if n == killAt {
				a.Kill()
			}
		}
		<-burst.Done
		if n < killAt {
			t.Fatalf("round %d: the burst ended after %d recorded taps, before the kill at %d", round, n, killAt)
		}
		if a.Alive() {
			t.Fatalf("round %d: agent still running after SIGKILL", round)
		}
		if flap == 1 {
			mq.restart()
			restarts++
		}
		restart := map[int]string{0: "during the burst", 1: "after the kill"}[flap]
		if restart == "" {
			restart = "none"
		}
		t.Logf("round %d: killed after %d recorded taps (broker restart: %s)", round, n, restart)
	}
	a := startAgent(t, s)
	obs.waitIDs(want, 3*time.Minute)
	var last uint64
	if !eventually(time.Minute, 100*time.Millisecond, func() bool {
		st, err := a.tryStatus()
		last = st.Queue.Streams["events"].LastSeq
		return err == nil && st.Queue.Depth == 0 && st.Link.Connected
	}) {
		t.Fatalf("the store did not drain: %+v", a.status().Queue)
	}
	// The last record may arrive after the store dropped it: wait for its seq too.
	obs.waitSeq(last, time.Minute)
	recs := obs.records()
	maxSeq := stationproc.CheckSeq(t, recs)
	if maxSeq != last {
		t.Fatalf("the broker got seq 1..%d, the store handed out 1..%d", maxSeq, last)
	}
	t.Logf("%d kills, %d broker restarts: %d taps answered recorded, %d records, %d duplicates on the wire",
		kills, restarts, len(want), maxSeq, duplicates(recs))
	figure(t, "crash_loop_kills", float64(kills), "count")
	figure(t, "crash_loop_records", float64(maxSeq), "count")
	figure(t, "crash_loop_duplicates", float64(duplicates(recs)), "count")
}

// TestBacklogDrainsInOrder records a large backlog while the broker is unreachable, then lets
// it drain: every record arrives, in seq order, and the agent's own memory stays bounded while the
// backlog streams out of the store. Then the agent is killed during its next starts, while it
// compacts the drained file.
func TestBacklogDrainsInOrder(t *testing.T) {
	rng := newRand(t)
	n := scale(10000, 50000)
	b := brokertest.Embedded(t, "127.0.0.1:0")
	sw := newSwitchboard(t, b.Addr(), modeRefuse)
	s := newSpec(t, sw.URL())
	obs := observe(t, b.URL(), s.Prefix+"/+/events")
	a := startAgent(t, s)
	m0, err := a.Memory()
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	want := map[string]bool{}
	for done := 0; done < n; {
		c := min(5000, n-done)
		for _, l := range a.MustTap("--count", itoa(c)) {
			want[l.ID] = true
		}
		done += c
	}
	fill := time.Since(start)
	// Other station software keeps writing too: receipts of 8 KiB, which make the file large
	// enough to be worth compacting once drained.
	receipts := 1500
	api := a.HTTPClient()
	var mu sync.Mutex
	parallel(receipts, 8, func(i int) error {
		tl, code, err := submit(api, "kiosk.receipt", map[string]any{"n": i, "text": strings.Repeat("r", 8<<10)})
		if err != nil || !tl.OK {
			return fmt.Errorf("receipt %d: status %d, %+v, %v", i, code, tl, err)
		}
		mu.Lock()
		want[tl.ID] = true
		mu.Unlock()
		return nil
	}, t)
	st := a.status()
	if st.Queue.Depth < n+receipts || st.Link.Connected {
		t.Fatalf("after %d taps and %d receipts offline: depth %d, connected %v", n, receipts, st.Queue.Depth, st.Link.Connected)
	}
	m1, err := a.Memory()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("backlog of %d records (%.1f MiB accounted), the taps recorded in %s; agent memory before %s, after %s",
		st.Queue.Depth, mib(st.Queue.Bytes), fill.Round(time.Millisecond), m0, m1)

	sampler := stationproc.SampleMemory(a.Pid(), 50*time.Millisecond)
	t0 := time.Now()
	sw.setMode(modeForward)
	obs.waitIDs(want, 10*time.Minute)
	drain := time.Since(t0)
	peak, samples, _ := sampler.Stop()

	recs := obs.records()
	stationproc.CheckSeq(t, recs)
	// In order: each record first arrives after every record of lower seq.
	var last uint64
	for _, r := range recs {
		if r.Seq > last {
			if r.Seq != last+1 {
				t.Fatalf("out of order: seq %d arrived before seq %d", r.Seq, last+1)
			}
			last = r.Seq
		}
	}
	rate := float64(len(want)) / drain.Seconds()
	t.Logf("drained %d records in %s (%.0f records/s, %d duplicates); peak agent memory while draining: %s (%d samples)",
		len(want), drain.Round(time.Millisecond), rate, duplicates(recs), peak, samples)
	figure(t, "backlog_records", float64(len(want)), "count")
	figure(t, "backlog_fill_rate", float64(int(float64(n)/fill.Seconds())), "taps/s")
	figure(t, "backlog_drain_rate", float64(int(rate)), "records/s")
	figure(t, "backlog_peak_rss", round1(mib(peak.RSS)), "MiB")
	figure(t, "backlog_peak_rss_anon", round1(mib(peak.Anon)), "MiB")
	// The backlog is streamed, never loaded whole: the process's own memory must not grow with it.
	// The bound is generous (garbage collector headroom, buffers) but far below what holding the
	// backlog would take.
	if grow := peak.Anon - m1.Anon; grow > 48<<20 {
		t.Errorf("the agent's own memory grew by %.1f MiB while draining %d records", mib(grow), len(want))
	}

	// Drained, the file is far larger than what it holds, and the next start compacts it. Kill
	// the agent at random moments of its next starts (in the compaction, or after it), then start
	// it for good: the store opens without recovery, compacted, and seq goes on without a gap.
	if !eventually(time.Minute, 100*time.Millisecond, func() bool { return a.status().Queue.Depth == 0 }) {
		t.Fatalf("store not empty after the drain: %+v", a.status().Queue)
	}
	a.Kill()
	big := fileSize(t, s.StorePath())
	var sizes []string
	caught := 0 // kills that left a compaction half done
	for i := 0; i < 8; i++ {
		p, err := stationproc.Spawn(t, s)
		if err != nil {
			t.Fatal(err)
		}
		<-time.After(time.Duration(rng.IntN((i+1)*4000)) * time.Microsecond) // the kill moment
		p.Kill()
		if _, err := os.Stat(s.StorePath() + ".compact"); err == nil {
			caught++
		}
		sizes = append(sizes, fmt.Sprintf("%.1fMiB", mib(fileSize(t, s.StorePath()))))
	}
	t.Logf("store file after each kill at start: %v; %d kills left a compaction half done", sizes, caught)
	a = startAgent(t, s)
	final := a.MustTap()[0]
	obs.waitIDs(map[string]bool{final.ID: true}, time.Minute)
	recs = obs.records()
	stationproc.CheckSeq(t, recs)
	if n := countType(recs, "store.recovered"); n != 0 {
		t.Errorf("%d store.recovered alarms after kills at start", n)
	}
	small := fileSize(t, s.StorePath())
	t.Logf("store file %d bytes after the drain, %d after the restarts", big, small)
	if small >= big {
		t.Errorf("the drained store was not compacted at start: %d bytes, before %d", small, big)
	}
	if _, err := os.Stat(s.StorePath() + ".compact"); !os.IsNotExist(err) {
		t.Errorf("a compaction file is left behind: %v", err)
	}
}

// fileSize returns the size of the file at path.
func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}
