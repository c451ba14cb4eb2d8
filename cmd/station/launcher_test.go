package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"station.dev/agent/internal/release"
)

// A pending version that is not a program at all: each start fails at exec, is counted, and
// after release.MaxAttempts the launcher runs the packaged version again.
func TestLaunchRollsBackAFileThatIsNotAProgram(t *testing.T) {
	t.Setenv(envLaunched, "")
	dir := t.TempDir()
	bin := release.BinaryPath(dir, "1.2.0")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("\x00\x01 not an executable"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := release.WriteState(dir, release.State{Pending: "1.2.0", Previous: version}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= release.MaxAttempts; i++ {
		err := launch(dir, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "the next start tries again") {
			t.Fatalf("start %d: %v, want the exec error", i, err)
		}
		if st, _ := release.ReadState(dir); st.Attempts != i {
			t.Fatalf("start %d: %d attempts counted", i, st.Attempts)
		}
	}
	if err := launch(dir, io.Discard); err != nil {
		t.Fatalf("after %d failed starts: %v, want the packaged version to run", release.MaxAttempts, err)
	}
	st, _ := release.ReadState(dir)
	if st.Pending != "" || st.Outcome == nil || st.Outcome.State != "rolled_back" || st.Outcome.Version != "1.2.0" {
		t.Errorf("state %+v, outcome %+v", st, st.Outcome)
	}
}
