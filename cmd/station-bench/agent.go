package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"station.dev/agent/agent/contract"
	"station.dev/agent/internal/stationproc"
)

// agentSpec is one agent run: `station run --sim --config FILE`.
type agentSpec struct {
	id        string // station id (also the MQTT client id and topic level)
	broker    string // broker URL
	dataDir   string // "" = a new directory in the work directory
	telemetry string // [telemetry] interval; "" = the default
	maxBytes  string // [store] max_bytes; "" = the default
	unlimited bool   // no [local_api] submit rate: the benchmark is the only client
}

// agentProc is a running agent and a client of its local API.
type agentProc struct {
	*stationproc.Process
	spec agentSpec
	sock string
	http *http.Client
	// apiBytes counts the bytes read from the agent's API socket: what it wrote there.
	apiBytes atomic.Int64
}

// countingConn counts the bytes read from a connection.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// startAgent writes the agent's configuration and starts it. It does not wait for it: see
// waitReady.
func (b *bench) startAgent(spec agentSpec) (*agentProc, error) {
	if spec.dataDir == "" {
		spec.dataDir = filepath.Join(b.work, spec.id+".data")
	}
	sock := filepath.Join(b.work, spec.id+".sock")
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "station_id = %q\ndata_dir = %q\nsocket = %q\nlog_level = \"info\"\n",
		spec.id, spec.dataDir, sock)
	fmt.Fprintf(&cfg, "[mqtt]\nbroker = %q\nwindow = 32\n", spec.broker)
	fmt.Fprintf(&cfg, "[clock]\nassume_synced = true\n")
	if spec.telemetry != "" {
		fmt.Fprintf(&cfg, "[telemetry]\ninterval = %q\n", spec.telemetry)
	}
	if spec.maxBytes != "" {
		fmt.Fprintf(&cfg, "[store]\nmax_bytes = %q\n", spec.maxBytes)
	}
	if spec.unlimited {
		fmt.Fprintf(&cfg, "[local_api]\nsubmit_rate = -1\n")
	}
	path := filepath.Join(b.work, spec.id+".toml")
	if err := os.WriteFile(path, []byte(cfg.String()), 0o600); err != nil {
		return nil, err
	}
	p, err := b.startProc(spec.id, exec.Command(b.bin, "run", "--sim", "--config", path))
	if err != nil {
		return nil, err
	}
	a := &agentProc{Process: p, spec: spec, sock: sock}
	a.http = &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, "unix", sock)
				if err != nil {
					return nil, err
				}
				return countingConn{Conn: c, n: &a.apiBytes}, nil
			},
		},
	}
	return a, nil
}

// writeSnap is what an agent has written so far, in the counters that tell its store writes
// apart from the rest (see storeBytes).
type writeSnap struct {
	io     procIO
	api    int64 // bytes it wrote on its API socket
	log    int64 // bytes it wrote to its log (stdout and stderr)
	device int64 // bytes written to the data directory's device, by every process
}

// snap reads the agent's counters.
func (a *agentProc) snap(disk *diskCounter) (writeSnap, error) {
	io, err1 := readIO(a.Pid())
	fi, err2 := os.Stat(a.LogPath())
	dev, err3 := disk.written()
	if err := errors.Join(err1, err2, err3); err != nil {
		return writeSnap{}, err
	}
	return writeSnap{io: io, api: a.apiBytes.Load(), log: fi.Size(), device: dev}, nil
}

// storeBytes returns the bytes the agent wrote to its store between two snapshots, given the
// bytes it sent to the broker meanwhile (PUBLISH packets): everything it passed to write(2) and
// pwrite(2) (wchar) but its API answers, its log and its MQTT traffic. What remains are bbolt's
// page writes (and the Go runtime's 8-byte eventfd wake-ups, a few bytes). When the agent
// dirtied no page cache page at all (write_bytes did not move) it wrote nothing to disk: 0.
func storeBytes(s0, s1 writeSnap, mqtt int64) int64 {
	if s1.io.WriteBytes == s0.io.WriteBytes {
		return 0
	}
	return (s1.io.WChar - s0.io.WChar) - (s1.api - s0.api) - (s1.log - s0.log) - mqtt
}

// stopAgent stops the agent with SIGTERM (a clean stop) and reports a bad exit.
func (b *bench) stopAgent(a *agentProc) error {
	a.http.CloseIdleConnections()
	if err := b.stopProc(a.Process); err != nil {
		return fmt.Errorf("agent %s: %w\n%s", a.spec.id, err, a.Tail(5))
	}
	return nil
}

// waitReady waits until the agent's local API answers.
func (a *agentProc) waitReady(ctx context.Context, timeout time.Duration) error {
	if err := stationproc.WaitReady(ctx, a.Process, a.sock, timeout); err != nil {
		return fmt.Errorf("agent %s not ready: %w\n%s", a.spec.id, err, a.Tail(5))
	}
	return nil
}

// get fetches a JSON document from the local API.
func (a *agentProc) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://station"+path, nil)
	if err != nil {
		return err
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(b)))
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// queue returns the agent's queue.
func (a *agentProc) queue(ctx context.Context) (contract.QueueStatus, error) {
	var q contract.QueueStatus
	return q, a.get(ctx, contract.PathQueue, &q)
}

// tap presents one virtual card through POST /api/v0/tap and returns its result once the
// agent has answered.
func (a *agentProc) tap(ctx context.Context) (contract.TapResult, error) {
	body := strings.NewReader(`{"card":"unionpay-debit","count":1}`)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://station"+contract.PathTap, body)
	if err != nil {
		return contract.TapResult{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.http.Do(req)
	if err != nil {
		return contract.TapResult{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return contract.TapResult{}, fmt.Errorf("POST /api/v0/tap: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	line, err := bufio.NewReader(resp.Body).ReadBytes('\n')
	if err != nil {
		return contract.TapResult{}, fmt.Errorf("POST /api/v0/tap: %w", err)
	}
	var r contract.TapResult
	if err := json.Unmarshal(line, &r); err != nil {
		return contract.TapResult{}, fmt.Errorf("POST /api/v0/tap: %w", err)
	}
	if !r.OK {
		return r, fmt.Errorf("tap refused: %s", r.Error)
	}
	return r, nil
}

// waitQueue polls the queue every interval until cond holds, and returns the queue that met
// it. Polling the local API is how an operator watches the queue, too; the deadline bounds it.
func (a *agentProc) waitQueue(ctx context.Context, interval, timeout time.Duration, cond func(contract.QueueStatus) bool) (contract.QueueStatus, error) {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		q, err := a.queue(ctx)
		if err == nil && cond(q) {
			return q, nil
		}
		if a.Exited() {
			return q, fmt.Errorf("agent %s exited: %v\n%s", a.spec.id, a.Err(), a.Tail(5))
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New("condition not met")
			}
			return q, fmt.Errorf("agent %s queue after %v (depth %d): %w", a.spec.id, timeout, q.Depth, err)
		}
		select {
		case <-ctx.Done():
			return q, ctx.Err()
		case <-t.C:
		}
	}
}
