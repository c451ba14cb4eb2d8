// Package stationproc runs the station binary as separate processes, for the end-to-end tests
// (cmd/station), the fault-injection suite (faulttest) and the benchmark (cmd/station-bench).
//
// Binary builds the binary once per test binary; Start runs `station run --sim` with a
// configuration of its own, in a directory of its own, and returns once its local API answers;
// the Agent it returns runs CLI subcommands against it, kills it (SIGKILL) or stops it (SIGTERM
// and wait), and keeps its log in a file. Process is the part that knows nothing of the station:
// a child process with its output in a log file, stopped in order; ReadMemory and SampleMemory
// read its resident memory.
//
// The binary is built for the GOOS and GOARCH of the environment. When STATION_TEST_QEMU names a
// user-mode emulator (.ci/arm-tests.sh sets it), every station process runs under it: a binary
// built for ARM cannot be exec'd directly on the build machine.
package stationproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

// stationPkg is the import path of the station command.
const stationPkg = "station.dev/agent/cmd/station"

// EnvQEMU names the environment variable holding the emulator command that runs binaries built
// for another architecture, e.g. qemu-arm-static.
const EnvQEMU = "STATION_TEST_QEMU"

// Race builds the binary with the race detector. It is true when the test binary itself runs
// with the race detector; a TestMain may set it before the tests run.
var Race = raceEnabled

// Tags are build tags for the binary Binary builds ("faults" builds in the agent's fault points,
// which only the fault-injection suite uses). A TestMain may set it before the tests run.
var Tags string

var (
	inMain atomic.Bool
	bin    struct {
		once sync.Once
		dir  string
		path string
		err  error
	}
)

// Main runs the tests and then removes the binary that Binary built for them. A package whose
// tests use Binary (or Start, Run, Command) calls it from its TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(stationproc.Main(m)) }
func Main(m *testing.M) int {
	inMain.Store(true)
	code := m.Run()
	if bin.dir != "" {
		if err := os.RemoveAll(bin.dir); err != nil {
			fmt.Fprintln(os.Stderr, "stationproc:", err)
		}
	}
	return code
}

// Binary returns the path of the station binary, built at the first call and shared by every
// test of the test binary. A failed build fails each test that asks for it.
func Binary(t testing.TB) string {
	t.Helper()
	path, err := binary()
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// binary is Binary for goroutines other than the test's.
func binary() (string, error) {
	if !inMain.Load() {
		return "", errors.New("stationproc: the tests must run through stationproc.Main (from TestMain), which removes the binary it builds")
	}
	bin.once.Do(func() {
		bin.dir, bin.err = os.MkdirTemp("", "stationproc-")
		if bin.err != nil {
			return
		}
		bin.path = filepath.Join(bin.dir, "station")
		bin.err = Build(context.Background(), bin.path, Race)
	})
	if bin.err != nil {
		return "", fmt.Errorf("stationproc: building the station binary: %w", bin.err)
	}
	return bin.path, nil
}

// Build builds the station command into the file out, with the race detector if race is set.
// It runs the go command in the current directory, which must be inside the module.
func Build(ctx context.Context, out string, race bool) error {
	args := []string{"build", "-o", out}
	if race {
		args = append(args, "-race")
	}
	if Tags != "" {
		args = append(args, "-tags", Tags)
	}
	cmd := exec.CommandContext(ctx, "go", append(args, stationPkg)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %v: %w\n%s", append(args, stationPkg), err, b)
	}
	return nil
}

// Command returns a command running the station binary with args, under the emulator if
// EnvQEMU names one.
func Command(t testing.TB, args ...string) *exec.Cmd {
	t.Helper()
	return command(Binary(t), args...)
}

func command(path string, args ...string) *exec.Cmd {
	if q := os.Getenv(EnvQEMU); q != "" {
		return exec.Command(q, append([]string{path}, args...)...)
	}
	return exec.Command(path, args...)
}

// Run runs the station binary with args to its end and returns its stdout, its stderr and its
// exit status. A command that could not run at all has status -1, and the reason in stderr.
func Run(t testing.TB, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return run(Command(t, args...))
}

func run(cmd *exec.Cmd) (stdout, stderr string, code int) {
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		code = -1
		errb.WriteString(err.Error())
	}
	return out.String(), errb.String(), code
}
