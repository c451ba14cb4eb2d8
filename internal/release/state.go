package release

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"station.dev/agent/internal/atomicfile"
)

// The version state lives in <data_dir>/versions/state.json, beside the installed versions
// (<data_dir>/versions/<V>/station) and the download in progress (<data_dir>/versions/download/).
// It is small and always replaced whole: written to a temporary file, fsynced, renamed over the
// old one, and the directory fsynced, so a power cut leaves either the old or the new state.

// MaxAttempts is how many starts a pending version gets: the start after the last one runs the
// committed version again.
const MaxAttempts = 3

// State is the version state.
type State struct {
	// Committed is the installed version that runs when nothing is pending; "" means the packaged
	// binary (the launcher itself).
	Committed string `json:"committed,omitempty"`
	// Pending is the version on trial, "" when none.
	Pending string `json:"pending,omitempty"`
	// Previous is the version that ran when the latest update was installed: where a rollback
	// of Pending goes back to (it is Committed's version, or the packaged one's).
	Previous string `json:"previous,omitempty"`
	// Attempts counts the starts of Pending.
	Attempts int `json:"attempts,omitempty"`
	// BrokerRequired: the previous version was connected to the broker when it installed
	// Pending, so Pending must connect too to commit.
	BrokerRequired bool `json:"broker_required,omitempty"`
	// Outcome is how the latest update ended, until the agent has recorded it.
	Outcome *Outcome `json:"outcome,omitempty"`
}

// Outcome is the end of an update: committed or rolled back.
type Outcome struct {
	Version  string `json:"version"`
	State    string `json:"state"` // contract.UpdateCommitted or contract.UpdateRolledBack
	Reason   string `json:"reason,omitempty"`
	Recorded bool   `json:"recorded,omitempty"`
}

// Dir returns the versions directory of a data directory.
func Dir(dataDir string) string { return filepath.Join(dataDir, "versions") }

// StatePath returns the state file of a data directory.
func StatePath(dataDir string) string { return filepath.Join(Dir(dataDir), "state.json") }

// BinaryPath returns where version v is installed.
func BinaryPath(dataDir, v string) string { return filepath.Join(Dir(dataDir), v, "station") }

// ReadState reads the state; a missing file is the zero State.
func ReadState(dataDir string) (State, error) {
	var s State
	b, err := os.ReadFile(StatePath(dataDir))
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("version state: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return State{}, fmt.Errorf("version state %s: %w (move it aside to start the packaged version)", StatePath(dataDir), err)
	}
	return s, nil
}

// WriteState replaces the state durably.
func WriteState(dataDir string, s State) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(Dir(dataDir), 0o750); err != nil {
		return fmt.Errorf("version state: %w", err)
	}
	if err := atomicfile.Write(StatePath(dataDir), append(b, '\n'), 0o640); err != nil {
		return fmt.Errorf("version state: %w", err)
	}
	return nil
}

// Decide is the launcher's choice at a start: the version to run ("" means the packaged binary,
// self) and the state to write before running it (changed reports whether it differs).
// installed reports whether a version's binary is present.
//
//   - A pending version newer than self runs, its attempt counted first; after MaxAttempts
//     starts that never committed, the committed version runs again and the outcome says why.
//   - Otherwise the committed version runs if it is newer than self: a `dpkg -i` of a newer
//     package wins over every installed update.
func Decide(s State, self string, installed func(v string) bool) (run string, next State, changed bool) {
	next = s
	if s.Pending != "" {
		switch {
		case Compare(s.Pending, self) <= 0 && s.Pending != self:
			// The package is newer: the trial is moot.
			next.Pending, next.Attempts = "", 0
			next.Outcome = &Outcome{Version: s.Pending, State: "rolled_back", Reason: "the installed package " + self + " is newer"}
		case !installed(s.Pending):
			next.Pending, next.Attempts = "", 0
			next.Outcome = &Outcome{Version: s.Pending, State: "rolled_back", Reason: "its file is missing"}
		case s.Attempts >= MaxAttempts:
			next.Pending, next.Attempts = "", 0
			next.Outcome = &Outcome{Version: s.Pending, State: "rolled_back",
				Reason: fmt.Sprintf("it did not become healthy in %d starts", MaxAttempts)}
		default:
			next.Attempts++
			return s.Pending, next, true
		}
		changed = true
	}
	if next.Committed != "" && Compare(next.Committed, self) > 0 && installed(next.Committed) {
		return next.Committed, next, changed
	}
	return "", next, changed
}
