package agent

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"station.dev/agent/agent/command"
	"station.dev/agent/agent/config"
	"station.dev/agent/agent/contract"
	"station.dev/agent/drivers/indicator"
	"station.dev/agent/mqtt"
	"station.dev/agent/mqtt/brokertest"
	"station.dev/agent/store"
)

// Fleet commands end to end inside the package: a payload reaches onMessage as the link hands it
// over, the command loop executes it, and the response is read from the store's responses stream
// (the link is offline, so nothing is taken out of it).

// plainCommand returns the bytes of a plain command for the harness's station.
func plainCommand(t *testing.T, id, name string, args any) []byte {
	t.Helper()
	c := contract.Command{ID: id, Name: name, Target: "agent-test"}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			t.Fatal(err)
		}
		c.Args = b
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// deliver hands a payload to the agent as the link does (Ack is a no-op here).
func (h *harness) deliver(payload []byte) {
	h.a.onMessage(mqtt.Message{Topic: h.a.topics.Cmd, Payload: payload})
}

// storedResponses returns the payloads of the stored responses to command id, oldest first.
func storedResponses(t *testing.T, a *Agent, id string) [][]byte {
	t.Helper()
	recs, err := a.store.Read(store.Responses, 0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, r := range recs {
		var resp contract.Response
		if err := json.Unmarshal(r.Payload, &resp); err != nil {
			t.Fatalf("stored response is not JSON: %v", err)
		}
		if resp.ID == id {
			out = append(out, r.Payload)
		}
	}
	return out
}

// awaitResponses waits until n responses to id are stored and returns them.
func awaitResponses(t *testing.T, a *Agent, id string, n int) []contract.Response {
	t.Helper()
	var raw [][]byte
	waitFor(t, func() bool {
		raw = storedResponses(t, a, id)
		return len(raw) >= n
	})
	if len(raw) != n {
		t.Fatalf("%d responses to %s, want %d", len(raw), id, n)
	}
	out := make([]contract.Response, n)
	for i, b := range raw {
		if err := json.Unmarshal(b, &out[i]); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// run sends a plain command and returns its one response.
func (h *harness) run(t *testing.T, name string, args any) contract.Response {
	t.Helper()
	id := command.NewID()
	h.deliver(plainCommand(t, id, name, args))
	return awaitResponses(t, h.a, id, 1)[0]
}

// wantOK checks that resp succeeded and decodes its result into v (when not nil).
func wantOK(t *testing.T, resp contract.Response, v any) {
	t.Helper()
	if !resp.OK || resp.Error != nil {
		t.Fatalf("response not ok: %+v", resp.Error)
	}
	if _, err := time.Parse(time.RFC3339Nano, resp.TS); err != nil {
		t.Fatalf("response ts %q: %v", resp.TS, err)
	}
	if v != nil {
		if err := json.Unmarshal(resp.Result, v); err != nil {
			t.Fatalf("result %s: %v", resp.Result, err)
		}
	}
}

// wantCode checks that resp was refused with code, its message containing msg.
func wantCode(t *testing.T, resp contract.Response, code, msg string) {
	t.Helper()
	if resp.OK || resp.Error == nil || resp.Error.Code != code {
		t.Fatalf("want %s, got ok=%v error=%+v result=%s", code, resp.OK, resp.Error, resp.Result)
	}
	if !strings.Contains(resp.Error.Message, msg) {
		t.Fatalf("%s message %q does not mention %q", code, resp.Error.Message, msg)
	}
}

// recordsOfType returns the recent records of type typ.
func recordsOfType(t *testing.T, a *Agent, typ string) []contract.Record {
	t.Helper()
	var out []contract.Record
	for _, b := range a.recent.last(0) {
		var r contract.Record
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		if r.Type == typ {
			out = append(out, r)
		}
	}
	return out
}

func TestCommandPingStatusQueue(t *testing.T) {
	h := startHarness(t, harnessOpts{})

	var pong struct {
		Pong    bool   `json:"pong"`
		Version string `json:"version"`
		BootID  string `json:"boot_id"`
	}
	wantOK(t, h.run(t, "ping", nil), &pong)
	if !pong.Pong || pong.Version != "test" || pong.BootID != h.a.bootID {
		t.Fatalf("ping result %+v", pong)
	}
	wantCode(t, h.run(t, "ping", map[string]any{"loud": true}), contract.CodeBadRequest, "loud")

	var st contract.Status
	wantOK(t, h.run(t, "status", nil), &st)
	if st.State != contract.StateOnline || st.StationID != "agent-test" || st.BootID != h.a.bootID || st.Reader.State != contract.HealthOK {
		t.Fatalf("status result %+v", st)
	}
	if st.Indicator != nil || h.a.Status().Indicator == nil {
		t.Fatalf("the status command must leave out the indicator (local only): %+v", st.Indicator)
	}

	var q contract.QueueStatus
	wantOK(t, h.run(t, "queue.stats", nil), &q)
	if ev := q.Streams[string(store.Events)]; ev.Depth < 1 || ev.LastSeq < 1 {
		t.Fatalf("queue.stats events %+v: the boot record is missing", ev)
	}
	if st, err := h.a.store.Stats(); err != nil || q.MaxBytes != st.MaxBytes || q.MaxBytes == 0 {
		t.Fatalf("queue.stats max_bytes %d, the store's %d (%v)", q.MaxBytes, st.MaxBytes, err) // 32-bit caps it
	}

	var st2 contract.SelfTest
	wantOK(t, h.run(t, "selftest", nil), &st2)
	names := []string{}
	for _, c := range st2.Checks {
		names = append(names, c.Name)
	}
	if want := []string{"store", "broker", "reader", "indicator", "door", "environment", "display", "security"}; !slices.Equal(names, want) {
		t.Fatalf("selftest checks %v, want %v", names, want)
	}
	if st2.OK {
		t.Fatal("selftest passed with the broker unreachable")
	}

	wantCode(t, h.run(t, "dance", nil), contract.CodeUnknownCommand, "dance")

	stats := h.a.cmds.stats.snapshot()
	if stats.Received != 6 || stats.Executed != 4 || stats.Refused != 2 || stats.Dropped != 0 {
		t.Fatalf("command stats %+v", stats)
	}
	if st, _ := h.a.store.Stats(); st.Streams[store.Inbox].Depth != 0 {
		t.Fatalf("inbox keeps %d commands after they were answered", st.Streams[store.Inbox].Depth)
	}
}

func TestCommandConfigGetSet(t *testing.T) {
	level := new(slog.LevelVar)
	h := startHarness(t, harnessOpts{options: func(o *Options) { o.LogLevel = level }})
	path := config.OverridesPath(h.a.cfg.DataDir)

	var got struct {
		TOML      string           `json:"toml"`
		Overrides config.Overrides `json:"overrides"`
	}
	wantOK(t, h.run(t, "config.get", nil), &got)
	if !strings.Contains(got.TOML, `station_id = "agent-test"`) || len(got.Overrides) != 0 {
		t.Fatalf("config.get: overrides %v, toml:\n%s", got.Overrides, got.TOML)
	}

	// Refused: nothing is written and nothing is recorded.
	for _, c := range []struct {
		name string
		args any
		msg  string
	}{
		{"invalid value", map[string]any{"log_level": "loud"}, "log_level"},
		{"unknown key", map[string]any{"no_such_key": 1}, "no_such_key"},
		{"forbidden key", map[string]any{"data_dir": "/tmp/elsewhere"}, "data_dir cannot be changed remotely"},
		{"empty", map[string]any{}, "non-empty object"},
		{"not an object", []int{1}, "args"},
	} {
		wantCode(t, h.run(t, "config.set", c.args), contract.CodeBadRequest, c.msg)
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: overrides file written: %v", c.name, err)
		}
	}
	if n := len(recordsOfType(t, h.a, contract.TypeConfigChanged)); n != 0 {
		t.Fatalf("%d config.changed records after refused changes", n)
	}

	// A key that needs a restart.
	var res struct {
		Applied         []string `json:"applied"`
		RestartRequired bool     `json:"restart_required"`
	}
	wantOK(t, h.run(t, "config.set", map[string]any{"mqtt": map[string]any{"window": 8}}), &res)
	if !slices.Equal(res.Applied, []string{"mqtt.window"}) || !res.RestartRequired {
		t.Fatalf("config.set result %+v", res)
	}
	ov, err := config.ReadOverrides(path)
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := ov["mqtt"].(map[string]any); m["window"] != float64(8) {
		t.Fatalf("overrides file holds %v", ov)
	}
	if h.a.cfg.MQTT.Window == 8 {
		t.Fatal("a restart-only key changed the running configuration")
	}
	changed := recordsOfType(t, h.a, contract.TypeConfigChanged)
	if len(changed) != 1 || changed[0].Data["restart_required"] != true || changed[0].Data["source"] != "fleet" ||
		!slices.Equal(anyStrings(changed[0].Data["keys"]), []string{"mqtt.window"}) {
		t.Fatalf("config.changed records %+v", changed)
	}

	// log_level takes effect at once, and lies over the earlier override.
	wantOK(t, h.run(t, "config.set", map[string]any{"log_level": "debug"}), &res)
	if res.RestartRequired || level.Level() != slog.LevelDebug {
		t.Fatalf("log_level: result %+v, level %v", res, level.Level())
	}
	wantOK(t, h.run(t, "config.get", nil), &got)
	if got.Overrides["log_level"] != "debug" || got.Overrides["mqtt"] == nil {
		t.Fatalf("config.get overrides after two changes: %v", got.Overrides)
	}
	changed = recordsOfType(t, h.a, contract.TypeConfigChanged)
	if len(changed) != 2 || changed[1].Data["restart_required"] != false {
		t.Fatalf("config.changed records %+v", changed)
	}
}

func anyStrings(v any) []string {
	l, _ := v.([]any)
	out := []string{}
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

func TestCommandRestartEndsRun(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	var res struct {
		Restarting bool `json:"restarting"`
	}
	wantOK(t, h.run(t, "restart", nil), &res)
	if !res.Restarting {
		t.Fatalf("restart result %+v", res)
	}
	select {
	case <-h.ended:
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not end after restart")
	}
	if err := h.stop(); !errors.Is(err, ErrRestart) {
		t.Fatalf("Run returned %v, want ErrRestart", err)
	}
}

func TestCommandRebootRefusedInSim(t *testing.T) {
	// Only the simulated station is asked to reboot: the real path would reboot the host.
	h := startHarness(t, harnessOpts{config: func(c *config.Config) { c.Sim = true }})
	wantCode(t, h.run(t, "reboot", nil), contract.CodeFailed, "does not reboot")
	wantCode(t, h.run(t, "reboot", map[string]any{"now": true}), contract.CodeBadRequest, "now")
	select {
	case <-h.ended:
		t.Fatal("Run ended after a refused reboot")
	default:
	}
}

func TestCommandFeedbackAndLocate(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	var res map[string]any
	wantOK(t, h.run(t, "feedback", map[string]any{"pattern": "refused", "text": "see staff"}), &res)
	if res["shown"] != "refused" {
		t.Fatalf("feedback result %v", res)
	}
	if p := <-h.ind.shown; p != indicator.Refused {
		t.Fatalf("indicator shows %q, want refused", p)
	}
	h.a.periph.mu.Lock()
	last := h.a.periph.last
	h.a.periph.mu.Unlock()
	if last != "see staff" {
		t.Fatalf("display's last line %q", last)
	}
	wantCode(t, h.run(t, "feedback", map[string]any{"pattern": "idle"}), contract.CodeBadRequest, "pattern")
	wantCode(t, h.run(t, "feedback", map[string]any{"pattern": "disco"}), contract.CodeBadRequest, "pattern")
	wantCode(t, h.run(t, "feedback", map[string]any{"pattern": "error", "text": strings.Repeat("x", 65)}), contract.CodeBadRequest, "64")
	if len(h.ind.shown) != 0 {
		t.Fatalf("a refused feedback was shown: %q", <-h.ind.shown)
	}

	locate := func() time.Duration {
		h.ind.mu.Lock()
		defer h.ind.mu.Unlock()
		return h.ind.locate
	}
	wantOK(t, h.run(t, "locate", map[string]any{"seconds": 30}), &res)
	if locate() != 30*time.Second || res["locate_seconds"] != float64(30) {
		t.Fatalf("locate 30: indicator %v, result %v", locate(), res)
	}
	wantOK(t, h.run(t, "locate", map[string]any{"seconds": 0}), &res)
	if locate() != 0 {
		t.Fatalf("locate 0 left the indicator locating for %v", locate())
	}
	wantOK(t, h.run(t, "locate", nil), &res)
	if locate() != time.Minute {
		t.Fatalf("locate without args: %v, want the default minute", locate())
	}
	wantCode(t, h.run(t, "locate", map[string]any{"seconds": 3601}), contract.CodeBadRequest, "3600")
	wantCode(t, h.run(t, "locate", map[string]any{"seconds": -1}), contract.CodeBadRequest, "3600")
}

func TestCommandLocateWithoutIndicator(t *testing.T) {
	t.Run("not fitted", func(t *testing.T) {
		h := startHarness(t, harnessOpts{hardware: func(hw *Hardware, _ *fakes) { hw.Indicator = nil }})
		wantCode(t, h.run(t, "locate", map[string]any{"seconds": 5}), contract.CodeFailed, "no indicator")
	})
	t.Run("down", func(t *testing.T) {
		h := startHarness(t, harnessOpts{hardware: func(hw *Hardware, _ *fakes) {
			hw.Indicator = func() (Indicator, error) { return nil, errors.New("hw: GPIO17 busy") }
		}})
		wantCode(t, h.run(t, "locate", map[string]any{"seconds": 5}), contract.CodeFailed, "down")
	})
}

// fakeTail is the log ring as the logs.tail command sees it.
type fakeTail struct{ asked chan int }

func (f fakeTail) Tail(n int) []string {
	f.asked <- n
	return []string{"level=INFO msg=one", "level=INFO msg=two"}[2-min(n, 2):]
}

func TestCommandLogLevelAndLogsTail(t *testing.T) {
	level := new(slog.LevelVar)
	tail := fakeTail{asked: make(chan int, 10)}
	h := startHarness(t, harnessOpts{options: func(o *Options) { o.LogLevel, o.Logs = level, tail }})

	var res map[string]any
	wantOK(t, h.run(t, "log.level", map[string]any{"level": "WARN"}), &res)
	if res["level"] != "warn" || level.Level() != slog.LevelWarn {
		t.Fatalf("log.level: result %v, level %v", res, level.Level())
	}
	wantCode(t, h.run(t, "log.level", map[string]any{"level": "loud"}), contract.CodeBadRequest, "loud")
	if level.Level() != slog.LevelWarn {
		t.Fatal("a refused log.level changed the level")
	}

	var lines struct {
		Lines []string `json:"lines"`
	}
	wantOK(t, h.run(t, "logs.tail", map[string]any{"lines": 1}), &lines)
	if n := <-tail.asked; n != 1 || !slices.Equal(lines.Lines, []string{"level=INFO msg=two"}) {
		t.Fatalf("logs.tail asked %d lines, got %q", n, lines.Lines)
	}
	wantOK(t, h.run(t, "logs.tail", nil), &lines)
	if n := <-tail.asked; n != 100 || len(lines.Lines) != 2 {
		t.Fatalf("logs.tail default asked %d lines, got %q", n, lines.Lines)
	}
	wantCode(t, h.run(t, "logs.tail", map[string]any{"lines": 0}), contract.CodeBadRequest, "1 to 500")
	wantCode(t, h.run(t, "logs.tail", map[string]any{"lines": 501}), contract.CodeBadRequest, "1 to 500")
}

func TestCommandLogLevelFixedAndNoLogs(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	wantCode(t, h.run(t, "log.level", map[string]any{"level": "debug"}), contract.CodeFailed, "fixed")
	var lines struct {
		Lines []string `json:"lines"`
	}
	wantOK(t, h.run(t, "logs.tail", nil), &lines)
	if lines.Lines == nil || len(lines.Lines) != 0 {
		t.Fatalf("logs.tail without a log ring: %q, want an empty list", lines.Lines)
	}
}

func TestCommandTargetAndExpiry(t *testing.T) {
	var synced atomic.Bool
	synced.Store(true)
	h := startHarness(t, harnessOpts{parts: func(p *Parts) { p.ClockSynced = synced.Load }})
	send := func(c contract.Command) contract.Response {
		t.Helper()
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		h.deliver(b)
		return awaitResponses(t, h.a, c.ID, 1)[0]
	}
	now := time.Now().UTC()

	wantCode(t, send(contract.Command{ID: command.NewID(), Name: "ping", Target: "agent-test-2"}), contract.CodeWrongTarget, "agent-test-2")
	wantOK(t, send(contract.Command{ID: command.NewID(), Name: "ping", Target: contract.FleetTarget}), nil)

	past := now.Add(-time.Minute).Format(time.RFC3339Nano)
	wantCode(t, send(contract.Command{ID: command.NewID(), Name: "ping", Target: "agent-test", ExpiresAt: past}), contract.CodeExpired, "expired")
	wantOK(t, send(contract.Command{ID: command.NewID(), Name: "ping", Target: "agent-test",
		ExpiresAt: now.Add(time.Hour).Format(time.RFC3339Nano)}), nil)

	// An unsynchronised clock cannot tell, but the trusted time it had seen synchronised never
	// goes back: the command is still expired.
	synced.Store(false)
	wantCode(t, send(contract.Command{ID: command.NewID(), Name: "ping", Target: "agent-test", ExpiresAt: past}), contract.CodeExpired, "trusted time")
}

func TestCommandRedeliveryAndReplay(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	id := command.NewID()
	first := plainCommand(t, id, "feedback", map[string]any{"pattern": "error"})
	h.deliver(first)
	h.deliver(first)
	awaitResponses(t, h.a, id, 2)
	raw := storedResponses(t, h.a, id)
	if !bytes.Equal(raw[0], raw[1]) {
		t.Fatalf("a redelivery got a different response:\n%s\n%s", raw[0], raw[1])
	}
	if p := <-h.ind.shown; p != indicator.Error || len(h.ind.shown) != 0 {
		t.Fatalf("feedback shown %q, then %d more: want once", p, len(h.ind.shown))
	}
	if s := h.a.cmds.stats.snapshot(); s.Executed != 1 || s.Received != 2 {
		t.Fatalf("stats after a redelivery %+v", s)
	}

	// Another command under the same id is refused, and not executed.
	h.deliver(plainCommand(t, id, "feedback", map[string]any{"pattern": "refused"}))
	resps := awaitResponses(t, h.a, id, 3)
	wantCode(t, resps[2], contract.CodeReplayed, id)
	if len(h.ind.shown) != 0 {
		t.Fatalf("the replayed command was executed: %q shown", <-h.ind.shown)
	}

	// The first command, delivered once more, still gets its own response.
	h.deliver(first)
	awaitResponses(t, h.a, id, 4)
	raw = storedResponses(t, h.a, id)
	if !bytes.Equal(raw[3], raw[0]) {
		t.Fatalf("after a replay, the executed command's redelivery got\n%s\nnot its response\n%s", raw[3], raw[0])
	}
	if len(h.ind.shown) != 0 {
		t.Fatalf("the redelivered command was executed again: %q shown", <-h.ind.shown)
	}
}

func TestCommandSignatures(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, otherPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	h := startHarness(t, harnessOpts{config: func(c *config.Config) {
		c.Commands.PublicKeys = []string{base64.StdEncoding.EncodeToString(pub)}
	}})
	signed := func(priv ed25519.PrivateKey, kid, id string) []byte {
		t.Helper()
		now := time.Now().UTC()
		plain, err := json.Marshal(contract.Command{ID: id, Name: "ping", Target: "agent-test",
			IssuedAt: now.Format(time.RFC3339Nano), ExpiresAt: now.Add(time.Hour).Format(time.RFC3339Nano)})
		if err != nil {
			t.Fatal(err)
		}
		env, err := command.Sign(priv, kid, plain)
		if err != nil {
			t.Fatal(err)
		}
		return env
	}

	id := command.NewID()
	h.deliver(signed(priv, command.KeyID(pub), id))
	wantOK(t, awaitResponses(t, h.a, id, 1)[0], nil)

	id = command.NewID()
	h.deliver(signed(priv, "", id)) // without kid every key is tried
	wantOK(t, awaitResponses(t, h.a, id, 1)[0], nil)

	id = command.NewID()
	h.deliver(plainCommand(t, id, "ping", nil))
	wantCode(t, awaitResponses(t, h.a, id, 1)[0], contract.CodeUnauthorized, "unsigned")

	id = command.NewID()
	h.deliver(signed(otherPriv, "", id))
	wantCode(t, awaitResponses(t, h.a, id, 1)[0], contract.CodeUnauthorized, "does not verify")

	if s := h.a.cmds.stats.snapshot(); s.Executed != 2 || s.Refused != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestCommandMalformedInput(t *testing.T) {
	h := startHarness(t, harnessOpts{})

	// Too large, but the id can be read: the sender learns why.
	id := command.NewID()
	big := plainCommand(t, id, "ping", map[string]any{"pad": strings.Repeat("x", contract.MaxCommandBytes)})
	h.deliver(big)
	wantCode(t, awaitResponses(t, h.a, id, 1)[0], contract.CodeBadRequest, "limit")

	// Well-formed JSON with a bad member: bad_request under its id.
	id = command.NewID()
	h.deliver([]byte(`{"id":"` + id + `","name":"ping","target":"agent-test","args":[1]}`))
	wantCode(t, awaitResponses(t, h.a, id, 1)[0], contract.CodeBadRequest, "args")

	// No readable id: dropped and counted, nothing answered.
	before, err := h.a.store.Stats()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range [][]byte{
		[]byte(`{"name":"ping","target":"agent-test"}`),
		[]byte(`not json`),
		bytes.Repeat([]byte(" "), maxReadableCommand+1),
	} {
		h.deliver(p)
	}
	waitFor(t, func() bool { return h.a.cmds.stats.dropped.Load() == 3 })
	waitFor(t, func() bool {
		st, err := h.a.store.Stats()
		return err == nil && st.Streams[store.Inbox].Depth == 0
	})
	after, err := h.a.store.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if after.Streams[store.Responses].LastSeq != before.Streams[store.Responses].LastSeq {
		t.Fatal("a command without an id was answered")
	}

	// An inbox entry that cannot be read is removed and does not stop the loop.
	if _, err := h.a.store.Append(store.Inbox, store.Critical, func(uint64) ([]byte, error) { return []byte("{"), nil }); err != nil {
		t.Fatal(err)
	}
	wantOK(t, h.run(t, "ping", nil), nil)
	if st, _ := h.a.store.Stats(); st.Streams[store.Inbox].Depth != 0 {
		t.Fatalf("inbox depth %d after an unreadable entry", st.Streams[store.Inbox].Depth)
	}
}

// panicIndicator is an indicator whose driver panics on Locate.
type panicIndicator struct{ *fakeIndicator }

func (panicIndicator) Locate(time.Duration) error { panic("indicator driver: index out of range") }

func TestCommandHandlerPanicIsFailed(t *testing.T) {
	h := startHarness(t, harnessOpts{hardware: func(hw *Hardware, f *fakes) {
		hw.Indicator = func() (Indicator, error) { return panicIndicator{f.ind}, nil }
	}})
	wantCode(t, h.run(t, "locate", map[string]any{"seconds": 5}), contract.CodeFailed, "internal error in locate")
	wantOK(t, h.run(t, "ping", nil), nil) // the agent carries on
}

func TestCommandsThroughBroker(t *testing.T) {
	url := brokertest.URL(t)
	h := startHarness(t, harnessOpts{broker: url})
	resp := brokertest.Subscribe(t, url, h.a.topics.Resp, 10)
	waitFor(t, func() bool { return h.a.link.Stats().Connected })

	for _, c := range []struct{ topic, target string }{
		{h.a.topics.Cmd, "agent-test"},
		{h.a.topics.FleetCmd, contract.FleetTarget},
	} {
		id := command.NewID()
		b, err := json.Marshal(contract.Command{ID: id, Name: "ping", Target: c.target})
		if err != nil {
			t.Fatal(err)
		}
		brokertest.Publish(t, url, c.topic, b, false)
		m := resp.Next(t, 15*time.Second)
		var r contract.Response
		if err := json.Unmarshal(m.Payload, &r); err != nil {
			t.Fatal(err)
		}
		if r.ID != id || !r.OK {
			t.Fatalf("response on %s to a command on %s: %s", m.Topic, c.topic, m.Payload)
		}
	}
}
