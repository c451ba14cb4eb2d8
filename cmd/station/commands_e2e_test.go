package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"station.dev/agent/agent/contract"

	"station.dev/agent/agent/command"
	"station.dev/agent/internal/stationproc"
	"station.dev/agent/mqtt/brokertest"
)

type wireResponse struct {
	ID     string          `json:"id"`
	OK     bool            `json:"ok"`
	Result json.RawMessage `json:"result"`
	Error  *contract.Error `json:"error"`
	TS     string          `json:"ts"`
}

// cmdFixture is a running station and the broker clients to command it.
type cmdFixture struct {
	t      *testing.T
	url    string
	spec   stationproc.Config
	p      *stationproc.Agent
	resp   *brokertest.Client
	events *brokertest.Client
}

func newCmdFixture(t *testing.T, extraConfig string) *cmdFixture {
	url := brokertest.URL(t)
	s := newSpec(t, url)
	f := &cmdFixture{t: t, url: url, spec: s}
	f.resp = brokertest.Subscribe(t, url, s.Prefix+"/+/resp", 1000)
	f.events = brokertest.Subscribe(t, url, s.Prefix+"/+/events", 1000)
	f.start(extraConfig)
	return f
}

func (f *cmdFixture) start(extraConfig string) {
	// The container's kernel clock may say "unsynchronised"; the expiry test needs a trusted clock.
	s := f.spec
	s.TOML = "[clock]\nassume_synced = true\n" + extraConfig
	f.p = stationproc.Start(f.t, s)
	waitType(f.t, f.events, "station.boot")
}

func (f *cmdFixture) topic() string { return f.spec.Prefix + "/" + f.spec.StationID + "/cmd" }

func (f *cmdFixture) send(payload []byte) {
	brokertest.Publish(f.t, f.url, f.topic(), payload, false)
}

func (f *cmdFixture) sendCmd(c map[string]any) string {
	if _, ok := c["target"]; !ok {
		c["target"] = f.spec.StationID
	}
	b, _ := json.Marshal(c)
	f.send(b)
	id, _ := c["id"].(string)
	return id
}

// response waits for the response to command id.
func (f *cmdFixture) response(id string) wireResponse {
	f.t.Helper()
	var r wireResponse
	f.resp.NextMatch(f.t, 30*time.Second, "response to command "+id, func(m brokertest.Message) bool {
		r = wireResponse{}
		if err := json.Unmarshal(m.Payload, &r); err != nil {
			f.t.Fatalf("response is not JSON: %q", m.Payload)
		}
		return r.ID == id
	})
	return r
}

func (f *cmdFixture) wantError(id, code string) {
	f.t.Helper()
	r := f.response(id)
	if r.OK || r.Error == nil || r.Error.Code != code {
		f.t.Fatalf("command %s: want error %s, got %+v", id, code, r)
	}
}

func (f *cmdFixture) ping() {
	f.t.Helper()
	id := f.sendCmd(map[string]any{"id": command.NewID(), "name": "ping"})
	if r := f.response(id); !r.OK {
		f.t.Fatalf("ping after malformed input: %+v", r)
	}
}

func TestMalformedCommands(t *testing.T) {
	f := newCmdFixture(t, "")
	// Not JSON, and JSON without an id: logged and dropped; the agent keeps serving.
	f.send([]byte("this is not json"))
	f.send([]byte(`{"name":"ping","target":"*"}`))
	f.send([]byte(`[1,2,3]`))
	f.ping()

	big := map[string]any{"id": "big-1", "name": "ping", "args": map[string]any{"pad": strings.Repeat("x", 1<<20)}}
	f.wantError(f.sendCmd(big), contract.CodeBadRequest)
	f.wantError(f.sendCmd(map[string]any{"id": "types-1", "name": 42}), contract.CodeBadRequest)
	f.wantError(f.sendCmd(map[string]any{"id": "types-2", "name": "ping", "args": "x"}), contract.CodeBadRequest)
	f.wantError(f.sendCmd(map[string]any{"id": "args-1", "name": "locate", "args": map[string]any{"seconds": "ten"}}), contract.CodeBadRequest)
	f.wantError(f.sendCmd(map[string]any{"id": "unknown-1", "name": "self-destruct"}), contract.CodeUnknownCommand)
	f.wantError(f.sendCmd(map[string]any{"id": "target-1", "name": "ping", "target": "another-station"}), contract.CodeWrongTarget)
	f.wantError(f.sendCmd(map[string]any{"id": "expired-1", "name": "ping", "expires_at": "2001-01-01T00:00:00Z"}), contract.CodeExpired)

	// A replay of the same command gets the same response, without a second execution.
	id := f.sendCmd(map[string]any{"id": "replay-1", "name": "ping"})
	first := f.response(id)
	f.sendCmd(map[string]any{"id": "replay-1", "name": "ping"})
	second := f.response(id)
	if !first.OK || first.TS != second.TS || string(first.Result) != string(second.Result) {
		t.Fatalf("replay answered differently: %+v vs %+v", first, second)
	}
	// The same id for a different command is refused.
	f.wantError(f.sendCmd(map[string]any{"id": "replay-1", "name": "status"}), contract.CodeReplayed)

	// Fleet-wide commands are answered too.
	b, _ := json.Marshal(map[string]any{"id": "fleet-1", "name": "ping", "target": "*"})
	brokertest.Publish(t, f.url, f.spec.Prefix+"/_fleet/cmd", b, false)
	if r := f.response("fleet-1"); !r.OK {
		t.Fatalf("fleet ping: %+v", r)
	}
	f.ping()
}

func TestSignedCommands(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	f := newCmdFixture(t, fmt.Sprintf("[commands]\npublic_keys = [%q]\n", base64.StdEncoding.EncodeToString(pub)))

	f.wantError(f.sendCmd(map[string]any{"id": "unsigned-1", "name": "ping"}), contract.CodeUnauthorized)

	sign := func(k ed25519.PrivateKey, id string) []byte {
		now := time.Now().UTC()
		plain, _ := json.Marshal(map[string]any{"id": id, "name": "ping", "target": f.spec.StationID,
			"issued_at": now.Format(time.RFC3339Nano), "expires_at": now.Add(time.Hour).Format(time.RFC3339Nano)})
		env, err := command.Sign(k, "", plain)
		if err != nil {
			t.Fatal(err)
		}
		return env
	}
	f.send(sign(priv, "signed-1"))
	if r := f.response("signed-1"); !r.OK {
		t.Fatalf("signed ping: %+v", r)
	}
	f.send(sign(otherPriv, "badsig-1"))
	f.wantError("badsig-1", contract.CodeUnauthorized)
	// The signature of one command on the bytes of another.
	var env, other map[string]string
	_ = json.Unmarshal(sign(priv, "tamper-1"), &env)
	_ = json.Unmarshal(sign(priv, "tamper-2"), &other)
	env["sig"] = other["sig"]
	tampered, _ := json.Marshal(env)
	f.send(tampered)
	f.wantError("tamper-1", contract.CodeUnauthorized)
}

func TestCommandWhileOfflineRunsOnce(t *testing.T) {
	f := newCmdFixture(t, "")
	f.ping() // the persistent session exists
	f.p.Stop()

	id := f.sendCmd(map[string]any{"id": "offline-1", "name": "config.set", "args": map[string]any{"telemetry": map[string]any{"interval": "45s"}}})
	f.start("")
	r := f.response(id)
	if !r.OK {
		t.Fatalf("config.set sent while offline: %+v", r)
	}
	changed := waitType(t, f.events, "config.changed")
	changedID := changed["id"]
	if keys := fmt.Sprint(changed["data"].(map[string]any)["keys"]); keys != "[telemetry.interval]" {
		t.Fatalf("config.changed keys %s", keys)
	}

	// The override survives a restart; an invalid config.set changes nothing.
	f.p.Stop()
	f.start("")
	bad := f.sendCmd(map[string]any{"id": "bad-set-1", "name": "config.set", "args": map[string]any{"telemetry": map[string]any{"interval": "10ms"}}})
	f.wantError(bad, contract.CodeBadRequest)
	get := f.sendCmd(map[string]any{"id": "get-1", "name": "config.get"})
	gr := f.response(get)
	var cfg struct {
		TOML      string         `json:"toml"`
		Overrides map[string]any `json:"overrides"`
	}
	if err := json.Unmarshal(gr.Result, &cfg); err != nil || !strings.Contains(cfg.TOML, `interval = "45s"`) {
		t.Fatalf("config.get after restart: %v %s", err, gr.Result)
	}
	// Exactly one execution: every config.changed record delivered is the same record (duplicates
	// only by id), and every response to offline-1 is the stored one.
	f.ping()
	for {
		select {
		case m := <-f.events.C:
			var r map[string]any
			_ = json.Unmarshal(m.Payload, &r)
			if r["type"] == "config.changed" && r["id"] != changedID {
				t.Fatalf("config.set ran twice: records %v and %v", changedID, r["id"])
			}
			continue
		case m := <-f.resp.C:
			var rr wireResponse
			_ = json.Unmarshal(m.Payload, &rr)
			if rr.ID == "offline-1" && rr.TS != r.TS {
				t.Fatalf("offline-1 executed twice: responses at %s and %s", r.TS, rr.TS)
			}
			continue
		default:
		}
		break
	}
}
