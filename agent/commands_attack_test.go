package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"station.dev/agent/agent/command"
	"station.dev/agent/agent/config"
	"station.dev/agent/agent/contract"
	"station.dev/agent/internal/clock/clocktest"
	"station.dev/agent/mqtt"
	"station.dev/agent/store"
)

// Attacks on the fleet command channel by someone who can publish on the broker (issue 11).
// Each test drives the running agent through its receive path (onMessage) and reads the
// answers from the store's responses stream, as the link would send them.

// countingHandler counts the log lines and keeps the last ones.
type countingHandler struct {
	n    atomic.Int64
	mu   sync.Mutex
	last []string
}

func (c *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (c *countingHandler) Handle(_ context.Context, r slog.Record) error {
	c.n.Add(1)
	c.mu.Lock()
	c.last = append(c.last, r.Message)
	if len(c.last) > 50 {
		c.last = c.last[1:]
	}
	c.mu.Unlock()
	return nil
}
func (c *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *countingHandler) WithGroup(string) slog.Handler      { return c }

type fleetKey struct {
	pub  string
	priv ed25519.PrivateKey
}

func newFleetKey(t *testing.T) fleetKey {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return fleetKey{pub: base64.StdEncoding.EncodeToString(pub), priv: priv}
}

// signed returns the signed envelope of a command issued at issued, living for life.
func (k fleetKey) signed(t *testing.T, id, name, target string, args any, issued time.Time, life time.Duration) []byte {
	t.Helper()
	c := map[string]any{"id": id, "name": name, "target": target,
		"issued_at": issued.UTC().Format(time.RFC3339Nano), "expires_at": issued.Add(life).UTC().Format(time.RFC3339Nano)}
	if args != nil {
		c["args"] = args
	}
	plain, _ := json.Marshal(c)
	env, err := command.Sign(k.priv, "", plain)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func plainCmd(id, name string, args any) []byte {
	c := map[string]any{"id": id, "name": name, "target": "agent-test"}
	if args != nil {
		c["args"] = args
	}
	b, _ := json.Marshal(c)
	return b
}

func (h *harness) send(payload []byte) {
	h.a.onMessage(mqtt.Message{Topic: h.a.topics.Cmd, Payload: payload})
}

// responses returns the stored responses to id.
func (h *harness) responses(t *testing.T, id string) []contract.Response {
	t.Helper()
	recs, err := h.a.store.Read(store.Responses, 0, 100000)
	if err != nil {
		t.Fatal(err)
	}
	var out []contract.Response
	for _, r := range recs {
		var resp contract.Response
		if json.Unmarshal(r.Payload, &resp) == nil && resp.ID == id {
			out = append(out, resp)
		}
	}
	return out
}

// response waits for the first response to id.
func (h *harness) response(t *testing.T, id string) contract.Response {
	t.Helper()
	var got []contract.Response
	waitFor(t, func() bool { got = h.responses(t, id); return len(got) > 0 })
	return got[0]
}

func wantErrCode(t *testing.T, r contract.Response, code string) {
	t.Helper()
	if r.Error == nil || r.Error.Code != code {
		t.Fatalf("response %+v: want error %s", r, code)
	}
}

func inboxDepth(t *testing.T, h *harness) int {
	st, err := h.a.store.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st.Streams[store.Inbox].Depth
}

// 1. Jam: an id of 64 characters but 256 bytes made storing its response fail, the entry stayed
// in the inbox and the loop read it again at once, logging each time; seventeen of them filled
// the batch and a signed ping was never answered. Now the id is refused (it is not 64 bytes of
// ASCII), the entry leaves the inbox, the ping is answered, and the log stays small.
func TestJamByLongID(t *testing.T) {
	key := newFleetKey(t)
	logs := &countingHandler{}
	h := startHarness(t, harnessOpts{
		config: func(c *config.Config) { c.Commands.PublicKeys = []string{key.pub} },
		parts:  func(p *Parts) { p.Logger = slog.New(logs) },
	})
	emoji := strings.Repeat("😀", 64)
	for i := range 17 {
		h.send([]byte(fmt.Sprintf(`{"id":%q,"name":"ping","target":"agent-test","n":%d}`, emoji, i)))
	}
	h.send(key.signed(t, "ping-after-jam", "ping", "agent-test", nil, time.Now(), time.Hour))
	if r := h.response(t, "ping-after-jam"); !r.OK {
		t.Fatalf("signed ping after the jam: %+v", r)
	}
	waitFor(t, func() bool { return inboxDepth(t, h) == 0 })
	if n := logs.n.Load(); n > 60 {
		logs.mu.Lock()
		defer logs.mu.Unlock()
		t.Fatalf("%d log lines for 18 messages; last: %q", n, logs.last)
	}
}

// A flood of junk costs the log a bounded number of lines.
func TestHostileInputLogIsRateLimited(t *testing.T) {
	logs := &countingHandler{}
	h := startHarness(t, harnessOpts{parts: func(p *Parts) { p.Logger = slog.New(logs) }})
	before := logs.n.Load()
	for i := range 300 {
		h.send([]byte(fmt.Sprintf(`{"junk":%d}`, i)))
	}
	h.send(plainCmd("after-junk", "ping", nil))
	h.response(t, "after-junk")
	if n := logs.n.Load() - before; n > 40 {
		t.Fatalf("%d log lines for 300 junk messages", n)
	}
}

// 1b. A response larger than the store takes: logs.tail of 500 long lines made 966 KB and ran
// again and again. Now it is cut to the budget and says so, and runs once.
func TestLogsTailFitsTheBudget(t *testing.T) {
	lines := make([]string, 500)
	for i := range lines {
		lines[i] = fmt.Sprintf("%03d ", i) + strings.Repeat("\x01", 1500) // escaped 6× in JSON
	}
	h := startHarness(t, harnessOpts{options: func(o *Options) { o.Logs = fixedLogs(lines) }})
	h.send(plainCmd("tail-1", "logs.tail", map[string]any{"lines": 500}))
	r := h.response(t, "tail-1")
	if !r.OK {
		t.Fatalf("logs.tail: %+v", r)
	}
	var res struct {
		Lines     []string `json:"lines"`
		Truncated bool     `json:"truncated"`
		Omitted   int      `json:"omitted_lines"`
	}
	if err := json.Unmarshal(r.Result, &res); err != nil {
		t.Fatal(err)
	}
	if !res.Truncated || res.Omitted == 0 || len(res.Lines)+res.Omitted != 500 || !strings.HasPrefix(res.Lines[len(res.Lines)-1], "499 ") {
		t.Fatalf("truncated %v, omitted %d, %d lines", res.Truncated, res.Omitted, len(res.Lines))
	}
	waitFor(t, func() bool { return inboxDepth(t, h) == 0 })
	if n := len(h.responses(t, "tail-1")); n != 1 {
		t.Fatalf("%d responses to one logs.tail", n)
	}
}

type fixedLogs []string

func (f fixedLogs) Tail(n int) []string { return append([]string(nil), f[len(f)-n:]...) }

// 2. Replay after eviction: refused junk took ledger places and pushed out an executed signed
// command, whose captured bytes then ran again. Now refusals never enter the ledger, and the
// signed command's entry stays until it expires.
func TestRefusedJunkCannotEvictASignedCommand(t *testing.T) {
	key := newFleetKey(t)
	h := startHarness(t, harnessOpts{
		config: func(c *config.Config) { c.Commands.PublicKeys = []string{key.pub} },
		parts: func(p *Parts) {
			st, err := store.Open(filepath.Join(p.Config.DataDir, "small-ledger.db"), &store.Options{LedgerMaxEntries: 10})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			p.Store = st
		},
	})
	captured := key.signed(t, "signed-locate", "locate", "agent-test", map[string]any{"seconds": 5}, time.Now(), time.Hour)
	h.send(captured)
	first := h.response(t, "signed-locate")
	if !first.OK {
		t.Fatalf("signed locate: %+v", first)
	}
	for i := range 50 {
		h.send(plainCmd(fmt.Sprintf("junk-%d", i), "ping", nil))
	}
	h.response(t, "junk-49")
	h.send(captured)
	waitFor(t, func() bool { return len(h.responses(t, "signed-locate")) == 2 })
	again := h.responses(t, "signed-locate")[1]
	if again.TS != first.TS {
		t.Fatalf("the captured command ran again: first at %s, again at %s", first.TS, again.TS)
	}
	if got := h.a.cmds.stats.executed.Load(); got != 1 {
		t.Fatalf("%d executions", got)
	}
}

// Expiry while the clock is not synchronised: main skipped it, so --expires 1ns ran. Now the
// trusted time (at least the build time) refuses a command that expired before it.
func TestExpiredWhileUnsynchronised(t *testing.T) {
	key := newFleetKey(t)
	clk := clocktest.New()
	clk.Set(time.Date(1970, 1, 1, 0, 1, 0, 0, time.UTC)) // a board that booted without RTC
	build := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	h := startHarness(t, harnessOpts{
		clock:   clk,
		config:  func(c *config.Config) { c.Commands.PublicKeys = []string{key.pub} },
		options: func(o *Options) { o.BuildTime = build },
		parts:   func(p *Parts) { p.ClockSynced = func() bool { return false } },
	})
	h.send(key.signed(t, "old-1", "ping", "agent-test", nil, build.Add(-2*time.Hour), time.Nanosecond))
	wantErrCode(t, h.response(t, "old-1"), contract.CodeExpired)
	// A fresh command runs and lifts the floor to its issued_at: one that expired before that
	// is refused, and the floor survives a restart.
	issued := build.Add(30 * 24 * time.Hour)
	h.send(key.signed(t, "fresh-1", "ping", "agent-test", nil, issued, time.Hour))
	if r := h.response(t, "fresh-1"); !r.OK {
		t.Fatalf("fresh command: %+v", r)
	}
	h.send(key.signed(t, "older-1", "ping", "agent-test", nil, issued.Add(-2*time.Hour), time.Hour))
	wantErrCode(t, h.response(t, "older-1"), contract.CodeExpired)

	floor, _ := h.a.trust.Now()
	if !floor.Equal(issued) {
		t.Fatalf("trusted time %s, want the newest issued_at %s", floor, issued)
	}
	t2, err := newTrustedTime(h.a.store, clk.Now, func() bool { return false }, build)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := t2.Now(); !got.Equal(issued) {
		t.Fatalf("after a restart the trusted time went back to %s", got)
	}
}

// A signed command living longer than [commands] max_lifetime is refused.
func TestLifetimeLimit(t *testing.T) {
	key := newFleetKey(t)
	h := startHarness(t, harnessOpts{config: func(c *config.Config) { c.Commands.PublicKeys = []string{key.pub} }})
	h.send(key.signed(t, "long-1", "ping", "agent-test", nil, time.Now(), 8*24*time.Hour))
	wantErrCode(t, h.response(t, "long-1"), contract.CodeBadRequest)
}

// 3. config.set takes the station over: keys outside the allow-list, in any case, are refused
// with bad_request naming the key, and the overrides file stays as it was.
func TestConfigSetAllowList(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	ovPath := config.OverridesPath(h.a.cfg.DataDir)
	refused := []struct {
		args any
		key  string
	}{
		{map[string]any{"STATION_ID": "evil"}, "STATION_ID"},
		{map[string]any{"station_id": "evil"}, "station_id"},
		{map[string]any{"SOCKET": filepath.Join(h.a.cfg.DataDir, "station.db")}, "SOCKET"},
		{map[string]any{"socket": "/tmp/x.sock"}, "socket"},
		{map[string]any{"data_dir": "/tmp"}, "data_dir"},
		{map[string]any{"commands": map[string]any{"public_keys": []any{}}}, "commands.public_keys"},
		{map[string]any{"commands": map[string]any{}}, "commands"},
		{map[string]any{"Commands": map[string]any{"Public_Keys": []any{}}}, "Commands.Public_Keys"},
		{map[string]any{"card": map[string]any{"key_file": "/nonexistent"}}, "card.key_file"},
		{map[string]any{"mqtt": map[string]any{"broker": "tcp://evil.example:1883"}}, "mqtt.broker"},
		{map[string]any{"mqtt": map[string]any{"ca_file": "/tmp/ca.pem"}}, "mqtt.ca_file"},
		{map[string]any{"reader": map[string]any{"driver": "sim"}}, "reader.driver"},
		{map[string]any{"reader": map[string]any{"bus": "uart"}}, "reader.bus"},
		{map[string]any{"mqtt": map[string]any{"WINDOW": 4}}, "mqtt.WINDOW"},
		{map[string]any{"mqtt": "x"}, "mqtt"},
		{map[string]any{"telemetry": map[string]any{"interval": map[string]any{"x": 1}}}, "telemetry.interval"},
	}
	for i, c := range refused {
		id := fmt.Sprintf("set-%d", i)
		h.send(plainCmd(id, "config.set", c.args))
		r := h.response(t, id)
		wantErrCode(t, r, contract.CodeBadRequest)
		if !strings.Contains(r.Error.Message, c.key) {
			t.Errorf("%v: message %q does not name %s", c.args, r.Error.Message, c.key)
		}
	}
	if _, err := os.Stat(ovPath); !os.IsNotExist(err) {
		t.Fatalf("refused config.set wrote the overrides file: %v", err)
	}
	h.send(plainCmd("set-ok", "config.set", map[string]any{"telemetry": map[string]any{"interval": "45s"}, "mqtt": map[string]any{"window": 8}}))
	if r := h.response(t, "set-ok"); !r.OK {
		t.Fatalf("allowed config.set: %+v", r)
	}
	// Values are validated as the file's.
	h.send(plainCmd("set-bad", "config.set", map[string]any{"telemetry": map[string]any{"interval": "10ms"}}))
	wantErrCode(t, h.response(t, "set-bad"), contract.CodeBadRequest)
}

// Overrides an earlier version let in (the takeover left in overrides.json) are ignored.
func TestStaleForbiddenOverridesIgnored(t *testing.T) {
	ov := config.Overrides{"commands": map[string]any{"public_keys": []any{}}, "log_level": "debug"}
	remote, dropped := ov.Remote()
	if len(dropped) != 1 || dropped[0] != "commands.public_keys" || len(remote) != 1 {
		t.Fatalf("Remote() = %v, dropped %v", remote, dropped)
	}
	base := &config.Config{StationID: "s-1", MQTT: config.MQTT{Broker: "tls://b:8883"}, Commands: config.Commands{PublicKeys: []string{newFleetKey(t).pub}}}
	if err := base.Normalize(); err != nil {
		t.Fatal(err)
	}
	if _, err := ov.Apply(base, nil); err == nil {
		t.Fatal("Apply took an override of commands.public_keys")
	}
	c, err := remote.Apply(base, nil)
	if err != nil || len(c.Commands.PublicKeys) != 1 || c.LogLevel != "debug" {
		t.Fatalf("Apply(remote) = %+v, %v", c, err)
	}
}

// 4. The card-token oracle: the emulated reader is refused outside --sim, in the file or by
// config.set.
func TestSimReaderOnlyUnderSim(t *testing.T) {
	c, err := config.Parse([]byte("station_id = \"s-1\"\n[mqtt]\nbroker = \"tls://b:8883\"\n[reader]\ndriver = \"sim\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Normalize(); err == nil || !strings.Contains(err.Error(), "--sim") {
		t.Fatalf("reader.driver sim outside --sim: %v", err)
	}
	c, _ = config.Parse([]byte("station_id = \"s-1\"\n[reader]\ndriver = \"sim\"\n"))
	c.Sim = true
	if err := c.Normalize(); err != nil {
		t.Fatalf("under --sim: %v", err)
	}
}

// A command with side effects is marked started before it runs: while it runs, the ledger
// already answers for it with "interrupted", so a crash never lets it run a second time.
func TestSideEffectMarkedStartedBeforeItRuns(t *testing.T) {
	block := make(chan struct{})
	h := startHarness(t, harnessOpts{hardware: func(hw *Hardware, f *fakes) {
		hw.Indicator = func() (Indicator, error) { return blockingIndicator{f.ind, block}, nil }
	}})
	h.send(plainCmd("locate-1", "locate", map[string]any{"seconds": 5}))
	var e *store.LedgerEntry
	waitFor(t, func() bool {
		var err error
		e, err = h.a.store.Ledger("locate-1")
		return err == nil && e != nil
	})
	var mark contract.Response
	if err := json.Unmarshal(e.Response, &mark); err != nil || mark.Error == nil || mark.Error.Code != contract.CodeFailed || !strings.Contains(mark.Error.Message, "interrupted") {
		t.Fatalf("ledger entry while running: %s", e.Response)
	}
	close(block)
	if r := h.response(t, "locate-1"); !r.OK {
		t.Fatalf("locate: %+v", r)
	}
}

// blockingIndicator's Locate waits until block is closed.
type blockingIndicator struct {
	*fakeIndicator
	block chan struct{}
}

func (b blockingIndicator) Locate(d time.Duration) error {
	<-b.block
	return b.fakeIndicator.Locate(d)
}

func sha256Sum(b []byte) []byte {
	d := sha256.Sum256(b)
	return d[:]
}

// After a crash between the mark and the response, the command is answered failed
// ("interrupted") and not run again.
func TestInterruptedCommandIsNotRunAgain(t *testing.T) {
	h := startHarness(t, harnessOpts{noRun: true})
	payload := plainCmd("restart-1", "config.set", map[string]any{"log_level": "debug"})
	item, _ := json.Marshal(inboxItem{Topic: h.a.topics.Cmd, Payload: payload, Size: len(payload)})
	rec, err := h.a.store.Append(store.Inbox, store.Critical, func(uint64) ([]byte, error) { return item, nil })
	if err != nil {
		t.Fatal(err)
	}
	// What handleInbox writes before running it, then the process died.
	cmd, inner, _ := command.Decode(payload, nil)
	d := sha256Sum(inner)
	if err := h.a.store.MarkStarted(store.LedgerEntry{ID: cmd.ID, Digest: d, Response: shortFailure(cmd.ID, time.Now(), "interrupted")}); err != nil {
		t.Fatal(err)
	}
	if !h.a.handleInbox(context.Background(), rec) {
		t.Fatal("handleInbox did not get the entry out of the inbox")
	}
	r := h.responses(t, "restart-1")
	if len(r) != 1 {
		t.Fatalf("%d responses", len(r))
	}
	wantErrCode(t, r[0], contract.CodeFailed)
	if _, err := os.Stat(config.OverridesPath(h.a.cfg.DataDir)); !os.IsNotExist(err) {
		t.Fatal("the interrupted config.set ran again")
	}
}

// 5. Memory: deep nesting is refused before decoding; the inbox has its own budget and a flood
// of queued commands never makes a card record be refused.
func TestDeepNestingRefused(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	deep := `{"id":"deep-1","name":"config.set","target":"agent-test","args":` + strings.Repeat(`{"a":`, 3000) + "1" + strings.Repeat("}", 3000) + `}`
	h.send([]byte(deep))
	h.send(plainCmd("after-deep", "ping", nil))
	h.response(t, "after-deep")
	if n := len(h.responses(t, "deep-1")); n != 0 {
		t.Fatalf("deep command answered %d times", n)
	}
	if h.a.cmds.stats.dropped.Load() != 1 {
		t.Fatalf("dropped %d", h.a.cmds.stats.dropped.Load())
	}
}

// A command left retained on the broker would run for every new subscription: it is never run.
func TestRetainedCommandIgnored(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	h.a.onMessage(mqtt.Message{Topic: h.a.topics.Cmd, Payload: plainCmd("retained-1", "ping", nil), Retained: true})
	h.send(plainCmd("after-retained", "ping", nil))
	h.response(t, "after-retained")
	if n := len(h.responses(t, "retained-1")); n != 0 {
		t.Fatalf("retained command answered %d times", n)
	}
	if h.a.cmds.stats.dropped.Load() != 1 {
		t.Fatalf("dropped %d, want the retained command counted", h.a.cmds.stats.dropped.Load())
	}
}

func TestInboxBudget(t *testing.T) {
	h := startHarness(t, harnessOpts{noRun: true, config: func(c *config.Config) { c.Store.MaxBytes = 4 << 20 }})
	pad := strings.Repeat("x", 60<<10)
	for i := range 400 {
		h.send([]byte(fmt.Sprintf(`{"id":"big-%d","name":"ping","target":"agent-test","pad":%q}`, i, pad)))
	}
	st, _ := h.a.store.Stats()
	if in := st.Streams[store.Inbox]; in.Bytes > maxInboxBytes || in.Depth > maxInboxMessages {
		t.Fatalf("inbox holds %d messages, %d bytes", in.Depth, in.Bytes)
	}
	if _, err := h.a.appendRecord(h.a.newRecord(contract.TypeCardTap), store.Normal); err != nil {
		t.Fatalf("a card record after the flood: %v", err)
	}
}

// 6. Insecure is loud.
func TestInsecureIsShown(t *testing.T) {
	h := startHarness(t, harnessOpts{})
	s := h.a.status(contract.StateOnline, "")
	if len(s.Insecure) == 0 || !strings.Contains(s.Insecure[0], "unsigned commands accepted") {
		t.Fatalf("status.insecure = %q", s.Insecure)
	}
	found := false
	for _, c := range h.a.selfTest().Checks {
		found = found || (c.Name == "security" && strings.Contains(c.Detail, "unsigned commands accepted"))
	}
	if !found {
		t.Fatal("selftest does not say unsigned commands are accepted")
	}
	key := newFleetKey(t)
	h2 := startHarness(t, harnessOpts{noRun: true, config: func(c *config.Config) { c.Commands.PublicKeys = []string{key.pub} }})
	for _, w := range h2.a.status(contract.StateOnline, "").Insecure {
		if strings.Contains(w, "unsigned") {
			t.Fatalf("signed station reported %q", w)
		}
	}
}

// Key rotation: keys.set signed by a key trusted now replaces the set; never empty.
func TestKeysSet(t *testing.T) {
	oldKey, newKey := newFleetKey(t), newFleetKey(t)
	h := startHarness(t, harnessOpts{config: func(c *config.Config) { c.Commands.PublicKeys = []string{oldKey.pub} }})
	h.send(oldKey.signed(t, "keys-empty", "keys.set", "agent-test", map[string]any{"public_keys": []string{}}, time.Now(), time.Hour))
	wantErrCode(t, h.response(t, "keys-empty"), contract.CodeBadRequest)
	h.send(newKey.signed(t, "keys-by-stranger", "keys.set", "agent-test", map[string]any{"public_keys": []string{newKey.pub}}, time.Now(), time.Hour))
	wantErrCode(t, h.response(t, "keys-by-stranger"), contract.CodeUnauthorized)
	h.send(oldKey.signed(t, "keys-1", "keys.set", "agent-test", map[string]any{"public_keys": []string{newKey.pub}}, time.Now(), time.Hour))
	if r := h.response(t, "keys-1"); !r.OK {
		t.Fatalf("keys.set: %+v", r)
	}
	h.send(oldKey.signed(t, "old-ping", "ping", "agent-test", nil, time.Now(), time.Hour))
	wantErrCode(t, h.response(t, "old-ping"), contract.CodeUnauthorized)
	h.send(newKey.signed(t, "new-ping", "ping", "agent-test", nil, time.Now(), time.Hour))
	if r := h.response(t, "new-ping"); !r.OK {
		t.Fatalf("ping with the new key: %+v", r)
	}
	if keys, ok, err := config.ReadKeys(config.KeysPath(h.a.cfg.DataDir)); err != nil || !ok || len(keys) != 1 || keys[0] != newKey.pub {
		t.Fatalf("kept keys %v %v %v", keys, ok, err)
	}
}
