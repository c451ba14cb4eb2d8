package main

// End-to-end tests: the real station binary, run as a separate process (so it can be killed with
// SIGKILL), on emulated hardware, against a real broker (embedded, or Mosquitto in CI).

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"station.dev/agent/internal/stationproc"
	"station.dev/agent/mqtt/brokertest"
)

func TestMain(m *testing.M) { os.Exit(stationproc.Main(m)) }

// newSpec makes a fresh station spec with its own directory, socket and topics, logging at
// debug level (TestNoCardDataLeaves reads everything it logs).
func newSpec(t *testing.T, broker string) stationproc.Config {
	s := stationproc.NewConfig(t, broker)
	s.Prefix = brokertest.UniquePrefix(t)
	s.LogLevel = "debug"
	return s
}

// collect reads events until every id in want has arrived, checking order and duplicates.
// It returns the records in arrival order.
func collectEvents(t *testing.T, sub *brokertest.Client, want map[string]bool, timeout time.Duration) []stationproc.Record {
	t.Helper()
	var got []stationproc.Record
	missing := len(want)
	seen := map[string]bool{}
	deadline := time.After(timeout)
	for missing > 0 {
		select {
		case m := <-sub.C:
			r, err := stationproc.ParseRecord(m.Topic, m.Payload, time.Now())
			if err != nil {
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

func TestTapReachesBroker(t *testing.T) {
	url := brokertest.URL(t)
	s := newSpec(t, url)
	sub := brokertest.Subscribe(t, url, s.Prefix+"/+/events", 1000)
	p := stationproc.Start(t, s)

	lines := p.MustTap("--count", "5")
	lines = append(lines, p.MustTap("--card", "ntag")...)
	want := map[string]bool{}
	for _, l := range lines {
		if !l.OK || l.ID == "" || l.Seq == 0 {
			t.Fatalf("tap not recorded: %+v", l)
		}
		want[l.ID] = true
	}
	recs := collectEvents(t, sub, want, 30*time.Second)
	stationproc.CheckSeq(t, recs)
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
	out, _, code := p.CLI("tap")
	if code != 0 || !strings.HasPrefix(out, "recorded  seq ") {
		t.Fatalf("tap: exit %d, %q", code, out)
	}
	out, stderr, code := p.CLI("status")
	if code != 0 || !strings.Contains(out, s.StationID) || !strings.Contains(out, "queue") {
		t.Fatalf("status: exit %d, %q %q", code, out, stderr)
	}
}

func TestTapsWhileBrokerDownDeliveredInOrder(t *testing.T) {
	// The outage needs a broker this test can stop: always embedded.
	b := brokertest.Embedded(t, "127.0.0.1:0")
	url := b.URL()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	s := newSpec(t, url)
	p := stationproc.Start(t, s)
	lines := p.MustTap("--count", "30")
	want := map[string]bool{}
	for _, l := range lines {
		if !l.OK {
			t.Fatalf("tap while offline not recorded: %+v", l)
		}
		want[l.ID] = true
	}
	out, _, _ := p.CLI("queue", "--json")
	var q struct{ Depth int }
	if err := json.Unmarshal([]byte(out), &q); err != nil || q.Depth < 30 {
		t.Fatalf("queue while offline: %q (%v)", out, err)
	}

	b.Restart(t)
	sub := brokertest.Subscribe(t, b.URL(), s.Prefix+"/+/events", 1000)
	recs := collectEvents(t, sub, want, 60*time.Second)
	stationproc.CheckSeq(t, recs)
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
	sub := brokertest.Subscribe(t, url, s.Prefix+"/+/events", 5000)
	status := brokertest.Subscribe(t, url, s.Prefix+"/+/status", 100)
	want := map[string]bool{}
	for round := 0; round < 3; round++ {
		p := stationproc.Start(t, s)
		taps := p.StartTaps(400)
		n := 0
		for tl := range taps.Lines {
			if tl.OK {
				want[tl.ID] = true // reported recorded: must reach the broker
				n++
			}
			if n == 25+round*40 {
				p.Kill()
			}
		}
		<-taps.Done
		if n < 25+round*40 {
			t.Fatalf("round %d: only %d taps recorded before the kill", round, n)
		}
		p.Kill()
		waitStatus(t, status, "offline", "lost")
	}
	p := stationproc.Start(t, s)
	recs := collectEvents(t, sub, want, 60*time.Second)
	stationproc.CheckSeq(t, recs)
	waitStatus(t, status, "online", "")
	p.Stop()
	waitStatus(t, status, "offline", "shutdown")
}

// waitStatus waits for a status message with the given state and reason.
func waitStatus(t *testing.T, sub *brokertest.Client, state, reason string) {
	t.Helper()
	sub.NextMatch(t, 30*time.Second, "status "+state+"/"+reason, func(m brokertest.Message) bool {
		var st struct{ State, Reason string }
		_ = json.Unmarshal(m.Payload, &st)
		return st.State == state && st.Reason == reason
	})
}

func TestGarbageStoreIsMovedAside(t *testing.T) {
	url := brokertest.URL(t)
	s := newSpec(t, url)
	if err := os.MkdirAll(s.DataDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.StorePath(), bytes.Repeat([]byte("not a database "), 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	sub := brokertest.Subscribe(t, url, s.Prefix+"/+/events", 100)
	p := stationproc.Start(t, s)
	waitType(t, sub, "store.recovered")
	matches, _ := filepath.Glob(s.StorePath() + ".broken-*")
	if len(matches) != 1 {
		t.Fatalf("broken store not kept aside: %v", matches)
	}
	if l := p.MustTap(); len(l) != 1 || !l[0].OK {
		t.Fatalf("tap after recovery: %+v", l)
	}
}

func TestSecondAgentOnLiveSocketRefused(t *testing.T) {
	url := brokertest.URL(t)
	s := newSpec(t, url)
	stationproc.Start(t, s)
	s2 := stationproc.NewConfig(t, url)
	_, stderr, code := stationproc.Run(t, "run", "--sim", "--broker", url, "--data-dir", s2.DataDir(), "--socket", s.Socket(), "--station-id", s2.StationID)
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
	p := stationproc.Start(t, s)
	if l := p.MustTap(); len(l) != 1 || !l[0].OK {
		t.Fatalf("tap with the broker refusing: %+v", l)
	}
	out, _, code := p.CLI("status", "--json")
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
		_, stderr, code := stationproc.Run(t, tc.args...)
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
	sub := brokertest.Subscribe(t, url, s.Prefix+"/+/events", 100)
	p := stationproc.Start(t, s)

	out, stderr, code := p.CLI("selftest", "--json")
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

	if _, stderr, code := p.CLI("sim", "door", "open"); code != 0 {
		t.Fatalf("sim door open: %d %s", code, stderr)
	}
	waitType(t, sub, "door.open")
	if _, stderr, code := p.CLI("sim", "env", "--temp", "70"); code != 0 {
		t.Fatalf("sim env: %d %s", code, stderr)
	}
	r := waitType(t, sub, "env.alarm")
	if r["data"].(map[string]any)["quantity"] != "temp_high" {
		t.Fatalf("env.alarm: %v", r)
	}
	if _, stderr, code := p.CLI("sim", "env", "--temp", "20"); code != 0 {
		t.Fatalf("sim env: %d %s", code, stderr)
	}
	waitType(t, sub, "env.ok")
	out, _, _ = p.CLI("status")
	if !strings.Contains(out, "OPEN") || !strings.Contains(out, "showing") {
		t.Fatalf("status does not show the door and the indicator: %s", out)
	}
	if _, stderr, code := p.CLI("sim", "door", "ajar"); code != 2 || !strings.Contains(stderr, "want") {
		t.Fatalf("bad sim usage: %d %q", code, stderr)
	}
}

// waitType waits for a record of the given type on the events topic.
func waitType(t *testing.T, sub *brokertest.Client, typ string) map[string]any {
	t.Helper()
	var r map[string]any
	sub.NextMatch(t, 30*time.Second, typ+" record", func(m brokertest.Message) bool {
		r = nil
		_ = json.Unmarshal(m.Payload, &r)
		return r["type"] == typ
	})
	return r
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
	s.Env = []string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=2000000"}
	stationproc.Start(t, s)
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
	all := brokertest.Subscribe(t, url, s.Prefix+"/#", 1000)
	p := stationproc.Start(t, s)
	const pan = "6217007391528461" // synthetic, Luhn-valid
	const uid = "5AC3E19B"
	emvCard := filepath.Join(t.TempDir(), "card.json")
	os.WriteFile(emvCard, []byte(`{"name":"leak-emv","kind":"emv","pan":"`+pan+`","psn":"01","expiry":"2909","aid":"A000000333010101","uid":"`+uid+`"}`), 0o600)
	tagFile := filepath.Join(t.TempDir(), "tag.json")
	os.WriteFile(tagFile, []byte(`{"name":"leak-tag","kind":"uid","uid":"04A1B2C3D4E5F6"}`), 0o600)
	var want = map[string]bool{}
	for _, l := range append(p.MustTap("--card-file", emvCard, "--same", "--count", "3"), p.MustTap("--card-file", tagFile)...) {
		if !l.OK {
			t.Fatalf("tap: %+v", l)
		}
		want[l.ID] = true
	}
	collectEvents(t, all, want, 30*time.Second)
	p.Stop()

	secrets := []string{pan, pan[6:], pan[:12], uid, strings.ToLower(uid), "04A1B2C3D4E5F6", "04a1b2c3d4e5f6", pan + "D2909"}
	scan := func(what string, b []byte) {
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s contains card data %q", what, s)
			}
		}
	}
	db, err := os.ReadFile(s.StorePath())
	if err != nil {
		t.Fatal(err)
	}
	scan("the store file", db)
	scan("the agent's log", []byte(p.Log()))
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
