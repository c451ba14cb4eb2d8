package main

import (
	"encoding/json"
	"math"
	"regexp"
	"testing"
	"time"
)

func TestCardRecord(t *testing.T) {
	a, b := cardRecord("drain", 7), cardRecord("drain", 7)
	if string(a) != string(b) {
		t.Fatal("cardRecord is not deterministic")
	}
	if string(a) == string(cardRecord("drain", 8)) || string(a) == string(cardRecord("paho", 7)) {
		t.Fatal("cardRecord does not depend on its source and seq")
	}
	if n := len(a); n < 330 || n > 380 {
		t.Errorf("cardRecord is %d bytes, want about 350 like the agent's card records", n)
	}
	var r struct {
		ID   string `json:"id"`
		Seq  uint64 `json:"seq"`
		Type string `json:"type"`
		TS   string `json:"ts"`
		Card struct {
			Kind, Token, Masked string
		} `json:"card"`
	}
	if err := json.Unmarshal(a, &r); err != nil {
		t.Fatal(err)
	}
	if r.Seq != 7 || r.Type != "card.tap" || len(r.ID) != 32 || r.Card.Kind != "emv" || len(r.Card.Token) != 64 {
		t.Errorf("unexpected record %s", a)
	}
	if _, err := time.Parse(time.RFC3339Nano, r.TS); err != nil {
		t.Errorf("ts: %v", err)
	}
	// Only a masked number, no card number field.
	if !regexp.MustCompile(`^[0-9]{6}\*{6}[0-9]{4}$`).MatchString(r.Card.Masked) ||
		regexp.MustCompile(`"(pan|track2?)"`).Match(a) {
		t.Errorf("record holds more than a masked number: %s", a)
	}
}

func TestPercentileAndMedian(t *testing.T) {
	xs := func() []float64 { return []float64{5, 1, 4, 2, 3, 10, 9, 8, 7, 6} }
	for _, c := range []struct {
		p    float64
		want float64
	}{{50, 5}, {90, 9}, {99, 10}, {100, 10}, {10, 1}, {1, 1}} {
		if got := percentile(xs(), c.p); got != c.want {
			t.Errorf("percentile(%v) = %v, want %v", c.p, got, c.want)
		}
	}
	if got := median(xs()); got != 5.5 {
		t.Errorf("median = %v, want 5.5", got)
	}
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median odd = %v, want 2", got)
	}
	if !math.IsNaN(percentile(nil, 50)) || !math.IsNaN(median(nil)) {
		t.Error("no samples must give NaN")
	}
}

func TestFormat(t *testing.T) {
	for _, c := range []struct {
		v    float64
		want string
	}{
		{0, "0"}, {8192, "8192"}, {12.3456, "12.35"}, {421.8, "422"}, {0.5, "0.500"},
		{0.0123456, "0.0123"}, {math.NaN(), "NaN"},
	} {
		if got := formatValue(c.v); got != c.want {
			t.Errorf("formatValue(%v) = %q, want %q", c.v, got, c.want)
		}
	}
	if got := (figure{"rss_idle_mib", 13.02, "MiB"}).String(); got != "rss_idle_mib 13.02 MiB" {
		t.Errorf("figure = %q", got)
	}
}

func TestVerdict(t *testing.T) {
	for _, c := range []struct {
		f    figure
		ok   bool
		text string
	}{
		{figure{"drain_vs_paho_ratio", 0.85, "x"}, true, "≥ 0.800"},
		{figure{"drain_vs_paho_ratio", 0.7, "x"}, false, "≥ 0.800"},
		{figure{"rss_idle_mib", 15, "MiB"}, true, "≤ 15"},
		{figure{"disk_bytes_per_card_record", 30000, "B"}, false, "≤ 8192"},
		{figure{"paho_rate_per_s", 1, "records/s"}, true, ""},
	} {
		if ok, text := verdict(c.f); ok != c.ok || text != c.text {
			t.Errorf("verdict(%v) = %v %q, want %v %q", c.f, ok, text, c.ok, c.text)
		}
	}
}

func TestParseProcFiles(t *testing.T) {
	// A command name with spaces and parentheses: fields count after the last ')'.
	stat := "1234 (station (x) y) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 70 0 0 20 0 9 0 100 0 0"
	ticks, err := parseStatCPU(stat)
	if err != nil || ticks != 320 {
		t.Errorf("parseStatCPU = %d, %v; want 320", ticks, err)
	}
	if _, err := parseStatCPU("1234 (x) S 1 2"); err == nil {
		t.Error("short stat: no error")
	}

	io := "rchar: 100\nwchar: 200\nsyscr: 3\nsyscw: 4\nread_bytes: 0\nwrite_bytes: 40960\ncancelled_write_bytes: 0\n"
	if v, err := parseIOField(io, "write_bytes"); err != nil || v != 40960 {
		t.Errorf("write_bytes = %d, %v", v, err)
	}
	if _, err := parseIOField(io, "nope"); err == nil {
		t.Error("missing field: no error")
	}

	blk := "  147179    25097  7444106    82523  2065194   185046 49048056   415519        0   115028   545309"
	if v, err := parseSectorsWritten(blk); err != nil || v != 49048056*512 {
		t.Errorf("parseSectorsWritten = %d, %v", v, err)
	}
	if _, err := parseSectorsWritten("1 2 3"); err == nil {
		t.Error("short block stat: no error")
	}
}

func TestSubMsgRoundTrip(t *testing.T) {
	for _, m := range []subMsg{
		{At: 123456789, Topic: "stations/s1/events", QoS: 1, Len: 351, ID: "abc", Seq: 42, TS: "2026-01-05T08:00:01Z", BootID: "b"},
		{At: 1, Retained: true, QoS: 1, Topic: "stations/s1/status", State: "online"},
		{At: 2, Topic: "stations/s1/status", State: "has a space"}, // whitespace cannot split a field
	} {
		got, err := parseSubMsg(formatSubMsg(m))
		if err != nil {
			t.Fatalf("%+v: %v", m, err)
		}
		want := m
		if want.State == "has a space" {
			want.State = "has_a_space"
		}
		if got != want {
			t.Errorf("round trip of %+v gave %+v", m, got)
		}
	}
	for _, bad := range []string{"", "ready", "m 1 t 0 0 0 - 0 - -", "m x t 0 0 0 - 0 - - -", "m 1 t 0 2 0 - 0 - - -",
		"m 1 t 3 0 0 - 0 - - -", "m 1 t 1 0 -5 - 0 - - -"} {
		if _, err := parseSubMsg(bad); err == nil {
			t.Errorf("parseSubMsg(%q): no error", bad)
		}
	}
}

func TestStoreBytes(t *testing.T) {
	s0 := writeSnap{io: procIO{WChar: 1000, WriteBytes: 4096}, api: 10, log: 20}
	s1 := writeSnap{io: procIO{WChar: 50000, WriteBytes: 1 << 20}, api: 110, log: 70}
	if got, want := storeBytes(s0, s1, 800), int64(49000-100-50-800); got != want {
		t.Errorf("storeBytes = %d, want %d", got, want)
	}
	s1.io.WriteBytes = s0.io.WriteBytes // nothing dirtied: nothing reached the disk
	if got := storeBytes(s0, s1, 800); got != 0 {
		t.Errorf("storeBytes without a dirtied page = %d, want 0", got)
	}
}

func TestWireBytes(t *testing.T) {
	// QoS 1, topic of 24 bytes, payload 351: remaining length 2+24+2+351 = 379 (2 bytes).
	m := subMsg{Topic: "stations/bench-1/events1", QoS: 1, Len: 351}
	if got := m.wireBytes(); got != 1+2+379 {
		t.Errorf("wireBytes = %d, want %d", got, 1+2+379)
	}
	// QoS 0, remaining length 2+3+0 = 5 (1 byte).
	if got := (subMsg{Topic: "a/b", QoS: 0}).wireBytes(); got != 7 {
		t.Errorf("wireBytes = %d, want 7", got)
	}
}
