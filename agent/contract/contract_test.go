package contract

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestTopicsFor(t *testing.T) {
	got := TopicsFor("stations", "huayang-xianglong-01")
	want := Topics{
		Status:    "stations/huayang-xianglong-01/status",
		Events:    "stations/huayang-xianglong-01/events",
		Telemetry: "stations/huayang-xianglong-01/telemetry",
		Cmd:       "stations/huayang-xianglong-01/cmd",
		Resp:      "stations/huayang-xianglong-01/resp",
		FleetCmd:  "stations/_fleet/cmd",
	}
	if got != want {
		t.Fatalf("TopicsFor:\n got %+v\nwant %+v", got, want)
	}
	if got := TopicsFor("city/north", "s1").FleetCmd; got != "city/north/_fleet/cmd" {
		t.Fatalf("fleet topic under a two-level prefix: %q", got)
	}
}

func TestTopic(t *testing.T) {
	for _, c := range []struct{ prefix, station, kind, want string }{
		{"stations", "s1", KindEvents, "stations/s1/events"},
		{"stations", "+", KindStatus, "stations/+/status"},
		{"a/b", FleetLevel, KindCmd, "a/b/_fleet/cmd"},
	} {
		if got := Topic(c.prefix, c.station, c.kind); got != c.want {
			t.Errorf("Topic(%q, %q, %q) = %q, want %q", c.prefix, c.station, c.kind, got, c.want)
		}
	}
}

func TestCommandTopic(t *testing.T) {
	if got := CommandTopic("stations", "s1"); got != "stations/s1/cmd" {
		t.Errorf("one station: %q", got)
	}
	if got := CommandTopic("stations", FleetTarget); got != "stations/_fleet/cmd" {
		t.Errorf("every station: %q", got)
	}
}

func TestStationOf(t *testing.T) {
	for _, c := range []struct{ prefix, kind, topic, want string }{
		{"stations", KindStatus, "stations/s1/status", "s1"},
		{"a/b", KindEvents, "a/b/kiosk-7.east/events", "kiosk-7.east"},
		{"stations", KindStatus, "stations/s1/events", ""},   // another kind
		{"stations", KindStatus, "other/s1/status", ""},      // another prefix
		{"stations", KindCmd, "stations/_fleet/cmd", ""},     // not a station
		{"stations", KindStatus, "stations/a/b/status", ""},  // two levels
		{"stations", KindStatus, "stations//status", ""},     // empty id
		{"stations", KindStatus, "stations/S1/status", ""},   // upper case
		{"stations", KindStatus, "stationsx/s1/status", ""},  // prefix is a whole level
		{"stations", KindStatus, "stations/s1/statusx", ""},  // kind is a whole level
		{"stations", KindStatus, "stations/s1/status/x", ""}, // trailing level
		{"stations", KindStatus, "x/stations/s1/status", ""}, // leading level
		{"stations", KindStatus, "stations/-s1/status", ""},  // bad first character
		{"stations", KindStatus, "stations/s1 /status", ""},  // space
		{"stations", KindStatus, "stations/s.1_2-3/status", "s.1_2-3"},
	} {
		if got := StationOf(c.prefix, c.kind, c.topic); got != c.want {
			t.Errorf("StationOf(%q, %q, %q) = %q, want %q", c.prefix, c.kind, c.topic, got, c.want)
		}
	}
}

func TestValidStationID(t *testing.T) {
	for id, ok := range map[string]bool{
		"huayang-xianglong-01":  true,
		"0":                     true,
		"a.b_c-d":               true,
		strings.Repeat("a", 64): true,
		strings.Repeat("a", 65): false,
		"":                      false,
		"_fleet":                false,
		"-a":                    false,
		".a":                    false,
		"Station":               false,
		"a/b":                   false,
		"a+b":                   false,
		"a#":                    false,
		"a b":                   false,
		"ä":                     false,
	} {
		if ValidStationID(id) != ok {
			t.Errorf("ValidStationID(%q): want %v", id, ok)
		}
	}
}

func TestValidTopicPrefix(t *testing.T) {
	for p, ok := range map[string]bool{
		"stations":     true,
		"Stations":     true,
		"city/north":   true,
		"a.b_c-d/e":    true,
		"":             false,
		"/stations":    false,
		"stations/":    false,
		"a//b":         false,
		"stations/+":   false,
		"stations/#":   false,
		"stat ions":    false,
		"stations\x00": false,
	} {
		if ValidTopicPrefix(p) != ok {
			t.Errorf("ValidTopicPrefix(%q): want %v", p, ok)
		}
	}
}

func TestValidSubmittedType(t *testing.T) {
	for typ, ok := range map[string]bool{
		"kiosk.receipt":                true,
		"a.b":                          true,
		"kiosk.v2.printer_jam":         true,
		"a.b.c.d":                      true,
		"a.b.c.d.e":                    false, // at most four words
		"kiosk":                        false, // at least two
		"":                             false,
		"Kiosk.receipt":                false,
		"kiosk..receipt":               false,
		"kiosk.receipt.":               false,
		".kiosk":                       false,
		"1kiosk.receipt":               false,
		"kiosk.receipt!":               false,
		"kiosk-app.receipt":            false,
		strings.Repeat("a", 32) + ".b": true,
		strings.Repeat("a", 33) + ".b": false,
		"a." + strings.Repeat("b", 32): true,
		"a." + strings.Repeat("b", 33): false,
	} {
		if ValidSubmittedType(typ) != ok {
			t.Errorf("ValidSubmittedType(%q): want %v", typ, ok)
		}
	}
}

// Other station software may not write records that pose as the agent's own.
func TestSubmittedTypeIsNotTheAgents(t *testing.T) {
	for _, typ := range []string{
		TypeCardTap, TypeCardError, TypeBoot, TypeConfigChanged, TypeStoreRecovered, TypeStoreFull,
		TypeDoorOpen, TypeDoorClose, TypeClockJump, TypeEnvAlarm, TypeEnvOK,
	} {
		if ValidSubmittedType(typ) {
			t.Errorf("%q may be submitted: a kiosk could forge the agent's records", typ)
		}
	}
}

func TestCommandExpired(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	c := Command{ExpiresAt: at.Format(time.RFC3339Nano)}
	if exp, err := c.Expired(at.Add(-time.Nanosecond)); exp || err != nil {
		t.Errorf("before expires_at: %v %v", exp, err)
	}
	if exp, err := c.Expired(at); !exp || err != nil {
		t.Errorf("at expires_at: %v %v", exp, err)
	}
	if exp, err := (&Command{}).Expired(at.Add(100 * 365 * 24 * time.Hour)); exp || err != nil {
		t.Errorf("without expires_at: %v %v", exp, err)
	}
	if _, err := (&Command{ExpiresAt: "tomorrow"}).Expired(at); err == nil {
		t.Error("an unreadable expires_at is not an error")
	}
	// Another zone names the same instant.
	c.ExpiresAt = "2026-03-01T20:00:00+08:00"
	if exp, _ := c.Expired(at); !exp {
		t.Error("expires_at with an offset read wrongly")
	}
}

func TestCommandFor(t *testing.T) {
	for _, c := range []struct {
		target, station string
		want            bool
	}{
		{"s1", "s1", true},
		{FleetTarget, "s1", true},
		{"s2", "s1", false},
		{"", "s1", false},
		{"", "", false},
	} {
		if got := (&Command{Target: c.target}).For(c.station); got != c.want {
			t.Errorf("target %q for %q: %v", c.target, c.station, got)
		}
	}
}

func TestErrorMessage(t *testing.T) {
	e := &Error{Code: CodeExpired, Message: "expired at noon"}
	if got := e.Error(); got != "command: expired: expired at noon" {
		t.Fatalf("%q", got)
	}
}

// The validators are written by hand (regexp would add about 90 KB to the binary); they accept
// exactly what the documented patterns accept.
func TestValidatorsMatchTheirPatterns(t *testing.T) {
	station := regexp.MustCompile(`^` + StationIDSyntax + `$`)
	prefix := regexp.MustCompile(`^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$`)
	typ := regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}(\.[a-z0-9_]{1,32}){1,3}$`)
	alphabet := []byte("aZ09._-/ éx+#")
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200000; i++ {
		b := make([]byte, rng.IntN(70))
		for j := range b {
			b[j] = alphabet[rng.IntN(len(alphabet))]
		}
		s := string(b)
		if got, want := ValidStationID(s), station.MatchString(s); got != want {
			t.Fatalf("ValidStationID(%q) = %v, pattern says %v", s, got, want)
		}
		if got, want := ValidTopicPrefix(s), prefix.MatchString(s); got != want {
			t.Fatalf("ValidTopicPrefix(%q) = %v, pattern says %v", s, got, want)
		}
		if got, want := submittedTypeSyntax(s), typ.MatchString(s); got != want {
			t.Fatalf("submittedTypeSyntax(%q) = %v, pattern says %v", s, got, want)
		}
	}
	for _, s := range []string{"kiosk.receipt", "a.b.c.d", "a.b.c.d.e", strings.Repeat("a", 32) + ".b", strings.Repeat("a", 33) + ".b", "st-01", strings.Repeat("s", 64), strings.Repeat("s", 65)} {
		if submittedTypeSyntax(s) != typ.MatchString(s) || ValidStationID(s) != station.MatchString(s) {
			t.Errorf("%q: validators and patterns disagree", s)
		}
	}
}
