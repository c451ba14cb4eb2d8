package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies keeps the binary lean and the layers apart (DESIGN §2): only the modules
// listed here may be linked into the station binary, only store/ imports bbolt, only mqtt/
// imports paho, only drivers/ imports periph, and only drivers/hw opens periph's host and
// registries.
func TestDependencies(t *testing.T) {
	if os.Getenv("STATION_TEST_QEMU") != "" {
		t.Skip("lists packages with the go command, which is the host's: nothing target-specific to check")
	}
	allowed := []string{
		"station.dev/agent",
		"github.com/BurntSushi/toml",
		"github.com/eclipse/paho.mqtt.golang",
		"github.com/gorilla/websocket", // paho
		"github.com/mochi-mqtt/server/v2",
		"github.com/rs/xid", // mochi
		"go.etcd.io/bbolt",
		"golang.org/x/net", // paho's proxy support
		"golang.org/x/sync",
		"golang.org/x/sys",
		"periph.io/x/",
	}
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range strings.Fields(string(out)) {
		ok := false
		for _, a := range allowed {
			ok = ok || strings.HasPrefix(p, a)
		}
		if !ok {
			t.Errorf("the station binary links %s: a new dependency must be justified and listed here", p)
		}
	}

	layers := map[string]string{
		"go.etcd.io/bbolt":                    "station.dev/agent/store",
		"github.com/eclipse/paho.mqtt.golang": "station.dev/agent/mqtt",
		"periph.io/x/":                        "station.dev/agent/drivers",
		// Only the hardware assembly loads periph's host drivers and looks buses and pins up:
		// the drivers take what they are given.
		"periph.io/x/host/":                "station.dev/agent/drivers/hw",
		"periph.io/x/conn/v3/i2c/i2creg":   "station.dev/agent/drivers/hw",
		"periph.io/x/conn/v3/spi/spireg":   "station.dev/agent/drivers/hw",
		"periph.io/x/conn/v3/gpio/gpioreg": "station.dev/agent/drivers/hw",
	}
	out, err = exec.Command("go", "list", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", "station.dev/agent/...").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		for _, imp := range f[1:] {
			for dep, owner := range layers {
				if strings.HasPrefix(imp, dep) && !strings.HasPrefix(f[0], owner) {
					t.Errorf("%s imports %s: only %s may", f[0], imp, owner)
				}
			}
		}
	}
}
