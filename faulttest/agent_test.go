//go:build faults

package faulttest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync/atomic"
	"testing"

	"station.dev/agent/agent/contract"
	"station.dev/agent/internal/stationproc"
	"station.dev/agent/mqtt/brokertest"
)

// newSpec returns a station of its own (directory, id, topic prefix) for the test.
func newSpec(t testing.TB, broker string) stationproc.Config {
	s := stationproc.NewConfig(t, broker)
	s.Prefix = brokertest.UniquePrefix(t)
	s.LogLevel = "info" // fleets of agents and long bursts: debug lines would be most of the work
	// The tests submit kiosk records as fast as the agent takes them: no per-client rate.
	s.TOML += "[local_api]\nsubmit_rate = -1\n"
	return s
}

// agent is a running agent, with the status the tests read.
type agent struct {
	*stationproc.Agent
	t testing.TB
}

// startAgent starts the agent and waits until its local API answers.
func startAgent(t testing.TB, s stationproc.Config) *agent {
	t.Helper()
	return &agent{stationproc.Start(t, s), t}
}

// statusDoc is the part of `station status --json` the tests read.
type statusDoc struct {
	State       string `json:"state"`
	ClockSynced bool   `json:"clock_synced"`
	Reader      struct {
		State string `json:"state"`
	} `json:"reader"`
	Queue struct {
		Depth    int    `json:"depth"`
		Bytes    int64  `json:"bytes"`
		MaxBytes int64  `json:"max_bytes"`
		Full     bool   `json:"full"`
		Refused  uint64 `json:"refused"`
		Evicted  uint64 `json:"evicted"`
		DiskFree uint64 `json:"disk_free_bytes"`
		Streams  map[string]struct {
			Depth   int    `json:"depth"`
			Bytes   int64  `json:"bytes"`
			LastSeq uint64 `json:"last_seq"`
		} `json:"streams"`
	} `json:"queue"`
	Link struct {
		Connected bool   `json:"connected"`
		Connects  uint64 `json:"connects"`
		Failures  uint64 `json:"failures"`
		LastError string `json:"last_error"`
		InFlight  int    `json:"in_flight"`
		Published uint64 `json:"published"`
		Acked     uint64 `json:"acked"`
	} `json:"link"`
	Indicator *struct {
		Pattern string   `json:"pattern"`
		Active  []string `json:"active"`
	} `json:"indicator"`
}

// status runs `station status --json`.
func (a *agent) status() statusDoc {
	a.t.Helper()
	st, err := a.tryStatus()
	if err != nil {
		a.t.Fatal(err)
	}
	return st
}

func (a *agent) tryStatus() (statusDoc, error) {
	out, stderr, code := a.CLI("status", "--json")
	var st statusDoc
	if code != 0 {
		return st, fmt.Errorf("station status: exit %d: %s", code, stderr)
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("station status --json: %v: %q", err, out)
	}
	return st, nil
}

var submitKeys atomic.Uint64

// submit posts a record of another station program (POST /api/v0/records), under a key of its own.
func submit(c *http.Client, typ string, data map[string]any) (stationproc.TapLine, int, error) {
	key := fmt.Sprintf("faulttest-%d-%d", os.Getpid(), submitKeys.Add(1))
	body, err := json.Marshal(map[string]any{"key": key, "type": typ, "data": data})
	if err != nil {
		return stationproc.TapLine{}, 0, err
	}
	resp, err := c.Post("http://station"+contract.PathRecords, "application/json", bytes.NewReader(body))
	if err != nil {
		return stationproc.TapLine{}, 0, err
	}
	defer resp.Body.Close()
	var tl stationproc.TapLine
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return stationproc.TapLine{}, resp.StatusCode, err
	}
	if resp.StatusCode == http.StatusOK {
		err = json.Unmarshal(b, &tl)
	} else {
		var e struct{ Error string }
		_ = json.Unmarshal(b, &e)
		tl.Error = e.Error
	}
	return tl, resp.StatusCode, err
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
