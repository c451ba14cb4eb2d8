package stationproc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Config is one station for `station run --sim`: its directory, identity, broker and the
// configuration file written for it.
type Config struct {
	// Dir holds the station's data directory, socket and configuration file (see the methods).
	Dir        string
	StationID  string
	Broker     string   // broker URL (--broker)
	Prefix     string   // mqtt.topic_prefix; "" leaves the default
	BackoffMax string   // mqtt.backoff_max; "" means 1s, so reconnections in tests are quick
	TOML       string   // more tables, appended to the configuration file
	LogLevel   string   // --log-level; "" means debug
	Args       []string // more flags for `station run`
	Env        []string // more environment variables, NAME=value
}

// DataDir is the data directory (--data-dir).
func (c Config) DataDir() string { return filepath.Join(c.Dir, "data") }

// Socket is the local API socket (--socket).
func (c Config) Socket() string { return filepath.Join(c.Dir, "station.sock") }

// ConfigFile is the configuration file (--config).
func (c Config) ConfigFile() string { return filepath.Join(c.Dir, "station.toml") }

// StorePath is the store file in the data directory.
func (c Config) StorePath() string { return filepath.Join(c.DataDir(), "station.db") }

var (
	stations   atomic.Uint64
	unsafeName = regexp.MustCompile(`[^a-z0-9]+`)
)

// NewConfig returns a station of its own for the test: a new directory, and a station id (also
// its MQTT client id) that no other station of this run has, derived from the test's name.
func NewConfig(t testing.TB, broker string) Config {
	t.Helper()
	name := strings.Trim(unsafeName.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(name) > 24 {
		name = strings.Trim(name[:24], "-")
	}
	return Config{
		Dir:       t.TempDir(),
		StationID: fmt.Sprintf("st-%d-%s-%d", os.Getpid()%10000, name, stations.Add(1)),
		Broker:    broker,
	}
}

// Agent is one running `station run --sim` process of a test. It is killed (SIGKILL) when the
// test ends, and its log is printed if the test failed.
type Agent struct {
	t   testing.TB
	cfg Config
	p   *Process
}

// readyTimeout bounds the wait for an agent's local API in Start.
const readyTimeout = 30 * time.Second

// Start starts the agent and returns once its local API answers: the store is open, the socket
// listens and the agent serves.
func Start(t testing.TB, cfg Config) *Agent {
	t.Helper()
	a, err := Launch(t, cfg, readyTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Launch is Start with a timeout, returning its error rather than failing the test: it is safe
// to call from goroutines other than the test's.
func Launch(t testing.TB, cfg Config, timeout time.Duration) (*Agent, error) {
	a, err := Spawn(t, cfg)
	if err != nil {
		return nil, err
	}
	if err := a.WaitReady(timeout); err != nil {
		return nil, err
	}
	return a, nil
}

// Spawn starts the agent and returns at once, without waiting for it (see WaitReady). It is safe
// to call from goroutines other than the test's.
func Spawn(t testing.TB, cfg Config) (*Agent, error) {
	path, err := binary()
	if err != nil {
		return nil, err
	}
	if cfg.BackoffMax == "" {
		cfg.BackoffMax = "1s"
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "debug"
	}
	var toml strings.Builder
	toml.WriteString("[mqtt]\n")
	if cfg.Prefix != "" {
		fmt.Fprintf(&toml, "topic_prefix = %q\n", cfg.Prefix)
	}
	fmt.Fprintf(&toml, "backoff_max = %q\n", cfg.BackoffMax)
	toml.WriteString(cfg.TOML)
	if !strings.Contains(cfg.TOML, "[reader]") {
		// The tests tap in bursts: poll the emulated reader every millisecond, as the default
		// 100ms would pace a burst at about five taps a second.
		toml.WriteString("\n[reader]\npoll_interval = \"1ms\"\n")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(cfg.ConfigFile(), []byte(toml.String()), 0o600); err != nil {
		return nil, err
	}
	args := []string{"run", "--sim", "--config", cfg.ConfigFile(), "--broker", cfg.Broker,
		"--data-dir", cfg.DataDir(), "--socket", cfg.Socket(), "--station-id", cfg.StationID,
		"--log-level", cfg.LogLevel}
	cmd := command(path, append(args, cfg.Args...)...)
	cmd.Env = append(os.Environ(), cfg.Env...)
	// The log lives apart from Dir, which a test may put on a file system it fills up.
	p, err := StartProcess("agent "+cfg.StationID, cmd, filepath.Join(t.TempDir(), "station.log"), nil)
	if err != nil {
		return nil, err
	}
	a := &Agent{t: t, cfg: cfg, p: p}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("agent %s log (last lines):\n%s", cfg.StationID, p.Tail(300))
		}
	})
	return a, nil
}

// WaitReady waits at most timeout until the agent's local API answers. It fails early, with the
// end of the log, if the agent exits.
func (a *Agent) WaitReady(timeout time.Duration) error {
	if err := WaitReady(context.Background(), a.p, a.cfg.Socket(), timeout); err != nil {
		return fmt.Errorf("agent %s not running: %w\n%s", a.cfg.StationID, err, a.p.Tail(20))
	}
	return nil
}

// WaitReady polls the local API on socket until it answers GET /api/v0/status, giving up when p
// ends, ctx ends or timeout passes.
func WaitReady(ctx context.Context, p *Process, socket string, timeout time.Duration) error {
	c := HTTPClient(socket)
	defer c.CloseIdleConnections()
	return Poll(ctx, p, timeout, 20*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://station/api/v0/status", nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /api/v0/status: %s", resp.Status)
		}
		return nil
	})
}

// HTTPClient returns a client of the local API listening on socket; the host in request URLs
// is ignored.
func HTTPClient(socket string) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
			MaxIdleConnsPerHost: 16,
		},
	}
}

// Pid returns the agent's process id.
func (a *Agent) Pid() int { return a.p.Pid() }

// Alive reports whether the agent still runs.
func (a *Agent) Alive() bool { return !a.p.Exited() }

// Memory reads the agent's resident memory.
func (a *Agent) Memory() (Memory, error) { return ReadMemory(a.p.Pid()) }

// Log returns what the agent has logged so far.
func (a *Agent) Log() string { return a.p.Log() }

// HTTPClient returns a client of the agent's local API.
func (a *Agent) HTTPClient() *http.Client { return HTTPClient(a.cfg.Socket()) }

// stopTimeout bounds the wait for an agent to end after SIGTERM.
const stopTimeout = 20 * time.Second

// Kill kills the agent with SIGKILL, as a power cut would, and waits until it is gone.
func (a *Agent) Kill() { a.p.Kill() }

// Stop asks the agent to stop with SIGTERM, waits for it and returns its exit status. An agent
// still running stopTimeout later fails the test and is killed.
func (a *Agent) Stop() int {
	a.t.Helper()
	if err := a.p.Stop(stopTimeout); errors.Is(err, ErrKilled) {
		a.t.Error(err)
	}
	return a.p.ExitCode()
}

// CLI runs a station subcommand against this agent (--socket is added) and returns its stdout,
// its stderr and its exit status.
func (a *Agent) CLI(args ...string) (stdout, stderr string, code int) {
	a.t.Helper()
	return Run(a.t, append(args, "--socket", a.cfg.Socket())...)
}

// TapLine is one line of `station tap --json` (and the answer of POST /api/v0/records).
type TapLine struct {
	OK    bool   `json:"ok"`
	ID    string `json:"id"`
	Seq   uint64 `json:"seq"`
	Type  string `json:"type"`
	Error string `json:"error"`
}

// Tap runs `station tap --json` with args and returns its lines and its exit status. A line that
// is not JSON fails the test.
func (a *Agent) Tap(args ...string) ([]TapLine, int) {
	a.t.Helper()
	out, stderr, code := a.CLI(append([]string{"tap", "--json"}, args...)...)
	var lines []TapLine
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var tl TapLine
		if err := json.Unmarshal([]byte(l), &tl); err != nil {
			a.t.Fatalf("tap --json line %q: %v (stderr %q)", l, err, stderr)
		}
		lines = append(lines, tl)
	}
	return lines, code
}

// MustTap taps and fails the test unless the command succeeded and every presentation was
// recorded with an id and a seq.
func (a *Agent) MustTap(args ...string) []TapLine {
	a.t.Helper()
	lines, code := a.Tap(args...)
	if code != 0 {
		a.t.Fatalf("station tap %v: exit %d, lines %+v", args, code, lines)
	}
	for _, l := range lines {
		if !l.OK || l.ID == "" || l.Seq == 0 {
			a.t.Fatalf("station tap %v: not recorded: %+v", args, l)
		}
	}
	return lines
}

// Taps is `station tap --json --count N` running in the background.
type Taps struct {
	Lines <-chan TapLine  // each line as it comes; closed when the output ends
	Done  <-chan struct{} // closed once the command has ended
	p     *Process
}

// StartTaps starts `station tap --json --count count` against the agent. It is killed when the
// test ends.
func (a *Agent) StartTaps(count int) *Taps {
	a.t.Helper()
	cmd := Command(a.t, "tap", "--json", "--count", strconv.Itoa(count), "--socket", a.cfg.Socket())
	// A pipe of its own rather than StdoutPipe: Wait closes that one as soon as the command
	// ends, possibly before its last lines are read.
	out, w, err := os.Pipe()
	if err != nil {
		a.t.Fatal(err)
	}
	cmd.Stdout = w
	p, err := StartProcess("station tap", cmd, filepath.Join(a.t.TempDir(), "tap.log"), nil)
	w.Close() // the child has its own copy
	if err != nil {
		out.Close()
		a.t.Fatal(err)
	}
	lines := make(chan TapLine, 64)
	done := make(chan struct{})
	b := &Taps{Lines: lines, Done: done, p: p}
	go func() {
		defer close(done)
		defer close(lines)
		defer out.Close()
		scanLines(out, func(l []byte) bool {
			var tl TapLine
			if json.Unmarshal(l, &tl) == nil {
				lines <- tl
			}
			return true
		})
		<-p.Done()
	}()
	a.t.Cleanup(func() {
		b.Kill()
		for range lines {
		}
		<-done
	})
	return b
}

// Kill kills the tap command.
func (b *Taps) Kill() { _ = b.p.Signal(syscall.SIGKILL) }
