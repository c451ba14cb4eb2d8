package store

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// Refused input is answered with Answer, which leaves the ledger alone.
func TestAnswerAddsNoLedgerEntry(t *testing.T) {
	s := openStore(t, "", &Options{Now: atT0})
	cmd, _ := command("junk-1", t0)
	in := receive(t, s, cmd)
	r, err := s.Answer(in.Seq, respBuild("junk-1", 10))
	if err != nil {
		t.Fatalf("Answer: %v", err)
	}
	if r.Stream != Responses || r.Seq != 1 {
		t.Fatalf("Answer appended %+v", r)
	}
	if e := mustLedger(t, s, "junk-1"); e != nil {
		t.Fatalf("a refused command has a ledger entry: %+v", e)
	}
	if got := readAll(t, s, Inbox); len(got) != 0 {
		t.Fatalf("inbox after Answer: %d records", len(got))
	}
	if lc := ledgerCounters(t, s); lc.depth != 0 {
		t.Fatalf("ledger depth %d after Answer", lc.depth)
	}
}

// A protected entry (an executed signed command, kept until it expires) survives any number of
// unprotected ones, and goes once its Keep has passed by the time of a later entry.
func TestProtectedEntryIsNotPushedOut(t *testing.T) {
	s := openStore(t, "", &Options{Now: atT0, LedgerMaxEntries: 10})
	cmd, e := command("signed-ping", t0)
	e.Keep = t0.Add(time.Hour)
	in := receive(t, s, cmd)
	mustRespond(t, s, in.Seq, e, 10)
	for i := range 50 {
		c, ei := command(fmt.Sprintf("unsigned-%d", i), t0.Add(time.Duration(i)*time.Second))
		mustRespond(t, s, receive(t, s, c).Seq, ei, 10)
	}
	got := mustLedger(t, s, "signed-ping")
	if got == nil || !got.Keep.Equal(e.Keep) {
		t.Fatalf("the protected entry was pushed out by unprotected ones: %+v", got)
	}
	if lc := ledgerCounters(t, s); lc.depth > 10 {
		t.Fatalf("ledger depth %d, bound 10", lc.depth)
	}
	// A later entry at or after Keep: no longer protected.
	c, late := command("late", t0.Add(time.Hour))
	mustRespond(t, s, receive(t, s, c).Seq, late, 10)
	if got := mustLedger(t, s, "signed-ping"); got != nil {
		t.Fatalf("an entry past its Keep stayed beyond the bound: %+v", got)
	}
}

// Keep survives a restart and a rebuild of the index, and old entries without it still read.
func TestKeepSurvivesReopen(t *testing.T) {
	path := t.TempDir() + "/s.db"
	s, err := Open(path, &Options{Now: atT0})
	if err != nil {
		t.Fatal(err)
	}
	cmd, e := command("k-1", t0)
	e.Keep = t0.Add(7 * 24 * time.Hour)
	mustRespond(t, s, receive(t, s, cmd).Seq, e, 10)
	cmd2, e2 := command("k-2", t0)
	mustRespond(t, s, receive(t, s, cmd2).Seq, e2, 10)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, path, &Options{Now: atT0})
	if got := mustLedger(t, s, "k-1"); got == nil || !got.Keep.Equal(e.Keep) || string(got.Response) == "" {
		t.Fatalf("k-1 after reopen: %+v", got)
	}
	if got := mustLedger(t, s, "k-2"); got == nil || !got.Keep.IsZero() {
		t.Fatalf("k-2 after reopen: %+v", got)
	}
}

// MarkStarted leaves an entry that answers for the command until Respond replaces it.
func TestMarkStarted(t *testing.T) {
	s := openStore(t, "", &Options{Now: atT0})
	cmd, e := command("restart-1", t0)
	in := receive(t, s, cmd)
	e.Response = []byte(`{"id":"restart-1","ok":false,"error":{"code":"failed","message":"interrupted"}}`)
	if err := s.MarkStarted(e); err != nil {
		t.Fatalf("MarkStarted: %v", err)
	}
	got := mustLedger(t, s, "restart-1")
	if got == nil || string(got.Response) != string(e.Response) {
		t.Fatalf("after MarkStarted: %+v", got)
	}
	if n := len(readAll(t, s, Responses)); n != 0 {
		t.Fatalf("MarkStarted appended %d responses", n)
	}
	e.Response = nil
	r := mustRespond(t, s, in.Seq, e, 10)
	got = mustLedger(t, s, "restart-1")
	if got == nil || string(got.Response) != string(r.Payload) {
		t.Fatalf("Respond did not replace the started entry: %+v", got)
	}
	if lc := ledgerCounters(t, s); lc.depth != 1 {
		t.Fatalf("ledger depth %d, want 1", lc.depth)
	}
	if err := s.MarkStarted(LedgerEntry{ID: string(make([]byte, 256))}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("MarkStarted with a long id: %v", err)
	}
}
