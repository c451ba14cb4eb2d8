package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseFull(t *testing.T) {
	c, err := Parse([]byte(`
station_id = "huayang-xianglong-01"
data_dir   = "/var/lib/station"
[mqtt]
broker       = "tls://broker.example:8883"
topic_prefix = "stations"
ca_file = "/etc/station/ca.pem"
cert_file = "/etc/station/cert.pem"
key_file = "/etc/station/key.pem"
username = "u"
password_file = "/etc/station/pw"
window = 16
[store]
max_bytes = "128MiB"
[card]
key_file = "/etc/station/card.key"
[commands]
public_keys = ["11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"]
[clock]
assume_synced = true
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Normalize(); err != nil {
		t.Fatal(err)
	}
	if c.Store.MaxBytes != 128<<20 || c.MQTT.Window != 16 || !c.Clock.AssumeSynced || c.MQTT.KeepAlive.D() != 30*time.Second {
		t.Fatalf("unexpected %+v", c)
	}
	if c.Reader.Driver != "pn532" || c.Reader.Address != 0x24 {
		t.Fatalf("reader defaults: %+v", c.Reader)
	}
}

func TestErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`station_id = "x"` + "\nbogus = 1", "unknown key bogus"},
		{`station_id = "x"` + "\n[mqtt]\nbrokr = \"tcp://a:1\"", "unknown key mqtt.brokr"},
		{`station_id = "x"` + "\n[store]\nmax_bytes = \"lots\"", "max_bytes"},
		{`station_id = "Bad Id"` + "\n[mqtt]\nbroker = \"tcp://a:1\"", "station_id"},
		{`station_id = "x"` + "\n[mqtt]\nbroker = \"http://a:1\"", "mqtt.broker"},
		{`station_id = "x"` + "\n[mqtt]\nbroker = \"tcp://a\"", "mqtt.broker"},
		{`station_id = "x"`, "mqtt.broker is required"},
		{`station_id = "x"` + "\n[mqtt]\nbroker = \"tcp://a:1\"\n[store]\nmax_bytes = \"1KiB\"", "store.max_bytes"},
		{`station_id = "x"` + "\n[mqtt]\nbroker = \"tcp://a:1\"\n[commands]\npublic_keys = [\"abc\"]", "commands.public_keys[0]"},
		{`station_id = "x"` + "\n[mqtt]\nbroker = \"tcp://a:1\"\ncert_file = \"c\"", "key_file"},
		{`station_id = "x"` + "\n[reader]\ndriver = \"acr122\"\n[mqtt]\nbroker = \"tcp://a:1\"", "reader.driver"},
		{`station_id = = "x"`, "line 1"},
		{`station_id = 5`, "station_id"},
	} {
		c, err := Parse([]byte(tc.in))
		if err == nil {
			err = c.Normalize()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error naming %q", tc.in, err, tc.want)
		}
		if err != nil && strings.Count(err.Error(), "\n") > 0 {
			t.Errorf("%q: error is not one line: %q", tc.in, err)
		}
	}
}

func TestSimDefaults(t *testing.T) {
	c := &Config{Sim: true}
	if err := c.Normalize(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(c.StationID, "sim-") || c.MQTT.Broker != Embedded || c.Reader.Driver != "sim" || c.DataDir == "" {
		t.Fatalf("sim defaults: %+v", c)
	}
}

func TestSize(t *testing.T) {
	for in, want := range map[string]Size{"256MiB": 256 << 20, "1GiB": 1 << 30, "10MB": 10e6, "4096": 4096, "512 KiB": 512 << 10} {
		var s Size
		if err := s.UnmarshalText([]byte(in)); err != nil || s != want {
			t.Errorf("%q: %v %v", in, s, err)
		}
	}
	var s Size
	if s.UnmarshalText([]byte("-1MiB")) == nil || s.UnmarshalText([]byte("9999999999999GiB")) == nil {
		t.Error("accepted a bad size")
	}
}

func TestLoadAndRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "station.toml")
	if err := os.WriteFile(p, []byte("station_id = \"a1\"\n[mqtt]\nbroker = \"tcp://127.0.0.1:1883\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Normalize(); err != nil {
		t.Fatal(err)
	}
	b, err := c.TOML()
	if err != nil {
		t.Fatal(err)
	}
	c2, err := Parse(b)
	if err != nil {
		t.Fatalf("rendered config does not parse: %v\n%s", err, b)
	}
	if err := c2.Normalize(); err != nil || c2.MQTT != c.MQTT || c2.Store != c.Store {
		t.Fatalf("round trip: %v %+v", err, c2)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.toml")); err == nil || !strings.HasPrefix(err.Error(), "config: ") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestSizeHuman(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 812: "812B", 1536: "1.5KiB", 256 << 20: "256.0MiB", 3 << 30: "3.0GiB"} {
		if got := Size(n).Human(); got != want {
			t.Errorf("Size(%d).Human() = %q, want %q", n, got, want)
		}
	}
}
