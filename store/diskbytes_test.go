package store

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// wchar returns the bytes this process has passed to write(2) and friends.
func wchar(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Skipf("no /proc/self/io: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "wchar: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	t.Skip("no wchar in /proc/self/io")
	return 0
}

// TestAppendBatchInOrderOneCommit: offline heartbeats are stored in the
// order they were made, in one commit.
func TestAppendBatchInOrderOneCommit(t *testing.T) {
	s := openStore(t, "", nil)
	var payloads [][]byte
	for i := range 30 {
		payloads = append(payloads, payloadFor(Telemetry, uint64(i+1), 300))
	}
	st0 := s.db.Stats()
	before := st0.TxStats.GetWrite()
	recs, err := s.AppendBatch(Telemetry, Evictable, payloads)
	if err != nil {
		t.Fatal(err)
	}
	st1 := s.db.Stats()
	writes := st1.TxStats.GetWrite() - before
	got := readAll(t, s, Telemetry)
	if len(recs) != 30 || len(got) != 30 {
		t.Fatalf("%d returned, %d stored, want 30", len(recs), len(got))
	}
	for i, r := range got {
		if r.Seq != uint64(i+1) || !bytes.Equal(r.Payload, payloads[i]) {
			t.Fatalf("record %d: seq %d %q, want seq %d and heartbeat %d", i, r.Seq, r.Payload, i+1, i)
		}
	}
	// 30 heartbeats of 300 bytes fill three leaves: a handful of page writes, not 30 commits.
	if writes > 8 {
		t.Fatalf("%d page writes for one batch, want one commit's", writes)
	}
}

// TestDiskBytesPerRecord measures the bytes written per card record (its
// append and its delete, one at a time, as at a station where taps come
// seconds apart) and per offline heartbeat (stored 30 at a time and deleted
// 30 at a time once sent), and after a drained backlog. Run with -v to see
// the figures.
func TestDiskBytesPerRecord(t *testing.T) {
	if os.Getenv("STORE_MEASURE") == "" {
		t.Skip("a measurement: STORE_MEASURE=1 go test ./store/ -run TestDiskBytesPerRecord -v")
	}
	path := filepath.Join(t.TempDir(), "store.db")
	s := openStore(t, path, nil)
	card := make([]byte, 353)
	perCard := func(n int) float64 {
		w0 := wchar(t)
		for range n {
			r, err := s.Append(Events, Normal, func(uint64) ([]byte, error) { return card, nil })
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Delete(Events, r.Seq); err != nil {
				t.Fatal(err)
			}
		}
		return float64(wchar(t)-w0) / float64(n)
	}
	mustAppend(t, s, Events, Normal, 20) // warm up
	card1 := perCard(200)

	hb := make([][]byte, 30)
	for i := range hb {
		hb[i] = make([]byte, 280)
	}
	w0 := wchar(t)
	for range 10 {
		recs, err := s.AppendBatch(Telemetry, Evictable, hb)
		if err != nil {
			t.Fatal(err)
		}
		var seqs []uint64
		for _, r := range recs {
			seqs = append(seqs, r.Seq)
		}
		if err := s.Delete(Telemetry, seqs...); err != nil {
			t.Fatal(err)
		}
	}
	tele := float64(wchar(t)-w0) / 300

	// A backlog of ~38 MiB drained in pages of 64, then taps again.
	fill(t, s, Events, 100000, make([]byte, 353))
	for {
		recs, err := s.Read(Events, 0, 64)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			break
		}
		var seqs []uint64
		for _, r := range recs {
			seqs = append(seqs, r.Seq)
		}
		if err := s.Delete(Events, seqs...); err != nil {
			t.Fatal(err)
		}
	}
	card2 := perCard(200)
	t.Logf("figure: disk_bytes_per_card_record %.0f B (append and its delete, taps one after another: the delete rides in the next append)", card1)
	t.Logf("figure: disk_bytes_per_telemetry_record %.0f B (batches of 30, stored and deleted)", tele)
	t.Logf("figure: disk_bytes_per_card_record_after_backlog %.0f B", card2)
}
