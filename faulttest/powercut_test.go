//go:build faults

package faulttest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"station.dev/agent/faulttest/lazyfs"
	"station.dev/agent/internal/stationproc"
	"station.dev/agent/mqtt/brokertest"
	"station.dev/agent/store"
)

// mountLazy puts the data directory of s on a lazy file system (faulttest/lazyfs) over a new
// backing directory, unmounted when the test ends (after its agents, which are started later and
// so killed first). It skips where that cannot be mounted (not root, no FUSE).
func mountLazy(t *testing.T, s stationproc.Config) (l *lazyfs.FS, backing string) {
	t.Helper()
	backing = filepath.Join(t.TempDir(), "backing")
	for _, d := range []string{backing, s.DataDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	l, err := lazyfs.Mount(backing, s.DataDir())
	if err != nil {
		t.Skipf("power cuts need a lazy FUSE file system: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Unmount(); err != nil {
			t.Errorf("%v", err)
		}
	})
	return l, backing
}

// checkBacking opens a copy of the store file as a power cut left it, with the full check, and
// returns its events stream's last seq. The file must not be broken: a power cut never breaks a
// bbolt file, whatever was lost.
func checkBacking(t *testing.T, backing string) uint64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(backing, "station.db"))
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "check.db")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := store.Open(p, &store.Options{CheckMaxBytes: -1, DeleteDelay: -1})
	if err != nil {
		t.Fatalf("the store after a power cut does not open: %v", err)
	}
	defer db.Close()
	if rec := db.Recovered(); rec != nil {
		t.Fatalf("the store after a power cut is broken: %s", rec.Reason)
	}
	if err := db.Check(); err != nil {
		t.Fatalf("the store after a power cut: %v", err)
	}
	st, err := db.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st.Streams[store.Events].LastSeq
}

// TestPowerCuts runs the agent with its data directory on a file system that loses every write
// not yet fsynced at a cut (and, at half of the cuts, lets a random part of them through, as a
// disk that wrote some of its cache), and cuts the power at random moments: during tap bursts
// while records drain to the broker, during the drain of a backlog, and during the compaction
// of a drained store at start. After each cut the store opens with the full check, clean, and
// its events seq is not below any seq a tap was answered with; then the agent starts again.
// At the end every tap answered "recorded" has reached the broker, and seq has no gap and no
// reuse.
func TestPowerCuts(t *testing.T) {
	rng := newRand(t)
	b := brokertest.Embedded(t, "127.0.0.1:0")
	sw := newSwitchboard(t, b.Addr(), modeForward)
	s := newSpec(t, sw.URL())
	lz, backing := mountLazy(t, s)
	obs := observe(t, b.URL(), s.Prefix+"/+/events")

	cuts := scale(5, 100)
	want := map[string]bool{}
	var answered uint64 // the highest seq a tap was answered with
	note := func(l stationproc.TapLine) {
		if l.OK {
			want[l.ID] = true
			answered = max(answered, l.Seq)
		}
	}
	kinds := map[string]int{}
	start := time.Now()
	for round := 0; round < cuts; round++ {
		kind := "taps"
		switch r := rng.IntN(10); {
		case round == 1 || r == 0:
			kind = "compaction"
		case round == 2 || r < 4:
			kind = "drain"
		}
		if testing.Short() && kind == "compaction" && kinds["compaction"] > 0 {
			kind = "taps"
		}
		kinds[kind]++
		// The moment: in the middle of a commit (held in its fsync), or after a tap or a time.
		atFsync := rng.IntN(2) == 0
		var what string
		switch kind {
		case "taps":
			// Taps while the broker takes records: appends, and deletes riding in them.
			sw.setMode(modeForward)
			a := startAgent(t, s)
			if atFsync {
				n := 1 + rng.IntN(300)
				what = fmt.Sprintf("in fsync %d of a tap burst", n)
				tapUntil(t, a, 300, lz.CutAtFsync(n), note)
				break
			}
			k := 1 + rng.IntN(120)
			what = fmt.Sprintf("after %d recorded taps", k)
			tapThenCut(t, a, 300, k, note)
		case "drain":
			// A backlog built offline, cut while it drains (and taps go on).
			sw.setMode(modeRefuse)
			a := startAgent(t, s)
			for _, l := range a.MustTap("--count", itoa(50+rng.IntN(250))) {
				note(l)
			}
			if atFsync {
				n := 1 + rng.IntN(4)
				what = fmt.Sprintf("in fsync %d of the drain", n)
				hit := lz.CutAtFsync(n)
				sw.setMode(modeForward)
				select {
				case <-hit:
				case <-time.After(20 * time.Second):
					what += " (not reached: cut after 20s)"
				}
				a.Kill()
				break
			}
			sw.setMode(modeForward)
			if rng.IntN(2) == 0 {
				d := time.Duration(rng.IntN(1500)) * time.Millisecond
				what = fmt.Sprintf("%s into the drain", d)
				<-time.After(d) // the cut moment
				a.Kill()
			} else {
				k := 1 + rng.IntN(60)
				what = fmt.Sprintf("during the drain, after %d recorded taps", k)
				tapThenCut(t, a, 200, k, note)
			}
		case "compaction":
			// Offline, receipts of 8 KiB make the file large; drained, the next start compacts
			// it; the power goes at a random moment of that start.
			sw.setMode(modeRefuse)
			a := startAgent(t, s)
			api := a.HTTPClient()
			parallel(1300, 8, func(i int) error {
				tl, code, err := submit(api, "kiosk.receipt", map[string]any{"n": i, "text": strings.Repeat("r", 8<<10)})
				if err != nil || !tl.OK {
					return fmt.Errorf("receipt %d: status %d, %+v, %v", i, code, tl, err)
				}
				return nil
			}, t)
			sw.setMode(modeForward)
			if !eventually(2*time.Minute, 100*time.Millisecond, func() bool {
				st, err := a.tryStatus()
				return err == nil && st.Queue.Depth == 0
			}) {
				t.Fatalf("round %d: the receipts did not drain: %+v", round, a.status().Queue)
			}
			a.Stop() // the deletes are committed: the file is wasteful at the next start
			var hit <-chan struct{}
			n := 1 + rng.IntN(5)
			if atFsync {
				hit = lz.CutAtFsync(n)
			}
			p, err := stationproc.Spawn(t, s)
			if err != nil {
				t.Fatal(err)
			}
			if atFsync {
				what = fmt.Sprintf("in fsync %d of the start", n)
				select {
				case <-hit:
				case <-time.After(20 * time.Second):
					what += " (not reached: cut after 20s)"
				}
				p.Kill()
				break
			}
			d := time.Duration(rng.IntN(1500)) * time.Millisecond
			what = fmt.Sprintf("%s into the start", d)
			<-time.After(d) // the cut moment
			p.Kill()
		}
		keep := rng.IntN(2) == 0
		var keepFn func() bool
		if keep {
			keepFn = func() bool { return rng.IntN(2) == 0 }
		}
		if err := lz.Cut(keepFn); err != nil {
			t.Fatal(err)
		}
		last := checkBacking(t, backing)
		if last < answered {
			t.Fatalf("round %d: after the cut the events seq is %d, but a tap was answered with seq %d", round, last, answered)
		}
		t.Logf("round %d: %s cut %s (unsynced blocks partly kept: %v); events seq %d", round, kind, what, keep, last)
	}
	sw.setMode(modeForward)
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
	obs.waitSeq(last, time.Minute)
	recs := obs.records()
	maxSeq := stationproc.CheckSeq(t, recs)
	if maxSeq != last {
		t.Fatalf("the broker got seq 1..%d, the store handed out 1..%d", maxSeq, last)
	}
	if n := countType(recs, "store.recovered"); n != 0 {
		t.Errorf("%d store.recovered alarms: a power cut broke the store", n)
	}
	a.Stop()
	checkBacking(t, backing)
	acked, found := len(want), 0
	for _, r := range recs {
		if want[r.ID] {
			found++
			delete(want, r.ID) // count each once
		}
	}
	st := lz.Stats()
	t.Logf("%d power cuts %v in %s: %d taps answered recorded, %d found at the broker, %d records, %d duplicates on the wire; %d fsyncs, %d blocks lost and %d kept by cuts",
		cuts, kinds, time.Since(start).Round(time.Second), acked, found, maxSeq, duplicates(recs), st.Fsyncs, st.BlocksLost, st.BlocksKept)
	figure(t, "power_cuts", float64(cuts), "count")
	figure(t, "power_cut_taps_recorded", float64(acked), "count")
	figure(t, "power_cut_taps_found", float64(found), "count")
	figure(t, "power_cut_records", float64(maxSeq), "count")
	figure(t, "power_cut_duplicates", float64(duplicates(recs)), "count")
}

// tapThenCut taps up to n times and kills the agent once k taps were answered "recorded".
func tapThenCut(t *testing.T, a *agent, n, k int, note func(stationproc.TapLine)) {
	t.Helper()
	burst := a.StartTaps(n)
	got := 0
	for l := range burst.Lines {
		note(l)
		if l.OK {
			got++
			if got == k {
				a.Kill()
			}
		}
	}
	<-burst.Done
	if got < k {
		t.Fatalf("the burst ended after %d recorded taps, before the cut at %d", got, k)
	}
	if a.Alive() {
		t.Fatal("agent still running after the cut")
	}
}

// tapUntil taps up to n times and kills the agent when hit is closed (a cut armed at an fsync),
// or once the burst is over.
func tapUntil(t *testing.T, a *agent, n int, hit <-chan struct{}, note func(stationproc.TapLine)) {
	t.Helper()
	burst := a.StartTaps(n)
	for lines := burst.Lines; lines != nil; {
		select {
		case l, ok := <-lines:
			if !ok {
				lines = nil
				continue
			}
			note(l)
		case <-hit:
			a.Kill()
			hit = nil
		}
	}
	<-burst.Done
	a.Kill()
}
