package main

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"station.dev/agent/internal/stationproc"
)

// TestDependencies keeps the binary lean and the layers apart (DESIGN §2): only the modules
// listed here may be linked into the station binary, and in every package of the module only
// store/ imports bbolt, only mqtt/ imports paho and mochi, and only drivers/ imports periph.
func TestDependencies(t *testing.T) {
	if os.Getenv(stationproc.EnvQEMU) != "" {
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
		"periph.io/x",
	}
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range strings.Fields(string(out)) {
		if !slices.ContainsFunc(allowed, func(a string) bool { return within(p, a) }) {
			t.Errorf("the station binary links %s: a new dependency must be justified and listed here", p)
		}
	}

	// Every package of the module, with the build tags that select more files. The imports of
	// test files are not checked: a test may measure a bare library (cmd/station-bench's probes).
	used := map[string]bool{} // the layers' dependencies imported by their owners
	for _, tags := range []string{"", "faults"} {
		out, err := exec.Command("go", "list", "-tags", tags, "-f", `{{.ImportPath}} {{join .Imports " "}}`, "station.dev/agent/...").Output()
		if err != nil {
			t.Fatalf("go list -tags %q: %v", tags, err)
		}
		pkgs := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(pkgs) < 20 {
			t.Fatalf("go list -tags %q listed %d packages: %q", tags, len(pkgs), out)
		}
		for _, v := range layerViolations(pkgs, used) {
			t.Error(v)
		}
	}
	// The rules check something: each layer's owner does import its dependency.
	for _, l := range layers {
		for _, dep := range l.deps {
			if !used[dep] {
				t.Errorf("no package of %s imports %s: is the rule still right?", l.owner, dep)
			}
		}
	}
}

// layers says which part of the module alone may import which dependencies.
var layers = []struct {
	owner string
	deps  []string
}{
	{"station.dev/agent/store", []string{"go.etcd.io/bbolt"}},
	{"station.dev/agent/mqtt", []string{"github.com/eclipse/paho.mqtt.golang", "github.com/mochi-mqtt/server/v2"}},
	{"station.dev/agent/drivers", []string{"periph.io/x"}},
	// Only the hardware assembly loads periph's host drivers and looks buses and pins up; the
	// drivers take what it opened.
	{"station.dev/agent/drivers/hw", []string{"periph.io/x/host", "periph.io/x/conn/v3/i2c/i2creg",
		"periph.io/x/conn/v3/spi/spireg", "periph.io/x/conn/v3/gpio/gpioreg"}},
}

// layerViolations checks lines of `go list -f '{{.ImportPath}} {{join .Imports " "}}'` against
// layers. It returns one message per import outside its owner, and notes in used each dependency
// its owner imports.
func layerViolations(lines []string, used map[string]bool) []string {
	var bad []string
	for _, line := range lines {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		pkg := f[0]
		for _, imp := range f[1:] {
			for _, l := range layers {
				for _, dep := range l.deps {
					if !within(imp, dep) {
						continue
					}
					if within(pkg, l.owner) {
						used[dep] = true
					} else {
						bad = append(bad, pkg+" imports "+imp+": only "+l.owner+"/... may")
					}
				}
			}
		}
	}
	return bad
}

// within reports whether the import path p is root or below it.
func within(p, root string) bool {
	return p == root || strings.HasPrefix(p, root+"/")
}

func TestLayerViolations(t *testing.T) {
	used := map[string]bool{}
	got := layerViolations([]string{
		"station.dev/agent/store go.etcd.io/bbolt fmt",
		"station.dev/agent/store/internal/x go.etcd.io/bbolt/errors",
		"station.dev/agent/storage go.etcd.io/bbolt",
		"station.dev/agent/agent station.dev/agent/store go.etcd.io/bbolt",
		"station.dev/agent/mqtt/embedded github.com/mochi-mqtt/server/v2/listeners",
		"station.dev/agent/mqtt/brokertest github.com/eclipse/paho.mqtt.golang",
		"station.dev/agent/cmd/station github.com/mochi-mqtt/server/v2 github.com/eclipse/paho.mqtt.golang/packets",
		"station.dev/agent/drivers/pn532 periph.io/x/conn/v3/i2c",
		"station.dev/agent/drivers/door periph.io/x/conn/v3/gpio/gpioreg",
		"station.dev/agent/internal/stationproc periph.io/x/host/v3",
		"station.dev/agent/mqttx github.com/eclipse/paho.mqtt.golangx",
	}, used)
	want := []string{
		"station.dev/agent/storage imports go.etcd.io/bbolt: only station.dev/agent/store/... may",
		"station.dev/agent/agent imports go.etcd.io/bbolt: only station.dev/agent/store/... may",
		"station.dev/agent/cmd/station imports github.com/mochi-mqtt/server/v2: only station.dev/agent/mqtt/... may",
		"station.dev/agent/cmd/station imports github.com/eclipse/paho.mqtt.golang/packets: only station.dev/agent/mqtt/... may",
		"station.dev/agent/drivers/door imports periph.io/x/conn/v3/gpio/gpioreg: only station.dev/agent/drivers/hw/... may",
		"station.dev/agent/internal/stationproc imports periph.io/x/host/v3: only station.dev/agent/drivers/... may",
		"station.dev/agent/internal/stationproc imports periph.io/x/host/v3: only station.dev/agent/drivers/hw/... may",
	}
	if !slices.Equal(got, want) {
		t.Errorf("violations:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(used) != 4 {
		t.Errorf("dependencies seen imported by their owners: %v, want all 4", used)
	}
}
