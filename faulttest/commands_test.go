//go:build faults

package faulttest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"station.dev/agent/internal/stationproc"
	"station.dev/agent/mqtt/brokertest"
)

// cmdCase is one payload for the command topics and what must come of it.
type cmdCase struct {
	kind    string
	payload []byte
	fleet   bool   // sent on {p}/_fleet/cmd
	id      string // the id its one response carries; "" when it gets none
	maybe   string // an id that may or may not be answered (not asserted)
}

// TestRandomCommandPayloads floods the command topics with random bytes, random JSON, huge and
// deeply nested payloads and commands with wrong types. The agent must stay up (a ping is
// answered afterwards), keep its memory bounded, and answer every well-formed command with a
// readable id exactly once, and nothing else.
func TestRandomCommandPayloads(t *testing.T) {
	rng := newRand(t)
	const n = 10000
	b := brokertest.Embedded(t, "127.0.0.1:0")
	s := newSpec(t, b.URL())
	resp := observe(t, b.URL(), s.Prefix+"/+/resp")
	a := startAgent(t, s)
	m0, err := a.Memory()
	if err != nil {
		t.Fatal(err)
	}

	g := &cmdGen{rng: rng, station: s.StationID}
	cases := make([]cmdCase, 0, n)
	for i := 0; i < n; i++ {
		cases = append(cases, g.next(i))
	}
	// A few payloads larger than the agent reads at all (4 MiB), and a few larger than a command
	// (64 KiB) whose id is still read.
	for i := 0; i < scale(3, 5); i++ {
		cases = append(cases, g.huge(i))
	}
	rng.Shuffle(len(cases), func(i, j int) { cases[i], cases[j] = cases[j], cases[i] })

	expect := map[string]string{} // id -> kind
	maybe := map[string]string{}  // id -> kind
	kinds := map[string]int{}
	for _, c := range cases {
		kinds[c.kind]++
		if c.id != "" {
			if _, dup := expect[c.id]; dup {
				t.Fatalf("generator: id %s used twice", c.id)
			}
			expect[c.id] = c.kind
		}
		if c.maybe != "" {
			maybe[c.maybe] = c.kind
		}
	}
	t.Logf("%d payloads (%d expecting an answer): %v", len(cases), len(expect), kinds)

	sampler := stationproc.SampleMemory(a.Pid(), 100*time.Millisecond)
	pub, err := dialPublisher(strings.TrimPrefix(b.URL(), "tcp://"), "faults-cmd-fuzz", 32)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.close()
	start := time.Now()
	for i, c := range cases {
		topic := s.Prefix + "/" + s.StationID + "/cmd"
		if c.fleet {
			topic = s.Prefix + "/_fleet/cmd"
		}
		if err := pub.publish(topic, c.payload); err != nil {
			t.Fatalf("publishing payload %d (%s): %v", i, c.kind, err)
		}
	}
	if err := pub.flush(time.Minute); err != nil {
		t.Fatal(err)
	}
	published := time.Since(start)

	// Every expected answer, and nothing else.
	answers := map[string][]byte{}
	seen := 0
	resp.waitFor(10*time.Minute, fmt.Sprintf("answers to %d commands", len(expect)), func(msgs []observed) bool {
		for ; seen < len(msgs); seen++ {
			var r struct {
				ID string `json:"id"`
			}
			if err := json.Unmarshal(msgs[seen].Payload, &r); err != nil {
				t.Fatalf("response is not JSON: %q", truncate(msgs[seen].Payload, 200))
			}
			if _, ok := expect[r.ID]; !ok && maybe[r.ID] == "" {
				t.Fatalf("response to %q, which no payload with a readable id carried: %s", r.ID, truncate(msgs[seen].Payload, 300))
			}
			if prev, ok := answers[r.ID]; ok && !bytes.Equal(prev, msgs[seen].Payload) {
				t.Fatalf("command %s answered twice, differently:\n%s\n%s", r.ID, prev, msgs[seen].Payload)
			}
			answers[r.ID] = msgs[seen].Payload
		}
		for id := range expect {
			if answers[id] == nil {
				return false
			}
		}
		return true
	})
	handled := time.Since(start)
	peak, _, _ := sampler.Stop()
	if !a.Alive() {
		t.Fatal("the agent died")
	}
	maybeAnswered := map[string]string{}
	for id, kind := range maybe {
		n, of := 0, 0
		fmt.Sscanf(maybeAnswered[kind], "%d/%d", &n, &of)
		if answers[id] != nil {
			n++
		}
		maybeAnswered[kind] = fmt.Sprintf("%d/%d", n, of+1)
	}
	codes := map[string]int{}
	for _, p := range answers {
		var r struct {
			OK    bool `json:"ok"`
			Error *struct {
				Code string `json:"code"`
			} `json:"error"`
		}
		_ = json.Unmarshal(p, &r)
		if r.OK {
			codes["ok"]++
		} else if r.Error != nil {
			codes[r.Error.Code]++
		}
	}
	t.Logf("published in %s, all answered in %s; answers %v; answered of those without an assured answer: %v",
		published.Round(time.Millisecond), handled.Round(time.Millisecond), codes, maybeAnswered)
	t.Logf("agent memory: at start %s, peak %s", m0, peak)

	// Still serving: a ping after the flood is answered.
	ping := fmt.Sprintf(`{"id":"final-ping","name":"ping","target":%q}`, s.StationID)
	brokertest.Publish(t, b.URL(), s.Prefix+"/"+s.StationID+"/cmd", []byte(ping), false)
	resp.waitFor(time.Minute, "the answer to a ping after the flood", func(msgs []observed) bool {
		for _, m := range msgs {
			if bytes.Contains(m.Payload, []byte(`"id":"final-ping","ok":true`)) {
				return true
			}
		}
		return false
	})
	if grow := peak.Anon - m0.Anon; grow > 64<<20 {
		t.Errorf("the agent's own memory grew by %.1f MiB under %d random payloads", mib(grow), len(cases))
	}
	figure(t, "command_flood_payloads", float64(len(cases)), "count")
	figure(t, "command_flood_rate", float64(int(float64(len(cases))/handled.Seconds())), "payloads/s")
	figure(t, "command_flood_peak_rss_anon", round1(mib(peak.Anon)), "MiB")
}

// cmdGen makes command payloads.
type cmdGen struct {
	rng     *rand.Rand
	station string
}

// next makes payload number i: one of the kinds, chosen at random.
func (g *cmdGen) next(i int) cmdCase {
	id := fmt.Sprintf("fz-%d-%s", i, g.word(6))
	switch k := g.rng.IntN(20); k {
	case 0, 1, 2:
		return cmdCase{kind: "random-bytes", payload: g.bytes(g.rng.IntN(2048))}
	case 3, 4:
		v := g.value(4)
		if m, ok := v.(map[string]any); ok {
			delete(m, "id")
		}
		return cmdCase{kind: "random-json", payload: mustJSON(v)}
	case 5:
		// An id that cannot be read: wrong type, empty, too long, control characters.
		bad := []any{42, true, nil, []any{"x"}, map[string]any{"id": "x"}, "", strings.Repeat("i", 65), "a\u0001b", "a\tb"}[g.rng.IntN(9)]
		return cmdCase{kind: "unreadable-id", payload: mustJSON(map[string]any{"id": bad, "name": "ping", "target": g.station})}
	case 6:
		// Deeper than encoding/json parses (10000): the id cannot be read by a JSON parser.
		return cmdCase{kind: "too-deep", payload: nested(id, g.station, 10001+g.rng.IntN(5000)), maybe: id}
	case 7:
		// Deeper than a station decodes (32 levels): dropped before decoding, counted, not
		// answered.
		return cmdCase{kind: "deep", payload: nested(id, g.station, 100+g.rng.IntN(4000))}
	case 8, 9, 10:
		return g.valid(id)
	case 11, 12, 13, 14:
		return g.wrongTypes(id)
	case 15:
		// Extra members of any kind are ignored.
		c := g.valid(id)
		var m map[string]any
		_ = json.Unmarshal(c.payload, &m)
		for j := 0; j < 1+g.rng.IntN(5); j++ {
			m["x_"+g.word(5)] = g.value(3)
		}
		c.kind, c.payload = "extra-members", mustJSON(m)
		return c
	case 16:
		// A signed envelope whose signature is garbage: answered with the id it claims.
		inner := mustJSON(map[string]any{"id": id, "name": "ping", "target": g.station})
		env := map[string]any{"signed": base64.RawURLEncoding.EncodeToString(inner), "sig": g.word(20)}
		return cmdCase{kind: "bad-signature", payload: mustJSON(env), id: id}
	case 17:
		// Larger than a command may be (64 KiB), the id first: refused as bad_request.
		pad := strings.Repeat("p", 64<<10+g.rng.IntN(256<<10))
		return cmdCase{kind: "oversize", payload: []byte(fmt.Sprintf(`{"id":%q,"name":"ping","target":%q,"pad":%q}`, id, g.station, pad)), id: id}
	case 18:
		// Truncated JSON of a valid command.
		p := g.valid(id).payload
		return cmdCase{kind: "truncated", payload: p[:g.rng.IntN(len(p))]}
	default:
		// Not valid UTF-8 in the id: a lenient reader turns the bytes into U+FFFD and may answer
		// with that id.
		return cmdCase{kind: "bad-utf8", payload: []byte(`{"id":"` + id + "\xff\xfe" + `","name":"ping","target":"` + g.station + `"}`), maybe: id + "\ufffd\ufffd"}
	}
}

// valid makes a well-formed command that does no harm: it never restarts, reboots or
// reconfigures the agent.
func (g *cmdGen) valid(id string) cmdCase {
	c := map[string]any{"id": id, "target": g.station}
	fleet := g.rng.IntN(4) == 0
	if fleet {
		c["target"] = "*"
	}
	switch g.rng.IntN(6) {
	case 0:
		c["name"] = "ping"
	case 1:
		c["name"] = "queue.stats"
	case 2:
		c["name"] = "config.get"
	case 3:
		c["name"] = "status"
	case 4:
		c["name"] = "x-" + g.word(8) // no such command
	default:
		c["name"] = "ping"
		c["target"] = "another-station" // wrong target
	}
	return cmdCase{kind: "valid", payload: mustJSON(c), fleet: fleet, id: id}
}

// wrongTypes makes a command with a readable id and a member of the wrong type: bad_request.
func (g *cmdGen) wrongTypes(id string) cmdCase {
	c := map[string]any{"id": id, "name": "ping", "target": g.station}
	switch g.rng.IntN(9) {
	case 0:
		c["name"] = []any{42, 7.5, true, map[string]any{}, nil}[g.rng.IntN(5)]
	case 1:
		c["target"] = []any{42, false, []any{}, nil}[g.rng.IntN(4)]
	case 2:
		c["args"] = []any{"x", 42, []any{1}, true}[g.rng.IntN(4)]
	case 3:
		c["expires_at"] = []any{"yesterday", 42, "2026-13-45T99:00:00Z", true}[g.rng.IntN(4)]
	case 4:
		c["args"] = map[string]any{"unexpected": g.value(2)} // ping takes no arguments
	case 5:
		c["name"], c["args"] = "locate", map[string]any{"seconds": "ten"}
	case 6:
		c["name"], c["args"] = "logs.tail", map[string]any{"lines": []any{0, 501, -1, "all"}[g.rng.IntN(4)]}
	case 7:
		c["name"], c["args"] = "feedback", map[string]any{"pattern": []any{5, "fireworks", nil}[g.rng.IntN(3)]}
	default:
		c["name"], c["args"] = "config.set", map[string]any{"telemetry": map[string]any{"interval": []any{true, 5, "soon"}[g.rng.IntN(3)]}}
	}
	if g.rng.IntN(8) == 0 {
		delete(c, []string{"name", "target"}[g.rng.IntN(2)]) // a required member missing
	}
	return cmdCase{kind: "wrong-types", payload: mustJSON(c), id: id}
}

// huge makes a payload larger than the agent reads (4 MiB): dropped without an answer, even
// though it has an id.
func (g *cmdGen) huge(i int) cmdCase {
	id := fmt.Sprintf("huge-%d", i)
	pad := strings.Repeat("h", 4<<20+g.rng.IntN(1<<20))
	return cmdCase{kind: "huge", payload: []byte(fmt.Sprintf(`{"id":%q,"name":"ping","target":%q,"pad":%q}`, id, g.station, pad)), maybe: id}
}

func (g *cmdGen) bytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(g.rng.UintN(256))
	}
	return b
}

func (g *cmdGen) word(n int) string {
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	for i := range b {
		b[i] = letters[g.rng.IntN(len(letters))]
	}
	return string(b)
}

// value makes a random JSON value nested at most depth deep.
func (g *cmdGen) value(depth int) any {
	k := g.rng.IntN(8)
	if depth == 0 {
		k %= 5
	}
	switch k {
	case 0:
		return nil
	case 1:
		return g.rng.IntN(2) == 0
	case 2:
		return g.rng.NormFloat64() * 1e6
	case 3:
		return g.word(g.rng.IntN(30))
	case 4:
		return string(g.bytes(g.rng.IntN(20))) // invalid UTF-8 becomes U+FFFD in JSON
	case 5, 6:
		m := map[string]any{}
		for i := 0; i < g.rng.IntN(6); i++ {
			m[g.word(1+g.rng.IntN(8))] = g.value(depth - 1)
		}
		return m
	default:
		a := make([]any, g.rng.IntN(6))
		for i := range a {
			a[i] = g.value(depth - 1)
		}
		return a
	}
}

// nested makes a ping whose args nest depth objects deep.
func nested(id, station string, depth int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"id":%q,"name":"ping","target":%q,"args":`, id, station)
	b.WriteString(strings.Repeat(`{"a":`, depth))
	b.WriteString("1")
	b.WriteString(strings.Repeat("}", depth))
	b.WriteString("}")
	return b.Bytes()
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
