package release

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"station.dev/agent/agent/contract"
)

func TestCompare(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"1.0.0", "1.0.0", 0}, {"1.0.0", "1.0.1", -1}, {"1.10.0", "1.9.0", 1}, {"v2.0.0", "1.99.99", 1},
		{"1.0.0-rc.1", "1.0.0", -1}, {"1.0.0-rc.2", "1.0.0-rc.10", -1}, {"1.0.0-alpha", "1.0.0-1", 1},
		{"1.0.0+build.7", "1.0.0", 0}, {"dev", "0.0.1", -1}, {"1.0.0", "dev", 1}, {"1.0.0-a", "1.0.0-a.1", -1},
	} {
		if got := Compare(c.a, c.b); got != c.want {
			t.Errorf("Compare(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
	for _, bad := range []string{"", "1", "1.2", "01.2.3", "1.2.3-", "1.2.3-a/b", "1.2.x", "../1.2.3"} {
		if _, err := ParseVersion(bad); err == nil {
			t.Errorf("ParseVersion(%q) accepted", bad)
		}
	}
}

func manifest() contract.Manifest {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	return contract.Manifest{Version: "1.2.0", Arch: "arm64", SHA256: strings.Repeat("ab", 32), Size: 10,
		IssuedAt: now.Format(time.RFC3339Nano), ExpiresAt: now.Add(time.Hour).Format(time.RFC3339Nano)}
}

func TestSignOpen(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	r, err := Sign(manifest(), priv)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Open(r, []ed25519.PublicKey{other, pub})
	if err != nil || *m != manifest() {
		t.Fatalf("Open = %+v, %v", m, err)
	}
	if _, err := Open(r, []ed25519.PublicKey{other}); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("unknown key: %v, want ErrUnauthorized", err)
	}
	if _, err := Open(r, nil); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("no keys: %v, want ErrUnauthorized", err)
	}
	bad := r
	bad.Manifest = r.Manifest[:len(r.Manifest)-2] + "AA"
	if _, err := Open(bad, []ed25519.PublicKey{pub}); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("tampered manifest: %v, want ErrUnauthorized", err)
	}
	m0 := manifest()
	m0.Size = 0
	if _, err := Sign(m0, priv); !errors.Is(err, ErrMalformed) {
		t.Errorf("size 0: %v, want ErrMalformed", err)
	}
	mm := manifest()
	exp, _ := time.Parse(time.RFC3339, mm.ExpiresAt)
	if Expired(&mm, exp.Add(-time.Second)) || !Expired(&mm, exp) || !Expired(&mm, exp.Add(time.Hour)) {
		t.Error("Expired: wrong around expires_at")
	}
	mm.ExpiresAt = "soon"
	if !Expired(&mm, exp.Add(-time.Hour)) {
		t.Error("Expired: an unreadable expires_at must count as expired")
	}
}

func TestELFArch(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Skip(err)
	}
	if _, err := ELFArch(exe); err != nil {
		t.Errorf("ELFArch(test binary): %v", err)
	}
	script := filepath.Join(t.TempDir(), "s")
	os.WriteFile(script, []byte("#!/bin/sh\nexit 1\n"), 0o755)
	if _, err := ELFArch(script); err == nil || !strings.Contains(err.Error(), "--arch") {
		t.Errorf("ELFArch(script) = %v, want an error asking for --arch", err)
	}
}

func TestDecide(t *testing.T) {
	yes := func(string) bool { return true }
	no := func(string) bool { return false }
	// Nothing installed: the packaged binary.
	if run, _, ch := Decide(State{}, "1.0.0", yes); run != "" || ch {
		t.Errorf("empty state: run %q changed %v", run, ch)
	}
	// A pending version runs MaxAttempts times, then the committed one again.
	s := State{Committed: "1.1.0", Pending: "1.2.0", Previous: "1.1.0"}
	for i := 1; i <= MaxAttempts; i++ {
		run, next, ch := Decide(s, "1.0.0", yes)
		if run != "1.2.0" || !ch || next.Attempts != i {
			t.Fatalf("start %d: run %q attempts %d", i, run, next.Attempts)
		}
		s = next
	}
	run, next, ch := Decide(s, "1.0.0", yes)
	if run != "1.1.0" || !ch || next.Pending != "" || next.Outcome == nil || next.Outcome.State != contract.UpdateRolledBack {
		t.Fatalf("after %d starts: run %q, state %+v", MaxAttempts, run, next)
	}
	// A newer package wins over everything installed.
	if run, next, _ := Decide(State{Committed: "1.1.0", Pending: "1.2.0"}, "2.0.0", yes); run != "" || next.Pending != "" {
		t.Errorf("newer package: run %q pending %q", run, next.Pending)
	}
	// A missing file is not run.
	if run, next, _ := Decide(State{Committed: "1.1.0", Pending: "1.2.0"}, "1.0.0", no); run != "" || next.Pending != "" {
		t.Errorf("missing files: run %q pending %q", run, next.Pending)
	}
}

func TestStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if s, err := ReadState(dir); err != nil || s.Pending != "" {
		t.Fatalf("missing state: %+v %v", s, err)
	}
	want := State{Committed: "1.1.0", Pending: "1.2.0", Attempts: 2, BrokerRequired: true,
		Outcome: &Outcome{Version: "1.0.9", State: "committed", Recorded: true}}
	if err := WriteState(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := ReadState(dir)
	if err != nil || got.Committed != want.Committed || got.Attempts != 2 || got.Outcome == nil || !got.Outcome.Recorded {
		t.Fatalf("ReadState = %+v, %v", got, err)
	}
	if _, err := os.Stat(StatePath(dir) + ".tmp"); err == nil {
		t.Error("temporary file left behind")
	}
	os.WriteFile(StatePath(dir), []byte("{"), 0o600)
	if _, err := ReadState(dir); err == nil || !strings.Contains(err.Error(), "move it aside") {
		t.Errorf("broken state: %v", err)
	}
}
