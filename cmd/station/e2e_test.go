package main

// End-to-end tests: the real station binary, run as a separate process (so it can be killed with
// SIGKILL), on emulated hardware, against a real broker (embedded, or Mosquitto in CI).

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"station.dev/agent/mqtt/brokertest"
)

var stationBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "station-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	stationBin = filepath.Join(dir, "station")
	args := []string{"build", "-o", stationBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, ".")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building station:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// agentProc is one running `station run --sim`.
type agentProc struct {
	t       *testing.T
	cmd     *exec.Cmd
	socket  string
	dataDir string
	id      string
	prefix  string
	broker  string
	log     *syncBuffer
	exited  chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type agentSpec struct {
	dataDir, socket, id, broker, prefix string
	extra                               []string
	extraTOML                           string   // appended to the config file
	env                                 []string // added to the environment
}

// startAgent starts the agent and waits until it logs that it runs (store open, socket listening).
func startAgent(t *testing.T, s agentSpec) *agentProc {
	t.Helper()
	args := []string{"run", "--sim", "--broker", s.broker, "--data-dir", s.dataDir,
		"--socket", s.socket, "--station-id", s.id, "--log-level", "debug"}
	cfg := filepath.Join(s.dataDir, "..", s.id+".toml")
	// The tests tap in bursts: poll the emulated reader every millisecond, as the default 100ms
	// would pace a burst at about five taps a second.
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("[mqtt]\ntopic_prefix = %q\nbackoff_max = \"1s\"\n[reader]\npoll_interval = \"1ms\"\n%s", s.prefix, s.extraTOML)), 0o600); err != nil {
		t.Fatal(err)
	}
	args = append(args, "--config", cfg)
	args = append(args, s.extra...)
	cmd := stationCommand(args...)
	cmd.Env = append(os.Environ(), s.env...)
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &agentProc{t: t, cmd: cmd, socket: s.socket, dataDir: s.dataDir, id: s.id, prefix: s.prefix,
		broker: s.broker, log: &syncBuffer{}, exited: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			p.log.Write([]byte(line + "\n"))
			if strings.Contains(line, "station agent running") {
				once.Do(func() { close(ready) })
			}
		}
	}()
	go func() {
		_ = cmd.Wait()
		pw.Close()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("agent log:\n%s", p.log.String())
		}
	})
	select {
	case <-ready:
	case <-p.exited:
		t.Fatalf("agent exited at start:\n%s", p.log.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("agent not running after 30s:\n%s", p.log.String())
	}
	return p
}

func (p *agentProc) kill(sig syscall.Signal) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		p.t.Errorf("agent did not stop within 20s of %v", sig)
	}
}

// station runs a CLI command against this agent and returns stdout, stderr and the exit code.
func (p *agentProc) station(args ...string) (string, string, int) {
	return runStation(append(args, "--socket", p.socket)...)
}

// stationCommand runs the station binary, under the emulator when the tests run under one
// (.ci/arm-tests.sh sets STATION_TEST_QEMU).
func stationCommand(args ...string) *exec.Cmd {
	if q := os.Getenv("STATION_TEST_QEMU"); q != "" {
		return exec.Command(q, append([]string{stationBin}, args...)...)
	}
	return exec.Command(stationBin, args...)
}

func runStation(args ...string) (string, string, int) {
	cmd := stationCommand(args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	return out.String(), errb.String(), code
}

type wireRecord struct {
	ID   string `json:"id"`
	Seq  uint64 `json:"seq"`
	Type string `json:"type"`
	Card *struct {
		Kind, Token, Masked string
	} `json:"card"`
}

type tapLine struct {
	OK    bool   `json:"ok"`
	ID    string `json:"id"`
	Seq   uint64 `json:"seq"`
	Error string `json:"error"`
}

// newSpec makes a fresh station spec with its own directory, socket and topics.
func newSpec(t *testing.T, broker string) agentSpec {
	dir := t.TempDir()
	return agentSpec{
		dataDir: filepath.Join(dir, "data"),
		socket:  filepath.Join(dir, "station.sock"),
		id:      "e2e-" + fmt.Sprint(os.Getpid()%10000) + "-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))[:min(20, len(t.Name()))],
		broker:  broker,
		prefix:  brokertest.UniquePrefix(t),
	}
}

// collect reads events until every id in want has arrived, checking order and duplicates.
// It returns the records in arrival order.
func collectEvents(t *testing.T, sub *brokertest.Subscriber, want map[string]bool, timeout time.Duration) []wireRecord {
	t.Helper()
	var got []wireRecord
	missing := len(want)
	seen := map[string]bool{}
	deadline := time.After(timeout)
	for missing > 0 {
		select {
		case m := <-sub.C:
			var r wireRecord
			if err := json.Unmarshal(m.Payload, &r); err != nil {
				t.Fatalf("event is not JSON: %q", m.Payload)
			}
			got = append(got, r)
			if want[r.ID] && !seen[r.ID] {
				missing--
			}
			seen[r.ID] = true
		case <-deadline:
			t.Fatalf("%d of %d recorded events never reached the broker", missing, len(want))
		}
	}
	return got
}

// checkSeq checks that the delivered records cover seq 1..max without gaps, and that a seq seen
// twice always carries the same id (duplicates only by redelivery).
func checkSeq(t *testing.T, recs []wireRecord) uint64 {
	t.Helper()
	bySeq := map[uint64]string{}
	var maxSeq uint64
	for _, r := range recs {
		if id, ok := bySeq[r.Seq]; ok && id != r.ID {
			t.Fatalf("seq %d carried two ids: %s and %s", r.Seq, id, r.ID)
		}
		bySeq[r.Seq] = r.ID
		maxSeq = max(maxSeq, r.Seq)
	}
	for s := uint64(1); s <= maxSeq; s++ {
		if _, ok := bySeq[s]; !ok {
			t.Fatalf("seq %d missing (max %d): gap in the events stream", s, maxSeq)
		}
	}
	return maxSeq
}

func tapJSON(t *testing.T, p *agentProc, args ...string) []tapLine {
	t.Helper()
	out, stderr, code := p.station(append([]string{"tap", "--json"}, args...)...)
	var lines []tapLine
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var tl tapLine
		if err := json.Unmarshal([]byte(l), &tl); err != nil {
			t.Fatalf("tap --json line %q: %v", l, err)
		}
		lines = append(lines, tl)
	}
	if code != 0 {
		t.Fatalf("station tap exit %d: %s\n%s", code, stderr, out)
	}
	return lines
}

func TestTapReachesBroker(t *testing.T) {
	url := brokertest.URL(t)
	s := newSpec(t, url)
	sub := brokertest.Subscribe(t, url, s.prefix+"/+/events", 1000)
	p := startAgent(t, s)

	lines := tapJSON(t, p, "--count", "5")
	lines = append(lines, tapJSON(t, p, "--card", "ntag")...)
	want := map[string]bool{}
	for _, l := range lines {
		if !l.OK || l.ID == "" || l.Seq == 0 {
			t.Fatalf("tap not recorded: %+v", l)
		}
		want[l.ID] = true
	}
	recs := collectEvents(t, sub, want, 30*time.Second)
	checkSeq(t, recs)
	var taps int
	for _, r := range recs {
		if r.Type == "card.tap" {
			taps++
			if r.Card == nil || r.Card.Token == "" {
				t.Fatalf("card.tap without a card token: %+v", r)
			}
		}
	}
	if taps != 6 {
		t.Fatalf("got %d card.tap records, want 6", taps)
	}
	// Human output and the status command.
	out, _, code := p.station("tap")
	if code != 0 || !strings.HasPrefix(out, "recorded  seq ") {
		t.Fatalf("tap: exit %d, %q", code, out)
	}
	out, stderr, code := p.station("status")
	if code != 0 || !strings.Contains(out, s.id) || !strings.Contains(out, "queue") {
		t.Fatalf("status: exit %d, %q %q", code, out, stderr)
	}
}

func TestTapsWhileBrokerDownDeliveredInOrder(t *testing.T) {
	// The outage needs a broker this test can stop: always embedded.
	b := brokertest.Embedded(t, "127.0.0.1:0")
	addr := b.Addr()
	url := b.URL()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	s := newSpec(t, url)
	p := startAgent(t, s)
	lines := tapJSON(t, p, "--count", "30")
	want := map[string]bool{}
	for _, l := range lines {
		if !l.OK {
			t.Fatalf("tap while offline not recorded: %+v", l)
		}
		want[l.ID] = true
	}
	out, _, _ := p.station("queue", "--json")
	var q struct{ Depth int }
	if err := json.Unmarshal([]byte(out), &q); err != nil || q.Depth < 30 {
		t.Fatalf("queue while offline: %q (%v)", out, err)
	}

	b2 := brokertest.Embedded(t, addr)
	sub := brokertest.Subscribe(t, b2.URL(), s.prefix+"/+/events", 1000)
	recs := collectEvents(t, sub, want, 60*time.Second)
	checkSeq(t, recs)
	var last uint64
	for _, r := range recs {
		if r.Seq <= last {
			t.Fatalf("out of order: seq %d after %d", r.Seq, last)
		}
		last = r.Seq
	}
}

func TestKill9MidBurstLosesNothing(t *testing.T) {
	url := brokertest.URL(t)
	s := newSpec(t, url)
	sub := brokertest.Subscribe(t, url, s.prefix+"/+/events", 5000)
	status := brokertest.Subscribe(t, url, s.prefix+"/+/status", 100)
	want := map[string]bool{}
	for round := 0; round < 3; round++ {
		p := startAgent(t, s)
		cmd := stationCommand("tap", "--json", "--count", "400", "--socket", s.socket)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		n := 0
		for sc.Scan() {
			var tl tapLine
			if json.Unmarshal(sc.Bytes(), &tl) == nil && tl.OK {
				want[tl.ID] = true // reported recorded: must reach the broker
				n++
			}
			if n == 25+round*40 {
				p.kill(syscall.SIGKILL)
			}
		}
		_ = cmd.Wait()
		if n < 25+round*40 {
			t.Fatalf("round %d: only %d taps recorded before the kill", round, n)
		}
		p.kill(syscall.SIGKILL)
		waitStatus(t, status, "offline", "lost")
	}
	p := startAgent(t, s)
	recs := collectEvents(t, sub, want, 60*time.Second)
	checkSeq(t, recs)
	waitStatus(t, status, "online", "")
	p.kill(syscall.SIGTERM)
	waitStatus(t, status, "offline", "shutdown")
}

// waitStatus waits for a status message with the given state and reason.
func waitStatus(t *testing.T, sub *brokertest.Subscriber, state, reason string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case m := <-sub.C:
			var st struct{ State, Reason string }
			_ = json.Unmarshal(m.Payload, &st)
			if st.State == state && st.Reason == reason {
				return
			}
		case <-deadline:
			t.Fatalf("no status %s/%s within 30s", state, reason)
		}
	}
}

func TestGarbageStoreIsMovedAside(t *testing.T) {
	url := brokertest.URL(t)
	s := newSpec(t, url)
	if err := os.MkdirAll(s.dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.dataDir, "station.db"), bytes.Repeat([]byte("not a database "), 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	sub := brokertest.Subscribe(t, url, s.prefix+"/+/events", 100)
	p := startAgent(t, s)
	deadline := time.After(30 * time.Second)
	for found := false; !found; {
		select {
		case m := <-sub.C:
			var r wireRecord
			_ = json.Unmarshal(m.Payload, &r)
			found = r.Type == "store.recovered"
		case <-deadline:
			t.Fatal("no store.recovered alarm")
		}
	}
	matches, _ := filepath.Glob(filepath.Join(s.dataDir, "station.db.broken-*"))
	if len(matches) != 1 {
		t.Fatalf("broken store not kept aside: %v", matches)
	}
	if l := tapJSON(t, p); len(l) != 1 || !l[0].OK {
		t.Fatalf("tap after recovery: %+v", l)
	}
}

func TestSecondAgentOnLiveSocketRefused(t *testing.T) {
	url := brokertest.URL(t)
	s := newSpec(t, url)
	startAgent(t, s)
	s2 := s
	s2.dataDir = filepath.Join(t.TempDir(), "data2")
	s2.id += "-b"
	_, stderr, code := runStation("run", "--sim", "--broker", url, "--data-dir", s2.dataDir, "--socket", s.socket, "--station-id", s2.id)
	if code != 1 || !strings.Contains(stderr, "already serving") || strings.Count(strings.TrimSpace(stderr), "\n") > 2 {
		t.Fatalf("second agent: exit %d, stderr %q", code, stderr)
	}
}

func TestBrokerRefusingConnectionKeepsAgentUp(t *testing.T) {
	// A port where nothing listens: connections are refused.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := newSpec(t, "tcp://"+addr)
	p := startAgent(t, s)
	if l := tapJSON(t, p); len(l) != 1 || !l[0].OK {
		t.Fatalf("tap with the broker refusing: %+v", l)
	}
	out, _, code := p.station("status", "--json")
	var st struct {
		Link struct {
			Connected bool
			LastError string `json:"last_error"`
		}
	}
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.Link.Connected {
		t.Fatalf("status: %d %q", code, out)
	}
}

func TestCLIErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("station_id = \"x\"\n[mqtt]\nbroker = \"tcp://h:1\"\nwindoww = 3\n"), 0o600)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"config", "check", bad}, 1, "unknown key mqtt.windoww"},
		{[]string{"run", "--config", bad}, 1, "unknown key mqtt.windoww"},
		{[]string{"status", "--socket", filepath.Join(dir, "none.sock")}, 1, "cannot reach the agent at"},
		{[]string{"tap", "--count", "0", "--socket", "x"}, 2, "--count"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"status", "--bogus"}, 2, "bogus"},
	} {
		_, stderr, code := runStation(tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("station %v: exit %d, stderr %q; want exit %d and %q", tc.args, code, stderr, tc.code, tc.want)
		}
		if strings.Contains(stderr, "panic") || strings.Contains(stderr, "goroutine ") {
			t.Errorf("station %v panicked: %s", tc.args, stderr)
		}
	}
}

func TestSimPeripheralsEndToEnd(t *testing.T) {
	url := brokertest.URL(t)
	s := newSpec(t, url)
	sub := brokertest.Subscribe(t, url, s.prefix+"/+/events", 100)
	p := startAgent(t, s)

	out, stderr, code := p.station("selftest", "--json")
	var st struct {
		OK     bool
		Checks []struct {
			Name string
			OK   bool
		}
	}
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || !st.OK || len(st.Checks) < 6 {
		t.Fatalf("selftest in --sim: exit %d %q %q", code, out, stderr)
	}

	if _, stderr, code := p.station("sim", "door", "open"); code != 0 {
		t.Fatalf("sim door open: %d %s", code, stderr)
	}
	waitType(t, sub, "door.open")
	if _, stderr, code := p.station("sim", "env", "--temp", "70"); code != 0 {
		t.Fatalf("sim env: %d %s", code, stderr)
	}
	r := waitType(t, sub, "env.alarm")
	if r["data"].(map[string]any)["quantity"] != "temp_high" {
		t.Fatalf("env.alarm: %v", r)
	}
	if _, stderr, code := p.station("sim", "env", "--temp", "20"); code != 0 {
		t.Fatalf("sim env: %d %s", code, stderr)
	}
	waitType(t, sub, "env.ok")
	out, _, _ = p.station("status")
	if !strings.Contains(out, "OPEN") || !strings.Contains(out, "showing") {
		t.Fatalf("status does not show the door and the indicator: %s", out)
	}
	if _, stderr, code := p.station("sim", "door", "ajar"); code != 2 || !strings.Contains(stderr, "want") {
		t.Fatalf("bad sim usage: %d %q", code, stderr)
	}
}

// waitType waits for a record of the given type on the events topic.
func waitType(t *testing.T, sub *brokertest.Subscriber, typ string) map[string]any {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case m := <-sub.C:
			var r map[string]any
			_ = json.Unmarshal(m.Payload, &r)
			if r["type"] == typ {
				return r
			}
		case <-deadline:
			t.Fatalf("no %s record within 30s", typ)
		}
	}
}

func TestSystemdNotify(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s := newSpec(t, brokertest.URL(t))
	s.env = []string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=2000000"}
	startAgent(t, s)
	seen := map[string]bool{}
	buf := make([]byte, 4096)
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	for !(seen["READY=1"] && seen["WATCHDOG=1"] && seen["STATUS"]) {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("notifications seen %v: %v", seen, err)
		}
		for _, l := range strings.Split(string(buf[:n]), "\n") {
			if strings.HasPrefix(l, "STATUS=") && strings.Contains(l, "waiting") {
				seen["STATUS"] = true
			}
			seen[l] = true
		}
	}
}

// TestNoCardDataLeaves taps cards whose numbers and UIDs are known, then scans everything the
// agent wrote or sent: the store file, its log and every message on the broker. None may hold a
// card number, track data or a raw UID.
func TestNoCardDataLeaves(t *testing.T) {
	url := brokertest.URL(t)
	s := newSpec(t, url)
	all := brokertest.Subscribe(t, url, s.prefix+"/#", 1000)
	p := startAgent(t, s)
	const pan = "6217007391528461" // synthetic, Luhn-valid
	const uid = "5AC3E19B"
	emvCard := filepath.Join(t.TempDir(), "card.json")
	os.WriteFile(emvCard, []byte(`{"name":"leak-emv","kind":"emv","pan":"`+pan+`","psn":"01","expiry":"2909","aid":"A000000333010101","uid":"`+uid+`"}`), 0o600)
	tagFile := filepath.Join(t.TempDir(), "tag.json")
	os.WriteFile(tagFile, []byte(`{"name":"leak-tag","kind":"uid","uid":"04A1B2C3D4E5F6"}`), 0o600)
	var want = map[string]bool{}
	for _, l := range append(tapJSON(t, p, "--card-file", emvCard, "--same", "--count", "3"), tapJSON(t, p, "--card-file", tagFile)...) {
		if !l.OK {
			t.Fatalf("tap: %+v", l)
		}
		want[l.ID] = true
	}
	collectEvents(t, &brokertest.Subscriber{C: all.C}, want, 30*time.Second)
	p.kill(syscall.SIGTERM)

	secrets := []string{pan, pan[6:], pan[:12], uid, strings.ToLower(uid), "04A1B2C3D4E5F6", "04a1b2c3d4e5f6", pan + "D2909"}
	scan := func(what string, b []byte) {
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s contains card data %q", what, s)
			}
		}
	}
	db, err := os.ReadFile(filepath.Join(s.dataDir, "station.db"))
	if err != nil {
		t.Fatal(err)
	}
	scan("the store file", db)
	scan("the agent's log", []byte(p.log.String()))
	for {
		select {
		case m := <-all.C:
			scan("message on "+m.Topic, m.Payload)
			continue
		default:
		}
		break
	}
}
