//go:build faults

package faulttest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"station.dev/agent/mqtt/brokertest"
)

// agentSpec describes one station: its directory (data, socket and config file), id and broker.
type agentSpec struct {
	dir        string
	id         string
	broker     string
	prefix     string
	backoffMax string // mqtt.backoff_max; default 1s
	toml       string // more tables, appended to the config file
}

func (s agentSpec) dataDir() string { return filepath.Join(s.dir, "data") }
func (s agentSpec) socket() string  { return filepath.Join(s.dir, "station.sock") }
func (s agentSpec) config() string  { return filepath.Join(s.dir, "station.toml") }
func (s agentSpec) storePath() string {
	return filepath.Join(s.dataDir(), "station.db")
}

// newSpec returns a station of its own (directory, id, topic prefix) for the test.
func newSpec(t testing.TB, broker string) agentSpec {
	name := strings.NewReplacer("/", "-", "_", "-").Replace(strings.ToLower(t.Name()))
	if len(name) > 24 {
		name = name[:24]
	}
	return agentSpec{
		dir:    t.TempDir(),
		id:     fmt.Sprintf("ft-%d-%s", os.Getpid()%10000, strings.Trim(name, "-.")),
		broker: broker,
		prefix: brokertest.UniquePrefix(t),
	}
}

// agent is one running `station run --sim` process.
type agent struct {
	t      testing.TB
	spec   agentSpec
	cmd    *exec.Cmd
	log    *logTail
	ready  chan struct{} // closed once the agent runs
	exited chan struct{}
}

// startAgent starts the agent and waits until it logs that it runs (store open, socket
// listening).
func startAgent(t testing.TB, s agentSpec) *agent {
	t.Helper()
	a, err := launchAgent(t, s, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// launchAgent starts the agent and waits at most timeout for it to run. It is safe to call from
// goroutines other than the test's.
func launchAgent(t testing.TB, s agentSpec, timeout time.Duration) (*agent, error) {
	a, err := spawnAgent(t, s)
	if err != nil {
		return nil, err
	}
	select {
	case <-a.ready:
		return a, nil
	case <-a.exited:
		return nil, fmt.Errorf("agent %s exited at start:\n%s", s.id, a.log.String())
	case <-time.After(timeout):
		return nil, fmt.Errorf("agent %s not running after %s:\n%s", s.id, timeout, a.log.String())
	}
}

// spawnAgent starts the agent process; its ready channel is closed once it runs.
func spawnAgent(t testing.TB, s agentSpec) (*agent, error) {
	if s.backoffMax == "" {
		s.backoffMax = "1s"
	}
	// The tests tap in bursts: poll the emulated reader every millisecond, as the default 100ms
	// would pace a burst at about five taps a second.
	cfg := fmt.Sprintf("[mqtt]\ntopic_prefix = %q\nbackoff_max = %q\n[reader]\npoll_interval = \"1ms\"\n%s", s.prefix, s.backoffMax, s.toml)
	if err := os.WriteFile(s.config(), []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(stationBin, "run", "--sim", "--config", s.config(), "--broker", s.broker,
		"--data-dir", s.dataDir(), "--socket", s.socket(), "--station-id", s.id, "--log-level", "info")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	a := &agent{t: t, spec: s, cmd: cmd, log: newLogTail(300), ready: make(chan struct{}), exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		once := sync.Once{}
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			a.log.add(line)
			if strings.Contains(line, "station agent running") {
				once.Do(func() { close(a.ready) })
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	go func() {
		<-scanned // Wait must not run before the pipe is read to its end
		_ = cmd.Wait()
		close(a.exited)
	}()
	t.Cleanup(func() {
		a.kill(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("agent %s log (last lines):\n%s", s.id, a.log.String())
		}
	})
	return a, nil
}

// kill sends sig and waits for the process to end (SIGKILL after 20s).
func (a *agent) kill(sig syscall.Signal) {
	select {
	case <-a.exited:
		return
	default:
	}
	_ = a.cmd.Process.Signal(sig)
	select {
	case <-a.exited:
	case <-time.After(20 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.exited
		a.t.Errorf("agent %s did not stop within 20s of %v", a.spec.id, sig)
	}
}

// alive reports whether the process still runs.
func (a *agent) alive() bool {
	select {
	case <-a.exited:
		return false
	default:
		return true
	}
}

// exitCode is the process's exit status once it has ended.
func (a *agent) exitCode() int {
	<-a.exited
	return a.cmd.ProcessState.ExitCode()
}

// cli runs a station CLI command against this agent.
func (a *agent) cli(args ...string) (stdout, stderr string, code int) {
	return runStation(append(args, "--socket", a.spec.socket())...)
}

func runStation(args ...string) (stdout, stderr string, code int) {
	cmd := exec.Command(stationBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
		errb.WriteString(err.Error())
	}
	return out.String(), errb.String(), code
}

// tapLine is one line of `station tap --json`.
type tapLine struct {
	OK    bool   `json:"ok"`
	ID    string `json:"id"`
	Seq   uint64 `json:"seq"`
	Type  string `json:"type"`
	Error string `json:"error"`
}

// tap runs `station tap --json` with args and returns its lines and exit status.
func (a *agent) tap(args ...string) ([]tapLine, int) {
	a.t.Helper()
	out, stderr, code := a.cli(append([]string{"tap", "--json"}, args...)...)
	var lines []tapLine
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var tl tapLine
		if err := json.Unmarshal([]byte(l), &tl); err != nil {
			a.t.Fatalf("tap --json line %q: %v (stderr %q)", l, err, stderr)
		}
		lines = append(lines, tl)
	}
	return lines, code
}

// mustTap taps and fails the test unless every presentation was recorded.
func (a *agent) mustTap(args ...string) []tapLine {
	a.t.Helper()
	lines, code := a.tap(args...)
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

// tapBurst is `station tap --json --count N` running in the background.
type tapBurst struct {
	cmd   *exec.Cmd
	lines chan tapLine // closed when the command's output ends
	done  chan struct{}
}

func (a *agent) startTaps(count int) *tapBurst {
	a.t.Helper()
	cmd := exec.Command(stationBin, "tap", "--json", "--count", strconv.Itoa(count), "--socket", a.spec.socket())
	out, err := cmd.StdoutPipe()
	if err != nil {
		a.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	b := &tapBurst{cmd: cmd, lines: make(chan tapLine, 64), done: make(chan struct{})}
	go func() {
		defer close(b.done)
		defer close(b.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var tl tapLine
			if json.Unmarshal(sc.Bytes(), &tl) == nil {
				b.lines <- tl
			}
		}
		_ = cmd.Wait()
	}()
	a.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		for range b.lines {
		}
		<-b.done
	})
	return b
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
	out, stderr, code := a.cli("status", "--json")
	var st statusDoc
	if code != 0 {
		return st, fmt.Errorf("station status: exit %d: %s", code, stderr)
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("station status --json: %v: %q", err, out)
	}
	return st, nil
}

// api returns an HTTP client for the agent's local API.
func (a *agent) api() *http.Client {
	sock := a.spec.socket()
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			},
			MaxIdleConnsPerHost: 16,
		},
	}
}

// submit posts a record of another station program (POST /api/v0/records).
func submit(c *http.Client, typ string, data map[string]any) (tapLine, int, error) {
	body, err := json.Marshal(map[string]any{"type": typ, "data": data})
	if err != nil {
		return tapLine{}, 0, err
	}
	resp, err := c.Post("http://station/api/v0/records", "application/json", bytes.NewReader(body))
	if err != nil {
		return tapLine{}, 0, err
	}
	defer resp.Body.Close()
	var tl tapLine
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return tapLine{}, resp.StatusCode, err
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

// memory is a process's resident memory, from /proc/PID/status.
type memory struct {
	RSS  int64 // VmRSS: all resident pages, the store's mapped file pages included
	Anon int64 // RssAnon: the process's own memory (heap, stacks), without mapped files
}

func (m memory) String() string {
	return fmt.Sprintf("VmRSS %.1f MiB, RssAnon %.1f MiB", mib(m.RSS), mib(m.Anon))
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func (a *agent) memory() (memory, error) {
	return readMemory(a.cmd.Process.Pid)
}

func readMemory(pid int) (memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, err
	}
	var m memory
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			m.RSS = kb << 10
		case "RssAnon:":
			m.Anon = kb << 10
		}
	}
	if m.RSS == 0 {
		return m, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return m, nil
}

// memorySampler samples a process's memory in the background and keeps the peak.
type memorySampler struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	peak memory
	n    int
}

func sampleMemory(pid int, every time.Duration) *memorySampler {
	s := &memorySampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if m, err := readMemory(pid); err == nil {
				s.mu.Lock()
				s.peak.RSS = max(s.peak.RSS, m.RSS)
				s.peak.Anon = max(s.peak.Anon, m.Anon)
				s.n++
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// Stop ends the sampling and returns the peak and the number of samples.
func (s *memorySampler) Stop() (memory, int) {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak, s.n
}

// logTail keeps the last lines a process logged.
type logTail struct {
	mu    sync.Mutex
	lines []string
	next  int
	full  bool
}

func newLogTail(n int) *logTail { return &logTail{lines: make([]string, n)} }

func (l *logTail) add(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines[l.next] = line
	l.next = (l.next + 1) % len(l.lines)
	if l.next == 0 {
		l.full = true
	}
}

func (l *logTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	start, n := 0, l.next
	if l.full {
		start, n = l.next, len(l.lines)
	}
	for i := 0; i < n; i++ {
		b.WriteString(l.lines[(start+i)%len(l.lines)])
		b.WriteByte('\n')
	}
	return b.String()
}
