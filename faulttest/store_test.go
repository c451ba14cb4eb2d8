//go:build faults

package faulttest

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"station.dev/agent/internal/stationproc"
	"station.dev/agent/mqtt/brokertest"
	"station.dev/agent/store"
)

// TestStoreFull fills a 1 MiB store while the broker is unreachable: telemetry kept offline is
// evicted first, then card taps are refused (exit status 1, {"ok":false}), the emulated indicator
// shows "refused", and exactly one store.full alarm is recorded for the episode. Nothing recorded
// before is lost: once the broker is back the backlog drains and taps are recorded again.
func TestStoreFull(t *testing.T) {
	b := brokertest.Embedded(t, "127.0.0.1:0")
	sw := newSwitchboard(t, b.Addr(), modeRefuse)
	s := newSpec(t, sw.URL())
	s.TOML += "[store]\nmax_bytes = \"1MiB\"\n[telemetry]\ninterval = \"1s\"\n"
	obs := observe(t, b.URL(), s.Prefix+"/+/events")
	a := startAgent(t, s)

	// Offline, telemetry heartbeats are kept in the store, as the first to go when it fills.
	var tele int
	if !eventually(30*time.Second, 200*time.Millisecond, func() bool {
		tele = a.status().Queue.Streams["telemetry"].Depth
		return tele >= 3
	}) {
		t.Fatalf("no telemetry kept offline: %+v", a.status().Queue)
	}

	lines, code := a.Tap("--count", "4000")
	if code != 1 {
		t.Fatalf("tapping into a full store: exit %d, want 1", code)
	}
	recorded := map[string]bool{}
	refused := 0
	for i, l := range lines {
		switch {
		case l.OK:
			if refused > 0 {
				t.Fatalf("tap %d recorded after %d refusals, with nothing drained", i, refused)
			}
			recorded[l.ID] = true
		case strings.Contains(l.Error, "full"):
			refused++
		default:
			t.Fatalf("tap %d failed, but not as refused: %+v", i, l)
		}
	}
	if len(recorded) < 1000 || refused == 0 {
		t.Fatalf("%d taps recorded and %d refused: want the store to fill up", len(recorded), refused)
	}
	st := a.status()
	ev := st.Queue.Streams["events"]
	t.Logf("%d taps recorded, %d refused; queue %+v", len(recorded), refused, st.Queue)
	switch {
	case !st.Queue.Full:
		t.Errorf("status does not say the store is full")
	case st.Queue.Evicted < uint64(tele):
		t.Errorf("%d telemetry records were kept, only %d evicted before card taps were refused", tele, st.Queue.Evicted)
	case st.Queue.Refused < uint64(refused):
		t.Errorf("%d taps refused, the store counts %d", refused, st.Queue.Refused)
	case uint64(ev.Depth) != ev.LastSeq:
		t.Errorf("events stream: %d records kept of %d written: something recorded was dropped", ev.Depth, ev.LastSeq)
	}

	// One more card: refused, and the kiosk shows it.
	one, code := a.Tap()
	st = a.status()
	if code != 1 || len(one) != 1 || one[0].OK || !strings.Contains(one[0].Error, "full") {
		t.Fatalf("tap on a full store: exit %d, %+v", code, one)
	}
	if st.Indicator == nil || st.Indicator.Pattern != "refused" {
		t.Fatalf("indicator after a refused tap: %+v, want the refused pattern", st.Indicator)
	}
	out, _, _ := a.CLI("status")
	if !strings.Contains(strings.ToLower(out), "full") {
		t.Errorf("station status does not say the store is full:\n%s", out)
	}

	// The broker comes back: the backlog drains, and service is normal again.
	sw.setMode(modeForward)
	obs.waitIDs(recorded, 2*time.Minute)
	if !eventually(time.Minute, 100*time.Millisecond, func() bool { return a.status().Queue.Depth == 0 }) {
		t.Fatalf("backlog not drained: %+v", a.status().Queue)
	}
	after := a.MustTap("--count", "3")
	want := map[string]bool{}
	for _, l := range after {
		want[l.ID] = true
	}
	obs.waitIDs(want, time.Minute)
	st = a.status()
	if st.Queue.Full || st.Indicator == nil || st.Indicator.Pattern != "recorded" {
		t.Errorf("after the drain: full %v, indicator %+v; want not full and the recorded pattern", st.Queue.Full, st.Indicator)
	}
	recs := obs.records()
	stationproc.CheckSeq(t, recs)
	if n := countType(recs, "store.full"); n != 1 {
		t.Fatalf("%d store.full alarms for one full episode, want exactly 1", n)
	}
	figure(t, "store_full_taps_recorded_1mib", float64(len(recorded)), "count")
}

// TestStoreOnFullFilesystem puts the data directory on a 4 MiB tmpfs and taps until the file
// system is full: the agent must refuse with a clear error, keep running, keep its store intact,
// and work again once space returns.
func TestStoreOnFullFilesystem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a size-limited tmpfs")
	}
	mnt := filepath.Join(t.TempDir(), "fs")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a size-limited tmpfs here: %v: %s", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	b := brokertest.Embedded(t, "127.0.0.1:0")
	sw := newSwitchboard(t, b.Addr(), modeRefuse)
	s := newSpec(t, sw.URL())
	s.Dir = mnt
	obs := observe(t, b.URL(), s.Prefix+"/+/events")
	// Ballast takes part of the space, to be freed later.
	ballast := filepath.Join(mnt, "ballast")
	if err := os.WriteFile(ballast, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, s)

	recorded := map[string]bool{}
	var failures []stationproc.TapLine
	burst := a.StartTaps(50000)
	for l := range burst.Lines {
		if l.OK {
			if len(failures) > 0 {
				t.Fatalf("tap recorded after %d failures on a full file system: %+v", len(failures), l)
			}
			recorded[l.ID] = true
			continue
		}
		failures = append(failures, l)
		if len(failures) == 20 {
			burst.Kill()
		}
	}
	<-burst.Done
	if len(failures) == 0 {
		t.Fatalf("%d taps recorded on a 4 MiB file system and none failed", len(recorded))
	}
	st := a.status()
	t.Logf("%d taps recorded, then: %q; queue %+v; indicator %+v", len(recorded), failures[0].Error, st.Queue, st.Indicator)
	if !strings.Contains(failures[0].Error, "no space left") {
		t.Errorf("the refusal does not say why: %q", failures[0].Error)
	}
	if !a.Alive() {
		t.Fatal("the agent died on a full file system")
	}
	if st.Indicator == nil || st.Indicator.Pattern != "refused" {
		t.Errorf("indicator after a tap on a full file system: %+v, want refused", st.Indicator)
	}
	full := st.Queue.Full

	// Space returns: taps are recorded again, and everything reaches the broker once it is back.
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	for _, l := range a.MustTap("--count", "20") {
		recorded[l.ID] = true
	}
	sw.setMode(modeForward)
	obs.waitIDs(recorded, 2*time.Minute)
	recs := obs.records()
	stationproc.CheckSeq(t, recs)
	alarms := countType(recs, "store.full")
	t.Logf("status said full: %v; store.full alarms delivered: %d", full, alarms)

	// The store is intact: a clean stop, then the store opens without recovery.
	if code := a.Stop(); code != 0 {
		t.Errorf("agent exit status %d after SIGTERM", code)
	}
	db, err := store.Open(s.StorePath(), nil)
	if err != nil {
		t.Fatalf("store after the full file system: %v", err)
	}
	if rec := db.Recovered(); rec != nil {
		t.Errorf("the store was broken by the full file system: %+v", rec)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// The fleet is told: the status says the store refuses (sent over MQTT, not through the
	// full disk), and the store.full alarm is written as soon as a record fits again.
	if !full || alarms != 1 {
		t.Errorf("full file system: status queue.full %v, store.full alarms %d; want true and 1", full, alarms)
	}
}

// TestBrokenStore starts the agent on store files broken in different ways: garbage, and a real
// store truncated to 0 bytes, to one page, and to half of what its metadata says it uses. Each is
// kept aside for inspection and a new store starts with a store.recovered alarm, and the agent
// serves taps. Where nothing could be read (garbage, empty, one page) the seq restarts at 1 and
// the alarm says so; from the half store every readable record is salvaged with its seq, the seq
// continues after the highest the file knew, and the alarm counts the records lost: the one gap
// in the seq is exactly that many.
func TestBrokenStore(t *testing.T) {
	rng := newRand(t)
	b := brokertest.Embedded(t, "127.0.0.1:0")
	sw := newSwitchboard(t, b.Addr(), modeRefuse)

	// A real store with a backlog, written by the agent and closed cleanly.
	s0 := newSpec(t, sw.URL())
	a0 := startAgent(t, s0)
	a0.MustTap("--count", "300")
	a0.Stop()
	orig, err := os.ReadFile(s0.StorePath())
	if err != nil {
		t.Fatal(err)
	}
	used, pageSize := boltUsed(t, orig)
	t.Logf("store file %d bytes, its metadata uses %d (page size %d)", len(orig), used, pageSize)

	garbage := make([]byte, 64<<10)
	for i := range garbage {
		garbage[i] = byte(rng.UintN(256))
	}
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"garbage", garbage},
		{"empty", []byte{}},
		{"one-page", orig[:pageSize]},
		{"half", orig[:used/2]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSpec(t, b.URL())
			if err := os.MkdirAll(s.DataDir(), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(s.StorePath(), tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			obs := observe(t, b.URL(), s.Prefix+"/+/events")
			a := startAgent(t, s)
			// station.boot follows store.recovered: once it is in, the alarm would be too.
			obs.waitType("station.boot", 30*time.Second)
			want := map[string]bool{}
			for _, l := range a.MustTap("--count", "5") {
				want[l.ID] = true
			}
			obs.waitIDs(want, 30*time.Second)
			recs := obs.records()
			var alarm *stationproc.Record
			for i, r := range recs {
				if r.Type == "store.recovered" {
					alarm = &recs[i]
				}
			}
			matches, _ := filepath.Glob(s.StorePath() + ".broken-*")
			if alarm == nil {
				t.Fatal("no store.recovered alarm before station.boot")
			}
			if alarm.Data["moved_to"] == nil {
				t.Errorf("store.recovered alarm without moved_to: %v", alarm.Data)
			}
			if tc.name != "half" {
				stationproc.CheckSeq(t, recs)
				if alarm.Seq != 1 || alarm.Data["seq_restarted"] != true {
					t.Errorf("store.recovered alarm: seq %d, data %v; want seq 1 and seq_restarted", alarm.Seq, alarm.Data)
				}
			} else {
				lost, _ := alarm.Data["lost"].(float64)
				salvaged, _ := alarm.Data["salvaged"].(float64)
				if alarm.Data["seq_restarted"] != false || salvaged < 1 || lost < 1 {
					t.Errorf("store.recovered alarm: data %v; want records salvaged and lost, seq continued", alarm.Data)
				}
				seen := map[uint64]bool{}
				var top uint64
				for _, r := range recs {
					seen[r.Seq] = true
					top = max(top, r.Seq)
				}
				if missing := int(top) - len(seen); missing != int(lost) {
					t.Errorf("%d seqs missing up to %d, the alarm says %v were lost", missing, top, lost)
				}
			}
			if len(matches) != 1 {
				t.Fatalf("broken store not kept aside: %v", matches)
			}
			kept, err := os.ReadFile(matches[0])
			if err != nil || !bytes.Equal(kept, tc.data) {
				t.Errorf("the file kept aside differs from the broken store (%d bytes, want %d): %v", len(kept), len(tc.data), err)
			}
		})
	}
}

// boltUsed reads the two meta pages of a bbolt file and returns the bytes the newer one says the
// file uses (its high-water page id times the page size) and the page size.
func boltUsed(t testing.TB, f []byte) (used, pageSize int) {
	t.Helper()
	// Page header: id u64, flags u16, count u16, overflow u32. Meta: magic u32, version u32,
	// page size u32, flags u32, root bucket (root u64, sequence u64), freelist u64, pgid u64,
	// txid u64, checksum u64.
	const hdr = 16
	meta := func(off int) (pgid, txid uint64, ps int, ok bool) {
		if off+hdr+64 > len(f) || binary.LittleEndian.Uint32(f[off+hdr:]) != 0xED0CDAED {
			return 0, 0, 0, false
		}
		ps = int(binary.LittleEndian.Uint32(f[off+hdr+8:]))
		return binary.LittleEndian.Uint64(f[off+hdr+40:]), binary.LittleEndian.Uint64(f[off+hdr+48:]), ps, true
	}
	pg0, tx0, ps, ok := meta(0)
	if !ok {
		t.Fatal("store file: no bbolt meta page at offset 0")
	}
	pgid := pg0
	if pg1, tx1, _, ok := meta(ps); ok && tx1 > tx0 {
		pgid = pg1
	}
	return int(pgid) * ps, ps
}
