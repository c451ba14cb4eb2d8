package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	fleetcmd "station.dev/agent/agent/command"
	"station.dev/agent/agent/contract"
	"station.dev/agent/mqtt/brokertest"
	"station.dev/agent/mqtt/operator"
)

// fleetRun runs `station fleet ARGS…` in process and returns its output.
type fleetResult struct {
	stdout, stderr string
	err            error
}

func fleetRun(args ...string) fleetResult {
	var out, errb bytes.Buffer
	err := cmdFleet(args, &out, &errb)
	return fleetResult{out.String(), errb.String(), err}
}

// fleetStart runs `station fleet ARGS…` on its own goroutine.
func fleetStart(args ...string) <-chan fleetResult {
	ch := make(chan fleetResult, 1)
	go func() { ch <- fleetRun(args...) }()
	return ch
}

func fleetWait(t *testing.T, ch <-chan fleetResult) fleetResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(60 * time.Second):
		t.Fatal("station fleet did not return")
		return fleetResult{}
	}
}

var publicKeyLineRE = regexp.MustCompile(`(?m)^public_keys = \["([A-Za-z0-9+/=]+)"\]$`)

// keygen makes a key pair in a temporary directory; it returns the private key file and the
// public key from the printed config line.
func keygen(t *testing.T) (string, string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "fleet.key")
	r := fleetRun("keygen", "--out", out)
	if r.err != nil {
		t.Fatalf("keygen: %v", r.err)
	}
	m := publicKeyLineRE.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("keygen printed no public_keys line:\n%s", r.stdout)
	}
	return out, m[1]
}

func TestFleetKeygen(t *testing.T) {
	out, pubB64 := keygen(t)
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("private key mode %v, want 0600", fi.Mode().Perm())
	}
	priv, err := readSigningKey(out)
	if err != nil {
		t.Fatal(err)
	}
	pub := priv.Public().(ed25519.PublicKey)
	if base64.StdEncoding.EncodeToString(pub) != pubB64 {
		t.Errorf("the config line's key %s is not the private key's public key", pubB64)
	}
	// The config line is accepted by the station's key parser, and the kid printed is its kid.
	keys, err := fleetcmd.ParseKeys([]string{pubB64})
	if err != nil {
		t.Fatal(err)
	}
	r := fleetRun("keygen", "--out", filepath.Join(t.TempDir(), "k2"), "--json")
	var j map[string]string
	if err := json.Unmarshal([]byte(r.stdout), &j); r.err != nil || err != nil || j["kid"] == "" || j["public_key"] == "" {
		t.Fatalf("keygen --json: %v, %v: %s", r.err, err, r.stdout)
	}
	if k2, err := fleetcmd.ParseKeys([]string{j["public_key"]}); err != nil || k2.IDs()[0] != j["kid"] {
		t.Errorf("keygen --json kid %s does not match its key: %v", j["kid"], err)
	}
	if ids := keys.IDs(); len(ids) != 1 {
		t.Fatal(ids)
	}

	// The public key file is PEM SPKI of the same key.
	pubPEM, err := os.ReadFile(out + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(pubPEM)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		t.Fatalf("public key file: %s", pubPEM)
	}
	if k, err := x509.ParsePKIXPublicKey(blk.Bytes); err != nil || !pub.Equal(k) {
		t.Errorf("public key file holds another key: %v", err)
	}

	// OpenSSL reads the private key (PEM PKCS#8) too.
	if bin, err := exec.LookPath("openssl"); err == nil {
		if b, err := exec.Command(bin, "pkey", "-in", out, "-noout").CombinedOutput(); err != nil {
			t.Errorf("openssl cannot read the private key: %v: %s", err, b)
		}
	}

	// It refuses to overwrite either file, and leaves them as they were.
	before, _ := os.ReadFile(out)
	r = fleetRun("keygen", "--out", out)
	if r.err == nil || !strings.Contains(r.err.Error(), "already exists") {
		t.Fatalf("second keygen: %v", r.err)
	}
	if after, _ := os.ReadFile(out); !bytes.Equal(before, after) {
		t.Fatal("second keygen changed the key")
	}
	other := filepath.Join(t.TempDir(), "k3")
	if err := os.WriteFile(other+".pub", []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := fleetRun("keygen", "--out", other); r.err == nil {
		t.Fatal("keygen overwrote an existing .pub file")
	}
	if _, err := os.Stat(other); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("keygen left a private key without its public key: %v", err)
	}
}

// fakeStation answers the commands on its topic like an agent would, after checking them with
// command.Decode and the given keys. It returns the commands it decoded.
type fakeStation struct {
	t   *testing.T
	mu  sync.Mutex
	got []*contract.Command
}

func startFakeStation(t *testing.T, url, prefix, id string, keys *fleetcmd.Keys, answer func(*contract.Command) contract.Response) *fakeStation {
	t.Helper()
	fs := &fakeStation{t: t}
	cmds := brokertest.Subscribe(t, url, prefix+"/"+id+"/cmd", 16)
	fleet := brokertest.Subscribe(t, url, prefix+"/_fleet/cmd", 16)
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		for {
			var m brokertest.Message
			select {
			case m = <-cmds.C:
			case m = <-fleet.C:
			case <-done:
				return
			}
			cmd, _, derr := fleetcmd.Decode(m.Payload, keys)
			var resp contract.Response
			switch {
			case cmd == nil:
				t.Errorf("station %s: undecodable command %q: %v", id, m.Payload, derr)
				continue
			case derr != nil:
				resp = contract.Response{ID: cmd.ID, Error: derr}
			case !cmd.For(id):
				resp = contract.Response{ID: cmd.ID, Error: &contract.Error{Code: contract.CodeWrongTarget, Message: "not me"}}
			default:
				fs.mu.Lock()
				fs.got = append(fs.got, cmd)
				fs.mu.Unlock()
				resp = answer(cmd)
				resp.ID = cmd.ID
			}
			resp.TS = time.Now().UTC().Format(time.RFC3339Nano)
			b, _ := json.Marshal(resp)
			brokertest.Publish(t, url, prefix+"/"+id+"/resp", b, false)
		}
	}()
	return fs
}

func (fs *fakeStation) commands() []*contract.Command {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return append([]*contract.Command(nil), fs.got...)
}

func pong(*contract.Command) contract.Response {
	return contract.Response{OK: true, Result: json.RawMessage(`{"pong":true}`)}
}

func TestFleetSendPrintsTheResponse(t *testing.T) {
	url := brokertest.URL(t)
	p := brokertest.UniquePrefix(t)
	st := startFakeStation(t, url, p, "st-1", nil, pong)

	r := fleetWait(t, fleetStart("send", "st-1", "ping", `{"n": 1}`, "--broker", url, "--topic-prefix", p, "--expires", "1m"))
	if r.err != nil {
		t.Fatalf("send: %v\n%s", r.err, r.stderr)
	}
	if !regexp.MustCompile(`(?m)^st-1\s+ok\s+\{"pong":true\}$`).MatchString(r.stdout) {
		t.Fatalf("stdout = %q", r.stdout)
	}
	cmds := st.commands()
	if len(cmds) != 1 {
		t.Fatalf("the station got %d commands", len(cmds))
	}
	c := cmds[0]
	if c.Name != "ping" || c.Target != "st-1" || string(c.Args) != `{"n":1}` || len(c.ID) != 32 {
		t.Errorf("command = %+v", c)
	}
	exp, err := time.Parse(time.RFC3339Nano, c.ExpiresAt)
	if err != nil || time.Until(exp) < 30*time.Second || time.Until(exp) > time.Minute {
		t.Errorf("expires_at = %q, want about a minute from now", c.ExpiresAt)
	}
	if !strings.Contains(r.stderr, c.ID) {
		t.Errorf("stderr does not name the command id: %q", r.stderr)
	}

	// --json: one object per response.
	r = fleetWait(t, fleetStart("send", "st-1", "ping", "--broker", url, "--topic-prefix", p, "--json"))
	if r.err != nil {
		t.Fatal(r.err)
	}
	var line struct {
		Station  string            `json:"station"`
		Response contract.Response `json:"response"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &line); err != nil || line.Station != "st-1" || !line.Response.OK || line.Response.ID == "" {
		t.Fatalf("--json output %q: %v", r.stdout, err)
	}
	if strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("--json printed more than one line: %q", r.stdout)
	}
}

func TestFleetSendSigned(t *testing.T) {
	keyFile, pubB64 := keygen(t)
	keys, err := fleetcmd.ParseKeys([]string{pubB64})
	if err != nil {
		t.Fatal(err)
	}
	url := brokertest.URL(t)
	p := brokertest.UniquePrefix(t)
	// The fake station refuses what does not verify with the key (command.Decode with keys).
	st := startFakeStation(t, url, p, "st-1", keys, pong)

	r := fleetWait(t, fleetStart("send", "st-1", "ping", "--key", keyFile, "--broker", url, "--topic-prefix", p, "--wait", "20s"))
	if r.err != nil {
		t.Fatalf("signed send: %v\n%s%s", r.err, r.stdout, r.stderr)
	}
	if len(st.commands()) != 1 {
		t.Fatalf("the station accepted %d commands", len(st.commands()))
	}
	// Unsigned, the same station answers unauthorized: exit status 1, the reason printed.
	r = fleetWait(t, fleetStart("send", "st-1", "ping", "--broker", url, "--topic-prefix", p, "--wait", "20s"))
	if !errors.Is(r.err, errSilent) || !strings.Contains(r.stdout, "FAILED  unauthorized: ") {
		t.Fatalf("unsigned send: err %v, stdout %q", r.err, r.stdout)
	}
}

func TestFleetSendFailures(t *testing.T) {
	url := brokertest.URL(t)
	p := brokertest.UniquePrefix(t)
	startFakeStation(t, url, p, "st-1", nil, func(c *contract.Command) contract.Response {
		return contract.Response{Error: &contract.Error{Code: contract.CodeUnknownCommand, Message: "no command " + c.Name}}
	})
	r := fleetWait(t, fleetStart("send", "st-1", "self-destruct", "--broker", url, "--topic-prefix", p))
	if !errors.Is(r.err, errSilent) || !strings.Contains(r.stdout, "FAILED  unknown_command: no command self-destruct") {
		t.Fatalf("failed command: err %v, stdout %q", r.err, r.stdout)
	}

	// Nobody answers: exit 1 with a message naming the station.
	r = fleetWait(t, fleetStart("send", "st-nobody", "ping", "--broker", url, "--topic-prefix", p, "--wait", "300ms"))
	if r.err == nil || errors.Is(r.err, errSilent) || !strings.Contains(r.err.Error(), "no response from st-nobody") {
		t.Fatalf("unanswered: %v", r.err)
	}

	// --wait 0: sent, nothing awaited, the command id printed.
	r = fleetRun("send", "st-nobody", "ping", "--broker", url, "--topic-prefix", p, "--wait", "0", "--json")
	var sent map[string]string
	if r.err != nil || json.Unmarshal([]byte(r.stdout), &sent) != nil || len(sent["id"]) != 32 || sent["target"] != "st-nobody" {
		t.Fatalf("--wait 0: %v, %q", r.err, r.stdout)
	}

	// No broker there: one line that says what to check.
	r = fleetRun("ls", "--broker", "tcp://127.0.0.1:1", "--wait", "10ms")
	if r.err == nil || !strings.Contains(r.err.Error(), "cannot reach the broker") || strings.Contains(r.err.Error(), "\n") {
		t.Fatalf("unreachable broker: %v", r.err)
	}
}

func TestFleetSendAll(t *testing.T) {
	url := brokertest.URL(t)
	p := brokertest.UniquePrefix(t)
	a := startFakeStation(t, url, p, "st-a", nil, pong)
	b := startFakeStation(t, url, p, "st-b", nil, pong)
	r := fleetWait(t, fleetStart("--all", "ping", "--broker", url, "--topic-prefix", p, "--wait", "2s"))
	if _, ok := r.err.(usageError); !ok {
		t.Fatalf("flags before the subcommand: %v, want a usage error", r.err)
	}
	r = fleetWait(t, fleetStart("send", "--all", "ping", "--broker", url, "--topic-prefix", p, "--wait", "2s"))
	if r.err != nil {
		t.Fatalf("send --all: %v", r.err)
	}
	for _, id := range []string{"st-a", "st-b"} {
		if !regexp.MustCompile(`(?m)^` + id + `\s+ok`).MatchString(r.stdout) {
			t.Errorf("no ok line for %s in %q", id, r.stdout)
		}
	}
	if ca, cb := a.commands(), b.commands(); len(ca) != 1 || len(cb) != 1 || ca[0].Target != "*" || ca[0].ID != cb[0].ID {
		t.Errorf("stations got %v and %v", ca, cb)
	}

	// Nobody at all answers: exit 1.
	r = fleetRun("send", "--all", "ping", "--broker", url, "--topic-prefix", p+"-empty", "--wait", "200ms")
	if r.err == nil || !strings.Contains(r.err.Error(), "no station answered") {
		t.Fatalf("--all without answers: %v", r.err)
	}
}

func TestFleetSendUsage(t *testing.T) {
	for _, args := range [][]string{
		{"send"},
		{"send", "st-1"},
		{"send", "--all"},
		{"send", "ST_1", "ping"},
		{"send", "st-1", "ping", "[1]"},
		{"send", "st-1", "ping", "{not json"},
		{"send", "st-1", "ping", "{}", "extra"},
		{"send", "st-1", "ping", "--wait", "-1s"},
		{"send", "st-1", "", "--wait", "0"},
		{"ls", "extra"},
		{"watch", "a", "b"},
		{"keygen", "x"},
		{"nonsense"},
		{},
	} {
		r := fleetRun(args...)
		if _, ok := r.err.(usageError); !ok {
			t.Errorf("fleet %q: err %v, want a usage error", args, r.err)
		}
	}
}

func TestFleetLsAndWatch(t *testing.T) {
	url := brokertest.URL(t)
	p := brokertest.UniquePrefix(t)
	online := `{"state":"online","version":"1.2.3","since":"2030-01-02T03:04:05Z","reader":{"state":"ok"},"queue":{"depth":4,"full":false}}`
	offline := `{"state":"offline","reason":"lost","ts":"2030-01-02T05:00:00Z"}`
	// Published and seen by an observer before anything lists or watches them: a broker may
	// acknowledge a publish before it fans it out (mochi does), and a subscription made in
	// between would get the status twice, retained and live.
	obs := brokertest.Subscribe(t, url, p+"/+/status", 4)
	brokertest.Publish(t, url, p+"/st-1/status", []byte(online), true)
	brokertest.Publish(t, url, p+"/st-2/status", []byte(offline), true)
	obs.Next(t, 20*time.Second)
	obs.Next(t, 20*time.Second)
	t.Cleanup(func() {
		brokertest.Publish(t, url, p+"/st-1/status", nil, true)
		brokertest.Publish(t, url, p+"/st-2/status", nil, true)
	})

	// The broker settings come from a station configuration file.
	cfg := filepath.Join(t.TempDir(), "station.toml")
	if err := os.WriteFile(cfg, []byte("station_id = \"op\"\n[mqtt]\nbroker = \""+url+"\"\ntopic_prefix = \""+p+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := fleetRun("ls", "--config", cfg, "--wait", "300ms")
	if r.err != nil {
		t.Fatal(r.err)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	want := []string{
		`^STATION\s+STATE\s+REASON\s+VERSION\s+QUEUE\s+READER\s+SINCE$`,
		`^st-1\s+online\s+-\s+1\.2\.3\s+4\s+ok\s+2030-01-02T03:04:05Z$`,
		`^st-2\s+offline\s+lost\s+-\s+-\s+-\s+2030-01-02T05:00:00Z$`,
	}
	if len(lines) != len(want) {
		t.Fatalf("ls printed:\n%s", r.stdout)
	}
	for i, w := range want {
		if !regexp.MustCompile(w).MatchString(lines[i]) {
			t.Errorf("line %d = %q, want %s", i, lines[i], w)
		}
	}

	r = fleetRun("ls", "--broker", url, "--topic-prefix", p, "--wait", "300ms", "--json")
	var got []map[string]json.RawMessage
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("ls --json line %q: %v", l, err)
		}
		got = append(got, m)
	}
	if r.err != nil || len(got) != 2 || string(got[0]["station"]) != `"st-1"` || string(got[0]["status"]) != online {
		t.Fatalf("ls --json: %v: %s", r.err, r.stdout)
	}

	// watch shows the retained statuses first; -n ends it.
	r = fleetWait(t, fleetStart("watch", "--broker", url, "--topic-prefix", p, "-n", "2"))
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !regexp.MustCompile(`(?m)^st-1\s+status  online \(version 1\.2\.3, queue 4, reader ok\)  retained`).MatchString(r.stdout) ||
		!regexp.MustCompile(`(?m)^st-2\s+status  offline \(lost\)  retained, 2030-01-02T05:00:00Z$`).MatchString(r.stdout) {
		t.Fatalf("watch printed:\n%s", r.stdout)
	}
	r = fleetWait(t, fleetStart("watch", "st-2", "--broker", url, "--topic-prefix", p, "-n", "1", "--json"))
	var w map[string]any
	if r.err != nil || json.Unmarshal([]byte(r.stdout), &w) != nil || w["station"] != "st-2" || w["kind"] != "status" || w["retained"] != true {
		t.Fatalf("watch --json: %v: %s", r.err, r.stdout)
	}
}

func TestWatchLineForEvents(t *testing.T) {
	ev := `{"id":"r-1","seq":12,"type":"card.tap","ts":"2030-01-02T03:04:05Z","card":{"kind":"emv","token":"abcdef0123456789","masked":"622848******0008"}}`
	line := watchLine(watchMsg("st-1", "events", ev), false)
	for _, want := range []string{"st-1", "event", "12", "card.tap", "r-1", "622848******0008"} {
		if !strings.Contains(line, want) {
			t.Errorf("event line %q lacks %q", line, want)
		}
	}
	if line := watchLine(watchMsg("st-1", "events", "garbage"), false); !strings.Contains(line, "unreadable") {
		t.Errorf("garbage event: %q", line)
	}
	var j map[string]any
	if err := json.Unmarshal([]byte(watchLine(watchMsg("st-1", "events", "garbage"), true)), &j); err != nil || j["error"] == nil {
		t.Errorf("garbage event as JSON: %v %v", j, err)
	}
}

func watchMsg(station, kind, payload string) operator.Message {
	return operator.Message{Station: station, Kind: kind, Payload: json.RawMessage(payload)}
}
