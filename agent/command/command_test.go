package command_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"station.dev/agent/agent/command"
	"station.dev/agent/agent/contract"
	"station.dev/agent/internal/jsonlimit"
)

type keyPair struct {
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
	kid  string
}

func newKey(t testing.TB) keyPair {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{pub: pub, priv: priv, kid: command.KeyID(pub)}
}

func keysOf(t testing.TB, kps ...keyPair) *command.Keys {
	t.Helper()
	var s []string
	for _, kp := range kps {
		s = append(s, base64.StdEncoding.EncodeToString(kp.pub))
	}
	k, err := command.ParseKeys(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// envelope builds a signed envelope by hand, so tests can break any part of it.
func envelope(t testing.TB, signed, sig []byte, kid string) []byte {
	t.Helper()
	return mustJSON(t, contract.Signed{
		Signed: base64.RawURLEncoding.EncodeToString(signed),
		Sig:    base64.RawURLEncoding.EncodeToString(sig),
		Kid:    kid,
	})
}

const ping = `{"id":"c-1","name":"ping","target":"st-1","issued_at":"2030-01-02T03:04:05Z","expires_at":"2030-01-02T04:04:05Z"}`

// pingCmd is ping decoded.
var pingCmd = contract.Command{ID: "c-1", Name: "ping", Target: "st-1", IssuedAt: "2030-01-02T03:04:05Z", ExpiresAt: "2030-01-02T04:04:05Z"}

func TestDecodeWellFormed(t *testing.T) {
	kp := newKey(t)
	full := `{"id":"c-2","name":"config.set","args":{"k":1},"expires_at":"2030-01-02T03:04:05.123456789Z","target":"*","future":true}`
	cases := []struct {
		name    string
		payload []byte
		keys    *command.Keys
		inner   string
		want    contract.Command
	}{
		{"plain, no keys", []byte(ping), nil, ping, pingCmd},
		{"plain without times", []byte(`{"id":"c-0","name":"ping","target":"st-1"}`), nil, "", contract.Command{ID: "c-0", Name: "ping", Target: "st-1"}},
		{"plain with every member, unknown member ignored", []byte(full), nil, full,
			contract.Command{ID: "c-2", Name: "config.set", Args: json.RawMessage(`{"k":1}`), ExpiresAt: "2030-01-02T03:04:05.123456789Z", Target: "*"}},
		{"null optional members", []byte(`{"id":"c-3","name":"ping","target":"st-1","args":null,"expires_at":null}`), nil, "",
			contract.Command{ID: "c-3", Name: "ping", Target: "st-1"}},
		{"signed, kid given", envelope(t, []byte(ping), ed25519.Sign(kp.priv, []byte(ping)), kp.kid), keysOf(t, kp), ping, pingCmd},
		{"signed, no kid: every key tried", envelope(t, []byte(ping), ed25519.Sign(kp.priv, []byte(ping)), ""), keysOf(t, newKey(t), kp), ping, pingCmd},
		{"signed, no keys configured: accepted unverified", envelope(t, []byte(ping), make([]byte, 64), "whatever"), nil, ping, pingCmd},
		{"id of 64 bytes", []byte(`{"id":"` + strings.Repeat("~", 64) + `","name":"ping","target":"st-1"}`), nil, "",
			contract.Command{ID: strings.Repeat("~", 64), Name: "ping", Target: "st-1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cmd, inner, err := command.Decode(c.payload, c.keys)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if cmd.ID != c.want.ID || cmd.Name != c.want.Name || cmd.Target != c.want.Target ||
				cmd.ExpiresAt != c.want.ExpiresAt || cmd.IssuedAt != c.want.IssuedAt || !bytes.Equal(cmd.Args, c.want.Args) {
				t.Fatalf("cmd = %+v, want %+v", *cmd, c.want)
			}
			if c.inner != "" && string(inner) != c.inner {
				t.Fatalf("inner = %s, want %s", inner, c.inner)
			}
			if c.inner == "" && !bytes.Equal(inner, c.payload) {
				t.Fatalf("inner of a plain command = %s, want the payload", inner)
			}
		})
	}
}

func TestDecodeMalformed(t *testing.T) {
	kp, other := newKey(t), newKey(t)
	keys := keysOf(t, kp)
	sign := func(plain string) []byte { return ed25519.Sign(kp.priv, []byte(plain)) }
	pad := strings.Repeat("x", 1<<20)
	big := `{"name":"ping","target":"st-1","args":{"pad":"` + pad + `","nested":[1,{"a":[]}]},"id":"big-1"}`

	// A plain command whose length makes unpadded base64 end in a partial group.
	odd := `{"id":"c-odd","name":"ping","target":"st-1"}`
	if len(odd)%3 == 0 {
		t.Fatal("the test needs a length that base64 pads")
	}
	padded := mustJSON(t, contract.Signed{
		Signed: base64.URLEncoding.EncodeToString([]byte(odd)),
		Sig:    base64.RawURLEncoding.EncodeToString(sign(odd)),
		Kid:    kp.kid,
	})
	paddedSig := mustJSON(t, contract.Signed{
		Signed: base64.RawURLEncoding.EncodeToString([]byte(odd)),
		Sig:    base64.URLEncoding.EncodeToString(sign(odd)),
	})
	tampered := envelope(t, []byte(strings.Replace(ping, "st-1", "st-2", 1)), sign(ping), kp.kid)

	cases := []struct {
		name    string
		payload []byte
		keys    *command.Keys
		code    string
		id      string // "" means no command returned
	}{
		{"not JSON", []byte(`ping please`), nil, contract.CodeBadRequest, ""},
		{"empty", nil, nil, contract.CodeBadRequest, ""},
		{"truncated JSON", []byte(`{"id":"c-1","name":"pi`), nil, contract.CodeBadRequest, ""},
		{"trailing garbage", []byte(ping + `x`), nil, contract.CodeBadRequest, ""},
		{"array", []byte(`[` + ping + `]`), nil, contract.CodeBadRequest, ""},
		{"string", []byte(`"ping"`), nil, contract.CodeBadRequest, ""},
		{"null", []byte(`null`), nil, contract.CodeBadRequest, ""},
		{"1 MiB with an id", []byte(big), nil, contract.CodeBadRequest, "big-1"},
		{"1 MiB without an id", []byte(strings.Replace(big, `"id"`, `"idx"`, 1)), nil, contract.CodeBadRequest, ""},
		{"1 MiB signed with an id", envelope(t, []byte(big), make([]byte, 64), ""), keys, contract.CodeBadRequest, "big-1"},
		{"1 MiB not JSON", bytes.Repeat([]byte("{"), 1<<20), nil, contract.CodeBadRequest, ""},
		{"missing id", []byte(`{"name":"ping","target":"st-1"}`), nil, contract.CodeBadRequest, ""},
		{"empty id", []byte(`{"id":"","name":"ping","target":"st-1"}`), nil, contract.CodeBadRequest, ""},
		{"id of 65 characters", []byte(`{"id":"` + strings.Repeat("a", 65) + `","name":"ping","target":"st-1"}`), nil, contract.CodeBadRequest, ""},
		{"id of 64 characters but 256 bytes", []byte(`{"id":"` + strings.Repeat("😀", 64) + `","name":"ping","target":"st-1"}`), nil, contract.CodeBadRequest, ""},
		{"id of 64 characters, not ASCII", []byte(`{"id":"` + strings.Repeat("é", 64) + `","name":"ping","target":"st-1"}`), nil, contract.CodeBadRequest, ""},
		{"name not ASCII", []byte(`{"id":"c-1","name":"pïng","target":"st-1"}`), nil, contract.CodeBadRequest, "c-1"},
		{"target not a station id", []byte(`{"id":"c-1","name":"ping","target":"ST\u001b[31m"}`), nil, contract.CodeBadRequest, "c-1"},
		{"issued_at garbage", []byte(`{"id":"c-1","name":"ping","target":"st-1","issued_at":"now"}`), nil, contract.CodeBadRequest, "c-1"},
		{"expires before issued", []byte(`{"id":"c-1","name":"ping","target":"st-1","issued_at":"2030-01-02T03:04:05Z","expires_at":"2030-01-02T03:04:05Z"}`), nil, contract.CodeBadRequest, "c-1"},
		{"signed without issued_at", envelope(t, []byte(`{"id":"c-1","name":"ping","target":"st-1","expires_at":"2030-01-02T03:04:05Z"}`), sign(`{"id":"c-1","name":"ping","target":"st-1","expires_at":"2030-01-02T03:04:05Z"}`), kp.kid), keys, contract.CodeBadRequest, "c-1"},
		{"signed without expires_at", envelope(t, []byte(`{"id":"c-1","name":"ping","target":"st-1","issued_at":"2030-01-02T03:04:05Z"}`), sign(`{"id":"c-1","name":"ping","target":"st-1","issued_at":"2030-01-02T03:04:05Z"}`), kp.kid), keys, contract.CodeBadRequest, "c-1"},
		{"nested 33 levels", []byte(`{"id":"c-1","name":"ping","target":"st-1","args":{"a":` + strings.Repeat("[", 31) + strings.Repeat("]", 31) + `}}`), nil, contract.CodeBadRequest, ""},
		{"nested 3000 levels, 18 KB", []byte(`{"id":"c-1","name":"config.set","target":"st-1","args":` + strings.Repeat(`{"a":`, 3000) + "1" + strings.Repeat("}", 3000) + `}`), nil, contract.CodeBadRequest, ""},
		{"signed, inner nested too deep", envelope(t, []byte(`{"id":"c-1","a":`+strings.Repeat("[", 40)+strings.Repeat("]", 40)+`}`), sign(`x`), kp.kid), keys, contract.CodeBadRequest, ""},
		{"oversize and nested too deep", []byte(`{"id":"c-1","pad":"` + strings.Repeat("x", 70<<10) + `","a":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`), nil, contract.CodeBadRequest, ""},
		{"id with a control character", []byte(`{"id":"c\n1","name":"ping","target":"st-1"}`), nil, contract.CodeBadRequest, ""},
		{"id a number", []byte(`{"id":17,"name":"ping","target":"st-1"}`), nil, contract.CodeBadRequest, ""},
		{"id null", []byte(`{"id":null,"name":"ping","target":"st-1"}`), nil, contract.CodeBadRequest, ""},
		{"name missing", []byte(`{"id":"c-1","target":"st-1"}`), nil, contract.CodeBadRequest, "c-1"},
		{"name empty", []byte(`{"id":"c-1","name":"","target":"st-1"}`), nil, contract.CodeBadRequest, "c-1"},
		{"name a number", []byte(`{"id":"c-1","name":1,"target":"st-1"}`), nil, contract.CodeBadRequest, "c-1"},
		{"target missing", []byte(`{"id":"c-1","name":"ping"}`), nil, contract.CodeBadRequest, "c-1"},
		{"target a list", []byte(`{"id":"c-1","name":"ping","target":["st-1"]}`), nil, contract.CodeBadRequest, "c-1"},
		{"args a string", []byte(`{"id":"c-1","name":"ping","target":"st-1","args":"{}"}`), nil, contract.CodeBadRequest, "c-1"},
		{"args an array", []byte(`{"id":"c-1","name":"ping","target":"st-1","args":[]}`), nil, contract.CodeBadRequest, "c-1"},
		{"expires_at garbage", []byte(`{"id":"c-1","name":"ping","target":"st-1","expires_at":"tomorrow"}`), nil, contract.CodeBadRequest, "c-1"},
		{"expires_at a number", []byte(`{"id":"c-1","name":"ping","target":"st-1","expires_at":1700000000}`), nil, contract.CodeBadRequest, "c-1"},
		{"unsigned with keys", []byte(ping), keys, contract.CodeUnauthorized, "c-1"},
		{"unsigned and malformed with keys", []byte(`{"id":"c-1"}`), keys, contract.CodeUnauthorized, "c-1"},
		{"bad signature", envelope(t, []byte(ping), sign(`{"other":"bytes"}`), kp.kid), keys, contract.CodeUnauthorized, "c-1"},
		{"bad signature, no kid", envelope(t, []byte(ping), sign(`{"other":"bytes"}`), ""), keys, contract.CodeUnauthorized, "c-1"},
		{"signature by an unknown key", envelope(t, []byte(ping), ed25519.Sign(other.priv, []byte(ping)), other.kid), keys, contract.CodeUnauthorized, "c-1"},
		{"signature by an unknown key, no kid", envelope(t, []byte(ping), ed25519.Sign(other.priv, []byte(ping)), ""), keys, contract.CodeUnauthorized, "c-1"},
		{"wrong kid", envelope(t, []byte(ping), sign(ping), other.kid), keysOf(t, kp, other), contract.CodeUnauthorized, "c-1"},
		{"tampered signed bytes", tampered, keys, contract.CodeUnauthorized, "c-1"},
		{"signed with padding", padded, keys, contract.CodeBadRequest, "c-odd"},
		{"sig with padding", paddedSig, keys, contract.CodeBadRequest, "c-odd"},
		{"signed standard alphabet", mustJSON(t, map[string]string{"signed": "+/+/", "sig": base64.RawURLEncoding.EncodeToString(make([]byte, 64))}), keys, contract.CodeBadRequest, ""},
		{"sig too short", envelope(t, []byte(ping), make([]byte, 63), ""), keys, contract.CodeBadRequest, "c-1"},
		{"sig missing", mustJSON(t, map[string]string{"signed": base64.RawURLEncoding.EncodeToString([]byte(ping))}), keys, contract.CodeBadRequest, "c-1"},
		{"signed missing", mustJSON(t, map[string]string{"sig": base64.RawURLEncoding.EncodeToString(sign(ping))}), keys, contract.CodeBadRequest, ""},
		{"signed a number", []byte(`{"signed":5,"sig":"AA"}`), keys, contract.CodeBadRequest, ""},
		{"kid a number", []byte(`{"signed":"` + base64.RawURLEncoding.EncodeToString([]byte(ping)) + `","sig":"AA","kid":5}`), keys, contract.CodeBadRequest, "c-1"},
		{"signed inner not JSON", envelope(t, []byte("ping"), sign("ping"), kp.kid), keys, contract.CodeBadRequest, ""},
		{"signed inner an array", envelope(t, []byte(`[1]`), sign(`[1]`), kp.kid), keys, contract.CodeBadRequest, ""},
		{"signed inner malformed", envelope(t, []byte(`{"id":"c-9","target":"*"}`), sign(`{"id":"c-9","target":"*"}`), kp.kid), keys, contract.CodeBadRequest, "c-9"},
		{"signed inner malformed, no keys", envelope(t, []byte(`{"id":"c-9","name":7,"target":"*"}`), make([]byte, 64), ""), nil, contract.CodeBadRequest, "c-9"},
	}
	// A signed envelope inside a signed envelope.
	nested := envelope(t, []byte(ping), sign(ping), kp.kid)
	cases = append(cases, struct {
		name    string
		payload []byte
		keys    *command.Keys
		code    string
		id      string
	}{"nested envelope", envelope(t, nested, ed25519.Sign(kp.priv, nested), kp.kid), keys, contract.CodeBadRequest, ""})

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cmd, _, err := command.Decode(c.payload, c.keys)
			if err == nil {
				t.Fatalf("Decode accepted it: %+v", cmd)
			}
			if err.Code != c.code {
				t.Errorf("code = %s (%s), want %s", err.Code, err.Message, c.code)
			}
			if err.Message == "" {
				t.Error("empty message")
			}
			switch {
			case c.id == "" && cmd != nil:
				t.Errorf("cmd = %+v, want nil (no valid id)", *cmd)
			case c.id != "" && cmd == nil:
				t.Errorf("cmd = nil, want id %q", c.id)
			case c.id != "" && cmd.ID != c.id:
				t.Errorf("cmd.ID = %q, want %q", cmd.ID, c.id)
			}
		})
	}
}

// An error message must not repeat the payload: it may hold card data the station must not log.
func TestDecodeErrorsDoNotEchoThePayload(t *testing.T) {
	secret := "6228481234567890128" // synthetic: Luhn-valid, not a real card number
	for _, p := range []string{
		`{"id":"c-1","name":"` + secret + "\x01" + `","target":"st-1"}`,
		`{"id":"c-1","name":"ping","target":"st-1","expires_at":"` + secret + `"}`,
		`{"id":"c-1","name":"ping","target":"st-1","args":"` + secret + `"}`,
		`{"id":"` + secret + strings.Repeat("9", 60) + `"}`,
		secret,
	} {
		_, _, err := command.Decode([]byte(p), nil)
		if err == nil {
			t.Fatalf("Decode(%q) accepted it", p)
		}
		if strings.Contains(err.Message, secret[:10]) {
			t.Errorf("message %q repeats the payload", err.Message)
		}
	}
}

func TestExpired(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	c := &contract.Command{ExpiresAt: "2030-01-02T11:04:05+08:00"}
	for _, tc := range []struct {
		now  time.Time
		want bool
	}{
		{at.Add(-time.Nanosecond), false},
		{at, true},
		{at.Add(time.Hour), true},
	} {
		got, err := c.Expired(tc.now)
		if err != nil || got != tc.want {
			t.Errorf("Expired(%s) = %v, %v; want %v", tc.now, got, err, tc.want)
		}
	}
	if got, err := (&contract.Command{}).Expired(at.Add(1000 * time.Hour)); got || err != nil {
		t.Errorf("no expires_at: Expired = %v, %v; want false, nil", got, err)
	}
	if _, err := (&contract.Command{ExpiresAt: "soon"}).Expired(at); err == nil || !strings.HasPrefix(err.Error(), "command: ") {
		t.Errorf("garbage expires_at: err = %v", err)
	}
}

func TestFor(t *testing.T) {
	for _, tc := range []struct {
		target, station string
		want            bool
	}{
		{"st-1", "st-1", true}, {"*", "st-1", true}, {"st-2", "st-1", false}, {"", "", false}, {"ST-1", "st-1", false},
	} {
		if got := (&contract.Command{Target: tc.target}).For(tc.station); got != tc.want {
			t.Errorf("target %q For(%q) = %v, want %v", tc.target, tc.station, got, tc.want)
		}
	}
}

func TestParseKeys(t *testing.T) {
	// RFC 8032 test 1 public key; its kid computed with sha256sum, head and base64.
	raw, _ := hex.DecodeString("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
	const wantKid = "If4x36FUomE"
	for _, s := range []string{
		"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
		"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo",
		"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
		"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
		" 11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo= ",
	} {
		k, err := command.ParseKeys([]string{s})
		if err != nil {
			t.Fatalf("ParseKeys(%q): %v", s, err)
		}
		if ids := k.IDs(); len(ids) != 1 || ids[0] != wantKid {
			t.Errorf("ParseKeys(%q) ids = %v, want [%s]", s, ids, wantKid)
		}
	}
	if got := command.KeyID(raw); got != wantKid {
		t.Errorf("KeyID = %s, want %s", got, wantKid)
	}
	k, err := command.ParseKeys([]string{"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=", "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"})
	if err != nil || k.Len() != 1 {
		t.Errorf("the same key twice: Len = %d, %v; want 1", k.Len(), err)
	}
	if k, err := command.ParseKeys(nil); err != nil || k.Len() != 0 {
		t.Errorf("no keys: %v, %v", k, err)
	}
	if (*command.Keys)(nil).Len() != 0 {
		t.Error("nil Keys has keys")
	}
	for _, bad := range []string{"", "not base64!", "AAAA", base64.StdEncoding.EncodeToString(make([]byte, 33)), "+/-_" + strings.Repeat("A", 40)} {
		if _, err := command.ParseKeys([]string{base64.StdEncoding.EncodeToString(raw), bad}); err == nil {
			t.Errorf("ParseKeys accepted %q", bad)
		} else if !strings.HasPrefix(err.Error(), "command: public key 2: ") {
			t.Errorf("ParseKeys(%q) error %q does not name the key", bad, err)
		}
	}
}

func TestSignThenDecode(t *testing.T) {
	kp := newKey(t)
	env, err := command.Sign(kp.priv, kp.kid, []byte(ping))
	if err != nil {
		t.Fatal(err)
	}
	var s contract.Signed
	if err := json.Unmarshal(env, &s); err != nil {
		t.Fatal(err)
	}
	if s.Kid != kp.kid || strings.ContainsAny(s.Signed+s.Sig, "=+/") {
		t.Errorf("envelope %s: want kid %s and base64url without padding", env, kp.kid)
	}
	cmd, inner, derr := command.Decode(env, keysOf(t, kp))
	if derr != nil {
		t.Fatalf("Decode: %v", derr)
	}
	if string(inner) != ping || cmd.ID != "c-1" {
		t.Errorf("inner %s, cmd %+v", inner, cmd)
	}

	noKid, err := command.Sign(kp.priv, "", []byte(ping))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(noKid), "kid") {
		t.Errorf("envelope without kid: %s", noKid)
	}
	if _, _, derr := command.Decode(noKid, keysOf(t, newKey(t), kp)); derr != nil {
		t.Errorf("Decode without kid: %v", derr)
	}
}

func TestSignRefuses(t *testing.T) {
	kp := newKey(t)
	big := `{"id":"c-1","name":"ping","target":"*","args":{"pad":"` + strings.Repeat("x", 50<<10) + `"}}`
	for name, c := range map[string]struct {
		priv  ed25519.PrivateKey
		plain string
	}{
		"short key":         {kp.priv[:32], ping},
		"malformed command": {kp.priv, `{"id":"c-1"}`},
		"not JSON":          {kp.priv, `ping`},
		"an envelope":       {kp.priv, string(envelope(t, []byte(ping), make([]byte, 64), ""))},
		"too large signed":  {kp.priv, big},
	} {
		if _, err := command.Sign(c.priv, "", []byte(c.plain)); err == nil {
			t.Errorf("%s: Sign accepted it", name)
		} else if !strings.HasPrefix(err.Error(), "command: sign: ") {
			t.Errorf("%s: error %q", name, err)
		}
	}
}

func TestNewID(t *testing.T) {
	a, b := command.NewID(), command.NewID()
	if a == b || len(a) != 32 {
		t.Fatalf("NewID = %q, %q", a, b)
	}
	p := []byte(`{"id":"` + a + `","name":"ping","target":"*"}`)
	if cmd, _, err := command.Decode(p, nil); err != nil || cmd.ID != a {
		t.Fatalf("a NewID is not a valid id: %v", err)
	}
}

func TestErrorIsAnError(t *testing.T) {
	_, _, e := command.Decode([]byte(`[]`), nil)
	var err error = e
	if !strings.HasPrefix(err.Error(), "command: bad_request: ") {
		t.Errorf("Error() = %q", err.Error())
	}
	b := mustJSON(t, contract.Response{ID: "c-1", Error: e, TS: "2030-01-02T03:04:05Z"})
	if !strings.Contains(string(b), `"error":{"code":"bad_request","message":`) || !strings.Contains(string(b), `"ok":false`) {
		t.Errorf("response JSON = %s", b)
	}
}

func FuzzDecode(f *testing.F) {
	kp := newKey(f)
	keys := keysOf(f, kp)
	env, err := command.Sign(kp.priv, kp.kid, []byte(ping))
	if err != nil {
		f.Fatal(err)
	}
	deep := `{"id":"d","name":"config.set","target":"*","args":` + strings.Repeat(`{"a":`, 3000) + "1" + strings.Repeat("}", 3000) + `}`
	deepSigned := mustJSON(f, contract.Signed{Signed: base64.RawURLEncoding.EncodeToString([]byte(`{"id":"d","x":` + strings.Repeat("[", 100) + `]}`)), Sig: "AA"})
	for _, s := range []string{ping, string(env), `{"signed":"","sig":""}`, `[]`, `{"id":"a","name":"b","target":"*","args":{},"expires_at":"2030-01-02T03:04:05Z"}`, `{"id":1}`, ``,
		deep, string(deepSigned), `{"id":"` + strings.Repeat("😀", 64) + `","name":"ping","target":"*"}`, strings.Repeat("[", 40), `{"a":"\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}`} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, payload []byte, withKeys bool) {
		k := keys
		if !withKeys {
			k = nil
		}
		cmd, inner, err := command.Decode(payload, k)
		if cmd != nil && !command.ValidID(cmd.ID) {
			t.Fatalf("cmd with an invalid id %q", cmd.ID)
		}
		if cmd != nil && jsonlimit.Check(payload, command.MaxDepth) != nil {
			t.Fatalf("read an id out of input nested deeper than %d", command.MaxDepth)
		}
		if err != nil {
			if err.Code == "" || err.Message == "" {
				t.Fatalf("error without code or message: %+v", err)
			}
			return
		}
		if cmd == nil || cmd.Name == "" || cmd.Target == "" || inner == nil {
			t.Fatalf("accepted an incomplete command %+v, inner %q", cmd, inner)
		}
		if jsonlimit.Check(inner, command.MaxDepth) != nil || len(cmd.ID) > contract.MaxCommandID {
			t.Fatalf("accepted a command nested too deep or with a long id")
		}
		if _, xerr := cmd.Expired(time.Now()); xerr != nil {
			t.Fatalf("accepted an unreadable expires_at: %v", xerr)
		}
		if withKeys && !bytes.Equal(inner, []byte(ping)) {
			t.Fatalf("with keys, accepted something not signed: %q", inner)
		}
	})
}
