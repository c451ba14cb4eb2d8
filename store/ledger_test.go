package store

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// manualClock is an injected wall clock that moves only when told.
type manualClock struct{ ns atomic.Int64 }

func newManualClock(t time.Time) *manualClock {
	c := &manualClock{}
	c.ns.Store(t.UnixNano())
	return c
}

func (c *manualClock) Now() time.Time           { return time.Unix(0, c.ns.Load()).UTC() }
func (c *manualClock) Advance(d time.Duration)  { c.ns.Add(int64(d)) }
func (c *manualClock) Set(t time.Time)          { c.ns.Store(t.UnixNano()) }
func (c *manualClock) Since(t time.Time) string { return c.Now().Sub(t).String() }

var t0 = time.Date(2025, 3, 1, 8, 0, 0, 0, time.UTC)

// atT0 is a wall clock stopped at t0, so that ledger entries of t0 are not
// pruned by age.
func atT0() time.Time { return t0 }

// command makes the bytes of a command and its ledger entry.
func command(id string, at time.Time) ([]byte, LedgerEntry) {
	cmd := fmt.Appendf(nil, `{"id":%q,"name":"ping"}`, id)
	d := sha256.Sum256(cmd)
	return cmd, LedgerEntry{ID: id, Digest: d[:], At: at}
}

// respBuild builds a response payload of at least size bytes that names the
// command and the response seq.
func respBuild(id string, size int) func(uint64) ([]byte, error) {
	return func(seq uint64) ([]byte, error) {
		p := fmt.Appendf(nil, `{"id":%q,"ok":true,"seq":%d}`, id, seq)
		for len(p) < size {
			p = append(p, ' ')
		}
		return p, nil
	}
}

// receive stores a command in the inbox, as the link does before it
// acknowledges it.
func receive(t testing.TB, s *Store, cmd []byte) Record {
	t.Helper()
	r, err := s.Append(Inbox, Critical, func(uint64) ([]byte, error) { return cmd, nil })
	if err != nil {
		t.Fatalf("Append(inbox): %v", err)
	}
	return r
}

func mustRespond(t testing.TB, s *Store, inboxSeq uint64, e LedgerEntry, size int) Record {
	t.Helper()
	r, err := s.Respond(inboxSeq, e, respBuild(e.ID, size))
	if err != nil {
		t.Fatalf("Respond(%d, %s): %v", inboxSeq, e.ID, err)
	}
	return r
}

func mustLedger(t testing.TB, s *Store, id string) *LedgerEntry {
	t.Helper()
	e, err := s.Ledger(id)
	if err != nil {
		t.Fatalf("Ledger(%s): %v", id, err)
	}
	return e
}

func sameEntry(got *LedgerEntry, want LedgerEntry) bool {
	return got != nil && got.ID == want.ID && bytes.Equal(got.Digest, want.Digest) &&
		got.At.Equal(want.At) && bytes.Equal(got.Response, want.Response)
}

// ledgerCounters reads the ledger counters of an open store.
func ledgerCounters(t testing.TB, s *Store) streamCounters {
	t.Helper()
	var lc streamCounters
	if err := s.db.View(func(tx *bbolt.Tx) error {
		cs, err := loadCounters(tx)
		lc = cs.ledger
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return lc
}

func TestRespondAtomic(t *testing.T) {
	clock := newManualClock(t0)
	s := openStore(t, "", &Options{Now: clock.Now})
	cmd, e := command("cmd-1", t0.Add(-time.Second))
	in := receive(t, s, cmd)
	if in.Stream != Inbox || in.Seq != 1 {
		t.Fatalf("inbox record %s/%d, want inbox/1", in.Stream, in.Seq)
	}

	e.Response = []byte("ignored: Respond fills it in")
	select { // the inbox append's signal
	case <-s.Changed():
	default:
	}
	r := mustRespond(t, s, in.Seq, e, 0)
	select {
	case <-s.Changed():
	default:
		t.Error("Respond did not signal Changed")
	}
	if r.Stream != Responses || r.Seq != 1 || !bytes.HasPrefix(r.Payload, []byte(`{"id":"cmd-1","ok":true,"seq":1}`)) {
		t.Fatalf("Respond returned {%s %d %q}", r.Stream, r.Seq, r.Payload)
	}
	if !r.Added.Equal(t0) {
		t.Errorf("response added at %v, want %v", r.Added, t0)
	}
	resps := readAll(t, s, Responses)
	if len(resps) != 1 || resps[0].Seq != 1 || !bytes.Equal(resps[0].Payload, r.Payload) {
		t.Fatalf("responses stream holds %d records (%v)", len(resps), seqsOf(resps))
	}
	want := e
	want.Response = r.Payload
	if got := mustLedger(t, s, "cmd-1"); !sameEntry(got, want) {
		t.Fatalf("ledger entry %+v, want %+v", got, want)
	}
	if recs := readAll(t, s, Inbox); len(recs) != 0 {
		t.Fatalf("inbox still holds %v", seqsOf(recs))
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Streams[Inbox]; got != (StreamStats{LastSeq: 1}) {
		t.Errorf("inbox stats %+v, want empty with LastSeq 1", got)
	}
	if got := st.Streams[Responses]; got.Depth != 1 || got.Bytes != accounted(len(r.Payload)) || got.LastSeq != 1 {
		t.Errorf("responses stats %+v", got)
	}
	if st.Bytes != accounted(len(r.Payload)) {
		t.Errorf("accounted bytes %d, want only the response's %d (ledger bytes are not accounted)",
			st.Bytes, accounted(len(r.Payload)))
	}
	if lc := ledgerCounters(t, s); lc.depth != 1 || lc.last != 1 {
		t.Errorf("ledger counters %+v, want 1 entry, last 1", lc)
	}
}

// storeState is what a failed Respond must leave as it was.
type storeState struct {
	streams map[Stream]StreamStats
	inbox   []Record
	resps   []Record
	entry   *LedgerEntry
	ledger  streamCounters
}

func stateOf(t *testing.T, s *Store, id string) storeState {
	t.Helper()
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return storeState{
		streams: st.Streams,
		inbox:   readAll(t, s, Inbox),
		resps:   readAll(t, s, Responses),
		entry:   mustLedger(t, s, id),
		ledger:  ledgerCounters(t, s),
	}
}

func sameRecords(a, b []Record) bool {
	return slices.EqualFunc(a, b, func(x, y Record) bool {
		return x.Stream == y.Stream && x.Seq == y.Seq && bytes.Equal(x.Payload, y.Payload) && x.Added.Equal(y.Added)
	})
}

func (a storeState) equal(b storeState) bool {
	return streamStatsEqual(a.streams, b.streams) && sameRecords(a.inbox, b.inbox) &&
		sameRecords(a.resps, b.resps) && a.ledger == b.ledger &&
		(a.entry == nil) == (b.entry == nil) && (a.entry == nil || sameEntry(a.entry, *b.entry))
}

func TestRespondFailureChangesNothing(t *testing.T) {
	s := openStore(t, "", &Options{Now: newTestClock().Now})
	// A first execution of cmd-x, then a second command reusing its id.
	cmd1, e1 := command("cmd-x", t0)
	mustRespond(t, s, receive(t, s, cmd1).Seq, e1, 50)
	cmd2, e2 := command("cmd-x", t0.Add(time.Minute))
	cmd2 = append(cmd2, " "...) // another digest
	e2.Digest = func() []byte { d := sha256.Sum256(cmd2); return d[:] }()
	in := receive(t, s, cmd2)
	before := stateOf(t, s, "cmd-x")
	if len(before.inbox) != 1 || before.entry == nil {
		t.Fatalf("set-up: inbox %v, entry %v", seqsOf(before.inbox), before.entry)
	}

	check := func(name string, err error, want error) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Errorf("%s: error %v, want %v", name, err, want)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "store: ") {
			t.Errorf("%s: error %q lacks the package prefix", name, err)
		}
		if after := stateOf(t, s, "cmd-x"); !after.equal(before) {
			t.Errorf("%s changed the store:\n%+v\nbefore:\n%+v", name, after, before)
		}
	}

	_, err := s.Respond(in.Seq, e2, func(uint64) ([]byte, error) { return nil, errBuild })
	check("build error", err, errBuild)

	_, err = s.Respond(in.Seq, e2, func(uint64) ([]byte, error) { return make([]byte, MaxPayload+1), nil })
	check("response too large", err, ErrTooLarge)

	func() {
		defer func() {
			if p := recover(); p != "boom" {
				t.Errorf("recovered %v, want the build's panic", p)
			}
		}()
		s.Respond(in.Seq, e2, func(uint64) ([]byte, error) { panic("boom") })
		t.Error("Respond returned after build panicked")
	}()
	check("build panic", nil, nil)

	// The failures used no seq: the response that works gets seq 2.
	r := mustRespond(t, s, in.Seq, e2, 50)
	if r.Seq != 2 {
		t.Fatalf("response seq %d after failed attempts, want 2", r.Seq)
	}
	want := e2
	want.Response = r.Payload
	if got := mustLedger(t, s, "cmd-x"); !sameEntry(got, want) {
		t.Fatalf("ledger entry %+v, want the second command's %+v", got, want)
	}
	if lc := ledgerCounters(t, s); lc.depth != 1 || lc.last != 2 {
		t.Fatalf("ledger counters %+v after replacing the entry, want 1 entry, last 2", lc)
	}
}

// TestRespondOnFullStore fills the store to the end of the Critical
// reserve: a response to a stored command still fits, because the inbox
// record it deletes frees its room; any other response is refused with
// ErrFull and changes nothing.
func TestRespondOnFullStore(t *testing.T) {
	s := openStore(t, "", capOpts())
	for {
		if _, err := s.Append(Events, Normal, func(uint64) ([]byte, error) { return make([]byte, 100), nil }); err != nil {
			if !errors.Is(err, ErrFull) {
				t.Fatal(err)
			}
			break
		}
	}
	cmd := make([]byte, 1000)
	var last Record
	for {
		r, err := s.Append(Inbox, Critical, func(uint64) ([]byte, error) { return cmd, nil })
		if err != nil {
			if !errors.Is(err, ErrFull) {
				t.Fatal(err)
			}
			break
		}
		last = r
	}
	if last.Seq < 10 {
		t.Fatalf("set-up: only %d inbox records fit", last.Seq)
	}
	_, e := command("full-1", t0)
	before := stateOf(t, s, e.ID)
	refused := mustStats(t, s).Refused
	_, err := s.Respond(0, e, respBuild(e.ID, len(cmd)))
	if !errors.Is(err, ErrFull) {
		t.Fatalf("Respond without an inbox record on a full store: %v, want ErrFull", err)
	}
	if after := stateOf(t, s, e.ID); !after.equal(before) {
		t.Fatalf("a refused Respond changed the store")
	}
	if got := mustStats(t, s).Refused; got != refused+1 {
		t.Errorf("refused %d, want %d", got, refused+1)
	}

	r := mustRespond(t, s, last.Seq, e, len(cmd))
	if len(r.Payload) != len(cmd) {
		t.Fatalf("set-up: response of %d bytes, command of %d", len(r.Payload), len(cmd))
	}
	st := mustStats(t, s)
	if st.Streams[Inbox].Depth != int(last.Seq)-1 || st.Streams[Responses].Depth != 1 {
		t.Fatalf("after Respond: inbox %+v, responses %+v", st.Streams[Inbox], st.Streams[Responses])
	}
	if st.Bytes > st.MaxBytes+st.Reserve {
		t.Fatalf("accounted %d bytes, more than cap and reserve %d", st.Bytes, st.MaxBytes+st.Reserve)
	}
}

func mustStats(t testing.TB, s *Store) Stats {
	t.Helper()
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestRespondInboxSeqZeroOrMissing(t *testing.T) {
	s := openStore(t, "", nil)
	cmd, _ := command("in-inbox", t0)
	in := receive(t, s, cmd)

	// 0: an answer to a command that was never stored (bad_request,
	// unauthorized…); the inbox is left alone.
	_, e := command("never-stored", t0)
	r := mustRespond(t, s, 0, e, 10)
	if r.Seq != 1 || mustLedger(t, s, e.ID) == nil {
		t.Fatalf("Respond(0): seq %d, ledger entry missing or not", r.Seq)
	}
	if recs := readAll(t, s, Inbox); len(recs) != 1 || recs[0].Seq != in.Seq {
		t.Fatalf("inbox after Respond(0): %v, want [%d]", seqsOf(recs), in.Seq)
	}

	// A seq that is not stored (already answered before a crash, say) is
	// not an error either.
	_, e = command("gone", t0)
	if r := mustRespond(t, s, in.Seq+5, e, 10); r.Seq != 2 {
		t.Fatalf("Respond(missing seq): seq %d, want 2", r.Seq)
	}
	if recs := readAll(t, s, Inbox); len(recs) != 1 || recs[0].Seq != in.Seq {
		t.Fatalf("inbox after Respond(missing): %v, want [%d]", seqsOf(recs), in.Seq)
	}
	if st := mustStats(t, s).Streams[Inbox]; st.Depth != 1 || st.Bytes != accounted(len(cmd)) {
		t.Fatalf("inbox stats %+v", st)
	}

	// DropInbox removes a record that gets no response.
	if err := s.DropInbox(in.Seq); err != nil {
		t.Fatal(err)
	}
	if err := s.DropInbox(in.Seq); err != nil {
		t.Fatalf("DropInbox of a missing seq: %v", err)
	}
	if recs := readAll(t, s, Inbox); len(recs) != 0 {
		t.Fatalf("inbox after DropInbox: %v", seqsOf(recs))
	}
	if st := mustStats(t, s).Streams[Inbox]; st != (StreamStats{LastSeq: in.Seq}) {
		t.Fatalf("inbox stats after DropInbox %+v", st)
	}
}

func TestInboxSeqGapFreeAndOrdered(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openStore(t, path, nil)
	const workers, per = 8, 25
	var mu sync.Mutex
	var got []uint64
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				r, err := s.Append(Inbox, Critical, func(seq uint64) ([]byte, error) {
					return fmt.Appendf(nil, "inbox:%d:w%d-%d", seq, w, i), nil
				})
				if err != nil {
					errc <- err
					return
				}
				mu.Lock()
				got = append(got, r.Seq)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	for i, seq := range got {
		if seq != uint64(i+1) {
			t.Fatalf("seqs %v…: not 1..%d without gaps or repeats", got[:i+1], workers*per)
		}
	}
	recs := readAll(t, s, Inbox)
	if len(recs) != workers*per {
		t.Fatalf("read %d inbox records, want %d", len(recs), workers*per)
	}
	for i, r := range recs {
		if r.Seq != uint64(i+1) || !bytes.HasPrefix(r.Payload, fmt.Appendf(nil, "inbox:%d:", r.Seq)) {
			t.Fatalf("inbox record %d: seq %d, payload %q", i, r.Seq, r.Payload)
		}
	}

	// Answer some, drop one, delete the rest: seqs go on after a reopen.
	for seq := uint64(1); seq <= 5; seq++ {
		_, e := command(fmt.Sprintf("c%d", seq), t0)
		mustRespond(t, s, seq, e, 10)
	}
	if err := s.DropInbox(6); err != nil {
		t.Fatal(err)
	}
	var rest []uint64
	for seq := uint64(7); seq <= workers*per; seq++ {
		rest = append(rest, seq)
	}
	if err := s.Delete(Inbox, rest...); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, path, nil)
	if r := receive(t, s, []byte("next")); r.Seq != workers*per+1 {
		t.Fatalf("inbox seq after reopen %d, want %d", r.Seq, workers*per+1)
	}
}

func TestStatsInbox(t *testing.T) {
	clock := newTestClock()
	s := openStore(t, "", &Options{Now: clock.Now})
	if _, ok := mustStats(t, s).Streams[Inbox]; !ok {
		t.Fatal("Stats has no inbox stream")
	}
	a := receive(t, s, make([]byte, 100))
	b := receive(t, s, make([]byte, 200))
	receive(t, s, make([]byte, 300))
	mustAppend(t, s, Events, Normal, 50)
	st := mustStats(t, s)
	in := st.Streams[Inbox]
	if in.Depth != 3 || in.Bytes != accounted(100)+accounted(200)+accounted(300) || in.LastSeq != 3 || !in.Oldest.Equal(a.Added) {
		t.Fatalf("inbox stats %+v, want depth 3, bytes %d, last 3, oldest %v",
			in, accounted(100)+accounted(200)+accounted(300), a.Added)
	}
	if st.Bytes != in.Bytes+accounted(50) {
		t.Fatalf("total %d, want the inbox's %d plus the event's %d", st.Bytes, in.Bytes, accounted(50))
	}
	_, e := command("c1", t0)
	r := mustRespond(t, s, a.Seq, e, 10)
	st = mustStats(t, s)
	in = st.Streams[Inbox]
	if in.Depth != 2 || in.Bytes != accounted(200)+accounted(300) || in.LastSeq != 3 || !in.Oldest.Equal(b.Added) {
		t.Fatalf("inbox stats after Respond %+v", in)
	}
	if st.Bytes != in.Bytes+accounted(50)+accounted(len(r.Payload)) {
		t.Fatalf("total after Respond %d", st.Bytes)
	}
}

func TestLedgerAfterReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openStore(t, path, &Options{Now: atT0})
	var want []LedgerEntry
	for i := range 20 {
		// Nanoseconds and a zone other than UTC: At comes back equal, in UTC.
		at := t0.Add(time.Duration(i)*time.Minute + 123456789).In(time.FixedZone("CST", 8*3600))
		cmd, e := command(fmt.Sprintf("%032x", i), at)
		r := mustRespond(t, s, receive(t, s, cmd).Seq, e, 40+i)
		e.Response = r.Payload
		want = append(want, e)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, path, &Options{Now: atT0})
	for _, w := range want {
		got := mustLedger(t, s, w.ID)
		if !sameEntry(got, w) {
			t.Fatalf("after reopen %s: %+v, want %+v", w.ID, got, w)
		}
		if got.At.Location() != time.UTC {
			t.Fatalf("At in %v, want UTC", got.At.Location())
		}
		got.Response[0] = '#' // a copy
	}
	if got := mustLedger(t, s, want[0].ID); got.Response[0] == '#' {
		t.Fatal("Ledger returned memory shared with the store")
	}
	for _, id := range []string{"unknown", "", strings.Repeat("x", maxLedgerID+1)} {
		if e, err := s.Ledger(id); e != nil || err != nil {
			t.Fatalf("Ledger(%.10q…): %+v, %v; want nil, nil", id, e, err)
		}
	}
}

func TestLedgerPruneByAge(t *testing.T) {
	clock := newManualClock(t0)
	s := openStore(t, "", &Options{Now: clock.Now, LedgerMaxAge: time.Hour})
	record := func(id string, at time.Time) {
		t.Helper()
		_, e := command(id, at)
		mustRespond(t, s, 0, e, 10)
	}
	present := func(want ...string) {
		t.Helper()
		for _, id := range []string{"a", "b", "c", "d", "e", "old"} {
			if got, exp := mustLedger(t, s, id) != nil, slices.Contains(want, id); got != exp {
				t.Fatalf("now %v: entry %s present %t, want %t", clock.Since(t0), id, got, exp)
			}
		}
		if lc := ledgerCounters(t, s); lc.depth != int64(len(want)) {
			t.Fatalf("ledger counters %+v, want %d entries", lc, len(want))
		}
	}
	record("a", t0)
	record("b", t0.Add(10*time.Minute))
	clock.Advance(50 * time.Minute)
	record("c", time.Time{}) // zero At: now
	if e := mustLedger(t, s, "c"); !e.At.Equal(t0.Add(50 * time.Minute)) {
		t.Fatalf("zero At recorded as %v, want the clock's %v", e.At, t0.Add(50*time.Minute))
	}
	present("a", "b", "c")

	clock.Set(t0.Add(65 * time.Minute)) // a is older than an hour
	record("d", clock.Now())
	present("b", "c", "d")

	clock.Set(t0.Add(2 * time.Hour)) // b and c too
	record("e", clock.Now())
	present("d", "e")

	// The entry just recorded is kept even if it is already too old.
	record("old", t0)
	present("d", "e", "old")
}

func TestLedgerPruneByCount(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s := openStore(t, path, &Options{LedgerMaxEntries: 5, Now: atT0})
	for i := 1; i <= 12; i++ {
		_, e := command(fmt.Sprint("c", i), t0)
		mustRespond(t, s, 0, e, 10)
	}
	check := func(keep int) {
		t.Helper()
		for i := 1; i <= 12; i++ {
			if got, want := mustLedger(t, s, fmt.Sprint("c", i)) != nil, i > 12-keep; got != want {
				t.Fatalf("entry c%d present %t, want %t", i, got, want)
			}
		}
		if lc := ledgerCounters(t, s); lc.depth != int64(keep) || lc.last < 12 {
			t.Fatalf("ledger counters %+v, want %d entries", lc, keep)
		}
	}
	check(5)
	// Replacing an entry does not count twice.
	_, e := command("c12", t0)
	mustRespond(t, s, 0, e, 10)
	check(5)

	// A lower bound at the next Open applies at the next Respond.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, path, &Options{LedgerMaxEntries: 2, Now: atT0})
	check(5)
	_, e = command("c12", t0)
	mustRespond(t, s, 0, e, 10)
	check(2)
}

func TestLedgerPruneByBytes(t *testing.T) {
	s := openStore(t, "", &Options{MaxBytes: 1 << 20, Now: atT0})
	budget := s.cfg.ledgerMaxBytes
	if budget != MinReserve {
		t.Fatalf("set-up: ledger budget %d, want %d", budget, MinReserve)
	}
	const size = 10 << 10
	respond := func(id string, size int) {
		t.Helper()
		_, e := command(id, t0)
		r := mustRespond(t, s, 0, e, size)
		if err := s.Delete(Responses, r.Seq); err != nil { // as the link does once sent
			t.Fatal(err)
		}
	}
	for i := range 10 {
		respond(fmt.Sprint("c", i), size)
		lc := ledgerCounters(t, s)
		if lc.bytes > budget {
			t.Fatalf("after %d responses: ledger of %d bytes, bound %d", i+1, lc.bytes, budget)
		}
		if mustLedger(t, s, fmt.Sprint("c", i)) == nil {
			t.Fatalf("the newest entry c%d was pruned", i)
		}
	}
	lc := ledgerCounters(t, s)
	if n := budget / (size + 2*2 + sha256.Size + 58); lc.depth != n {
		t.Fatalf("ledger holds %d entries of about %d bytes, want %d in %d bytes", lc.depth, size, n, budget)
	}
	if mustLedger(t, s, "c3") != nil || mustLedger(t, s, "c4") == nil {
		t.Fatal("the oldest entries were not the ones pruned")
	}

	// A response larger than the bound is kept, alone, until the next one.
	respond("big", MaxPayload)
	if lc := ledgerCounters(t, s); lc.depth != 1 || mustLedger(t, s, "big") == nil {
		t.Fatalf("after a response of MaxPayload: %+v", lc)
	}
	respond("small", 100)
	if lc := ledgerCounters(t, s); lc.depth != 1 || mustLedger(t, s, "small") == nil {
		t.Fatalf("after a small response: %+v", lc)
	}
}

func TestRespondInvalidArguments(t *testing.T) {
	s := openStore(t, "", nil)
	build := respBuild("x", 0)
	_, e := command("ok", t0)
	cases := []struct {
		name string
		e    LedgerEntry
		b    func(uint64) ([]byte, error)
		want error // nil: any error
	}{
		{"empty id", LedgerEntry{Digest: e.Digest}, build, nil},
		{"long id", LedgerEntry{ID: strings.Repeat("x", maxLedgerID+1)}, build, ErrTooLarge},
		{"long digest", LedgerEntry{ID: "x", Digest: make([]byte, maxLedgerDigest+1)}, build, ErrTooLarge},
		{"nil build", e, nil, nil},
	}
	for _, c := range cases {
		_, err := s.Respond(0, c.e, c.b)
		if err == nil || (c.want != nil && !errors.Is(err, c.want)) || !strings.HasPrefix(err.Error(), "store: ") {
			t.Errorf("%s: %v, want an error (%v)", c.name, err, c.want)
		}
	}
	if st := mustStats(t, s); st.Streams[Responses].LastSeq != 0 {
		t.Fatalf("refused arguments used a seq: %+v", st.Streams[Responses])
	}
	// The longest id and digest are fine; so is an empty digest.
	for _, e := range []LedgerEntry{
		{ID: strings.Repeat("y", maxLedgerID), Digest: make([]byte, maxLedgerDigest)},
		{ID: "no-digest"},
	} {
		mustRespond(t, s, 0, e, 0)
		if got := mustLedger(t, s, e.ID); got == nil || !bytes.Equal(got.Digest, e.Digest) {
			t.Fatalf("entry %.10s…: %+v", e.ID, got)
		}
	}
	// A time beyond what Unix nanoseconds hold is clamped, not garbled.
	mustRespond(t, s, 0, LedgerEntry{ID: "far", At: time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)}, 0)
	if got := mustLedger(t, s, "far"); !got.At.Equal(time.Unix(0, math.MaxInt64)) {
		t.Fatalf("At of year 3000 stored as %v", got.At)
	}

	for _, o := range []*Options{{LedgerMaxEntries: -1}, {LedgerMaxAge: -time.Second}} {
		if _, err := Open(filepath.Join(t.TempDir(), "store.db"), o); err == nil {
			t.Errorf("Open with %+v succeeded", *o)
		}
	}
}

func TestLedgerClosed(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "store.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, e := command("c", t0)
	if _, err := s.Respond(0, e, respBuild("c", 0)); !errors.Is(err, ErrClosed) {
		t.Errorf("Respond after Close: %v", err)
	}
	if _, err := s.Ledger("c"); !errors.Is(err, ErrClosed) {
		t.Errorf("Ledger after Close: %v", err)
	}
	if err := s.DropInbox(1); !errors.Is(err, ErrClosed) {
		t.Errorf("DropInbox after Close: %v", err)
	}
}

// TestOpenAddsInboxAndLedger opens a store written before the inbox stream
// and the ledger existed: Open adds them, keeps everything else, and does
// not take the file for an unknown format.
func TestOpenAddsInboxAndLedger(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		mustAppend(t, s, Events, Normal, 20)
	}
	mustAppend(t, s, Responses, Critical, 20)
	if err := s.PutSetting("k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Make it what the previous version wrote.
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{recordBucketName(Inbox), bucketLedger, bucketLedgerID} {
			if err := tx.DeleteBucket(b); err != nil {
				return fmt.Errorf("%s: %w", b, err)
			}
		}
		m := tx.Bucket(bucketMeta)
		for _, k := range [][]byte{counterKey(Inbox), keyLedger} {
			if err := m.Delete(k); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s = openStore(t, path, nil)
	if rec := s.Recovered(); rec != nil {
		t.Fatalf("a store without inbox and ledger was moved aside: %+v", rec)
	}
	st := mustStats(t, s)
	if in, ok := st.Streams[Inbox]; !ok || in != (StreamStats{}) {
		t.Fatalf("inbox stats %+v (present %t), want empty", in, ok)
	}
	if ev := st.Streams[Events]; ev.Depth != 3 || ev.LastSeq != 3 {
		t.Fatalf("events after the upgrade %+v", ev)
	}
	if v, _ := s.GetSetting("k"); string(v) != "v" {
		t.Fatalf("setting after the upgrade %q", v)
	}
	in := receive(t, s, []byte("cmd"))
	if in.Seq != 1 {
		t.Fatalf("first inbox seq %d, want 1", in.Seq)
	}
	_, e := command("after-upgrade", t0)
	if r := mustRespond(t, s, in.Seq, e, 10); r.Seq != 2 {
		t.Fatalf("response seq %d, want 2", r.Seq)
	}
	if mustLedger(t, s, e.ID) == nil {
		t.Fatal("no ledger entry after the upgrade")
	}
}

func TestLedgerRepairedAtOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, &Options{Now: atT0})
	if err != nil {
		t.Fatal(err)
	}
	var want []LedgerEntry
	for i := range 5 {
		_, e := command(fmt.Sprint("c", i), t0)
		e.Response = mustRespond(t, s, 0, e, 10).Payload
		want = append(want, e)
	}
	s.Close()
	// Counters that lag behind (as a bug might leave them), and a malformed
	// entry before the first.
	putRaw(t, path, bucketMeta, keyLedger, encodeCounters(streamCounters{last: 2, depth: 1, bytes: 3}))
	putRaw(t, path, bucketLedger, seqKey(0), []byte{1, 2, 3})

	s = openStore(t, path, &Options{Now: atT0}) // checks counters and index at cleanup
	if s.Recovered() != nil {
		t.Fatal("a repairable ledger moved the file aside")
	}
	for _, w := range want {
		if got := mustLedger(t, s, w.ID); !sameEntry(got, w) {
			t.Fatalf("after repair %s: %+v, want %+v", w.ID, got, w)
		}
	}
	if lc := ledgerCounters(t, s); lc.depth != 5 || lc.last != 5 {
		t.Fatalf("repaired ledger counters %+v, want 5 entries, last 5", lc)
	}
	_, e := command("c-next", t0)
	mustRespond(t, s, 0, e, 10)
	if lc := ledgerCounters(t, s); lc.depth != 6 || lc.last != 6 {
		t.Fatalf("ledger counters %+v, want 6 entries, last 6", lc)
	}
}

// TestRespondConcurrent runs commands through inbox, Respond and the ledger
// from many goroutines, with appends of events in between.
func TestRespondConcurrent(t *testing.T) {
	s := openStore(t, "", &Options{Now: atT0})
	const workers, per = 8, 20
	type done struct {
		id   string
		resp Record
	}
	var mu sync.Mutex
	var all []done
	var wg sync.WaitGroup
	errc := make(chan error, 2*workers)
	for w := range workers {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := range per {
				id := fmt.Sprintf("w%d-%d", w, i)
				cmd, e := command(id, t0)
				in, err := s.Append(Inbox, Critical, func(uint64) ([]byte, error) { return cmd, nil })
				if err != nil {
					errc <- err
					return
				}
				r, err := s.Respond(in.Seq, e, respBuild(id, 20))
				if err != nil {
					errc <- err
					return
				}
				mu.Lock()
				all = append(all, done{id, r})
				mu.Unlock()
			}
		}()
		go func() {
			defer wg.Done()
			for range per {
				if _, err := s.Append(Events, Normal, func(seq uint64) ([]byte, error) { return payloadFor(Events, seq, 30), nil }); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	resps := readAll(t, s, Responses)
	if len(resps) != workers*per {
		t.Fatalf("%d responses, want %d", len(resps), workers*per)
	}
	for i, r := range resps {
		if r.Seq != uint64(i+1) {
			t.Fatalf("response seqs not gap-free at %d: %d", i, r.Seq)
		}
	}
	for _, d := range all {
		got := mustLedger(t, s, d.id)
		if got == nil || !bytes.Equal(got.Response, d.resp.Payload) ||
			!bytes.Equal(resps[d.resp.Seq-1].Payload, d.resp.Payload) {
			t.Fatalf("command %s: ledger %+v, response %d %q", d.id, got, d.resp.Seq, d.resp.Payload)
		}
	}
	st := mustStats(t, s)
	if in := st.Streams[Inbox]; in.Depth != 0 || in.LastSeq != workers*per {
		t.Fatalf("inbox %+v, want empty after %d commands", in, workers*per)
	}
	if lc := ledgerCounters(t, s); lc.depth != workers*per {
		t.Fatalf("ledger counters %+v, want %d entries", lc, workers*per)
	}
}

// TestRespondAtFileLimitChangesNothing makes the commit of a Respond fail in
// bbolt (the file reaches its size limit): the response, the ledger entry
// and the deletion of the inbox record are all rolled back.
func TestRespondAtFileLimitChangesNothing(t *testing.T) {
	s := openStore(t, "", &Options{MaxBytes: 64 << 20, Now: atT0})
	cmd, e := command("at-limit", t0)
	in := receive(t, s, cmd)
	// Shrink the file limit of the open database below what the cap
	// allows, and fill the file up to it.
	s.db.MaxSize = 2 << 20
	var err error
	for i := 0; i < 1000 && err == nil; i++ {
		_, err = s.Append(Events, Critical, func(uint64) ([]byte, error) { return make([]byte, 64<<10), nil })
	}
	if !errors.Is(err, ErrFull) {
		t.Fatalf("set-up: append past the file limit: %v, want ErrFull", err)
	}
	before := stateOf(t, s, e.ID)
	_, err = s.Respond(in.Seq, e, respBuild(e.ID, MaxPayload))
	if !errors.Is(err, ErrFull) || !errors.Is(err, berrors.ErrMaxSizeReached) || !strings.HasPrefix(err.Error(), "store: ") {
		t.Fatalf("Respond past the file limit: %v, want ErrFull from bbolt's size limit", err)
	}
	if after := stateOf(t, s, e.ID); !after.equal(before) {
		t.Fatalf("a Respond that failed to commit changed the store:\n%+v\nbefore:\n%+v", after, before)
	}
	// Once there is room again it goes through, with the seq not yet used.
	all := readAll(t, s, Events)
	if err := s.Delete(Events, seqsOf(all)...); err != nil {
		t.Fatal(err)
	}
	if r := mustRespond(t, s, in.Seq, e, 10); r.Seq != 1 {
		t.Fatalf("response seq %d, want 1", r.Seq)
	}
	if recs := readAll(t, s, Inbox); len(recs) != 0 || mustLedger(t, s, e.ID) == nil {
		t.Fatalf("after Respond: inbox %v, ledger entry missing", seqsOf(recs))
	}
}

// TestLedgerFileHeadroom backs the room the file limit leaves for the
// ledger (one reserve, see Options.MaxBytes): churned with random command
// ids, the ledger's pages stay within pagesFor its byte bound, and a store
// with its records at cap and reserve and a full ledger stays within
// pagesFor(MaxBytes + 2·reserve).
func TestLedgerFileHeadroom(t *testing.T) {
	const maxBytes = 1 << 20 // a ledger bound of MinReserve
	for _, size := range []int{300, 1000, 2100, 9000} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			s := openStore(t, "", &Options{MaxBytes: maxBytes, Now: atT0})
			s.db.NoSync = true // sizes are under test, not durability
			budget := s.cfg.ledgerMaxBytes
			n := 3 * int(budget) / size
			var peak int64
			for i := range n {
				h := sha256.Sum256(fmt.Append(nil, i))
				id := fmt.Sprintf("%x", h[:16]) // random order, like the ids of NewID
				_, e := command(id, t0)
				r := mustRespond(t, s, 0, e, size)
				if err := s.Delete(Responses, r.Seq); err != nil {
					t.Fatal(err)
				}
				if i%16 == 0 || i == n-1 {
					peak = max(peak, ledgerPages(t, s))
				}
			}
			lc := ledgerCounters(t, s)
			if lc.bytes < budget-int64(size)-200 {
				t.Fatalf("set-up: ledger of %d bytes is not full (%d)", lc.bytes, budget)
			}
			if peak > pagesFor(budget) {
				t.Fatalf("ledger pages peaked at %d bytes for a ledger of at most %d: more than %d", peak, budget, pagesFor(budget))
			}
			t.Logf("ledger pages peaked at %.2f times its byte bound", float64(peak)/float64(budget))

			build := func(uint64) ([]byte, error) { return make([]byte, size), nil }
			var err error
			for err == nil {
				_, err = s.Append(Events, Critical, build)
			}
			if !errors.Is(err, ErrFull) || errors.Is(err, berrors.ErrMaxSizeReached) {
				t.Fatalf("filling: %v, want ErrFull from the cap", err)
			}
			st := mustStats(t, s)
			var used int64
			s.db.View(func(tx *bbolt.Tx) error { used = tx.Size(); return nil })
			if limit := pagesFor(st.MaxBytes + 2*st.Reserve); used > limit {
				t.Fatalf("%d bytes of pages, more than %d", used, limit)
			}
		})
	}
}

// ledgerPages returns the bytes of the pages of the ledger and its index.
func ledgerPages(t testing.TB, s *Store) int64 {
	t.Helper()
	var used int64
	if err := s.db.View(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bucketLedger, bucketLedgerID} {
			st := tx.Bucket(name).Stats()
			used += int64(st.BranchAlloc + st.LeafAlloc)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return used
}
