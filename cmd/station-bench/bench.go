package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"station.dev/agent/internal/stationproc"
)

// bench holds what a run has started and measured.
type bench struct {
	o              options
	stdout, stderr io.Writer

	module string // the module root, where the go commands run
	work   string // the work directory, removed by cleanup
	bin    string // the station binary (host)
	probe  string // the probe binary (this package's tests, see baseline_test.go)
	broker string // Mosquitto's URL
	mosqV  string // Mosquitto's version line

	appendP50ms float64 // store.Append p50, for the share of the store in a tap

	mu      sync.Mutex
	procs   []*stationproc.Process
	figures []figure
	notes   []string
	ids     int
}

func newBench(ctx context.Context, o options, stdout, stderr io.Writer) (*bench, error) {
	b := &bench{o: o, stdout: stdout, stderr: stderr}
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return nil, fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return nil, errors.New("run it inside the station agent's module: go run ./cmd/station-bench")
	}
	mod, err := os.ReadFile(gomod)
	if err != nil {
		return nil, err
	}
	if !bytes.HasPrefix(mod, []byte("module station.dev/agent\n")) {
		return nil, fmt.Errorf("%s is not the station agent's module (station.dev/agent)", gomod)
	}
	b.module = filepath.Dir(gomod)

	parent := o.dir
	if parent == "" {
		parent = os.TempDir()
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(parent, &fs); err != nil {
		return nil, fmt.Errorf("work directory: %w", err)
	}
	switch uint32(fs.Type) { // int32 on 32-bit ARM
	case unix.TMPFS_MAGIC, unix.RAMFS_MAGIC:
		return nil, fmt.Errorf("%s is a tmpfs: fsync costs nothing there; pass -dir on the disk to measure", parent)
	}
	b.work, err = os.MkdirTemp(parent, "station-bench-")
	if err != nil {
		return nil, err
	}
	// Mosquitto, started as root, drops to the mosquitto user: it must be able to reach its
	// directory below this one.
	if err := os.Chmod(b.work, 0o711); err != nil {
		return nil, errors.Join(err, os.RemoveAll(b.work))
	}
	return b, nil
}

// cleanup stops every process still running and removes the work directory.
func (b *bench) cleanup() error {
	b.mu.Lock()
	procs := b.procs
	b.procs = nil
	b.mu.Unlock()
	var errs []error
	// The newest first: agents and probes before the broker they use.
	for i := len(procs) - 1; i >= 0; i-- {
		if err := procs[i].Stop(10 * time.Second); err != nil && !isSignalExit(err) {
			errs = append(errs, fmt.Errorf("stopping %s: %w", procs[i].Name(), err))
		}
	}
	if b.o.keep {
		b.progress("work directory kept: %s", b.work)
	} else if err := os.RemoveAll(b.work); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// isSignalExit reports whether err is the exit of a process ended by SIGTERM or SIGKILL, which
// cleanup sent it.
func isSignalExit(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && (ws.Signal() == syscall.SIGTERM || ws.Signal() == syscall.SIGKILL)
}

// progress writes a line to stderr.
func (b *bench) progress(format string, args ...any) {
	fmt.Fprintf(b.stderr, format+"\n", args...)
}

// emit records a figure and prints it on stdout at once.
func (b *bench) emit(name string, value float64, unit string) {
	f := figure{Name: name, Value: value, Unit: unit}
	b.mu.Lock()
	b.figures = append(b.figures, f)
	b.mu.Unlock()
	fmt.Fprintln(b.stdout, f)
}

// note keeps a remark for the summary.
func (b *bench) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	b.mu.Lock()
	b.notes = append(b.notes, s)
	b.mu.Unlock()
	b.progress("   note: %s", s)
}

// summary lists the figures with targets on stderr.
func (b *bench) summary() {
	b.progress("== summary against the targets")
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, f := range b.figures {
		ok, t := verdict(f)
		if t == "" {
			continue
		}
		mark := "met"
		if !ok {
			mark = "MISSED"
		}
		b.progress("   %-34s %12s %-10s target %-8s %s", f.Name, formatValue(f.Value), f.Unit, t, mark)
	}
	for _, n := range b.notes {
		b.progress("   note: %s", n)
	}
	b.progress("   load average at the end: %s", loadAvg())
}

// uniqueID returns a fresh station id for one agent run (a separate MQTT session and topic).
func (b *bench) uniqueID(what string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ids++
	return fmt.Sprintf("bench-%s-%d", what, b.ids)
}

// machine describes the machine on stderr.
func (b *bench) machine() {
	model := "unknown"
	if c, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(c), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	var u unix.Utsname
	kernel := "unknown"
	if unix.Uname(&u) == nil {
		kernel = unix.ByteSliceToString(u.Release[:])
	}
	gov, _ := exec.Command("go", "version").Output()
	fs := "unknown"
	var st unix.Statfs_t
	if unix.Statfs(b.work, &st) == nil {
		fs = "0x" + strconv.FormatUint(uint64(uint32(st.Type)), 16)
	}
	mode := "full"
	if b.o.quick {
		mode = "quick"
	}
	b.progress("machine: nproc=%d cpu=%q kernel=%s %s os/arch=%s/%s", runtime.NumCPU(), model, kernel,
		strings.TrimSpace(string(gov)), runtime.GOOS, runtime.GOARCH)
	b.progress("run: mode=%s work=%s (filesystem magic %s); load average %s", mode, b.work, fs, loadAvg())
}

// loadAvg returns the 1, 5 and 15 minute load averages: other work on the machine skews the
// figures, and this says how much there was.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// goCmd runs the go command in the module root.
func (b *bench) goCmd(ctx context.Context, env []string, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = b.module
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out.Bytes())
	}
	return nil
}

// build builds the station binary and the probe binary.
func (b *bench) build(ctx context.Context) error {
	dir := filepath.Join(b.work, "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b.bin = filepath.Join(dir, "station")
	b.probe = filepath.Join(dir, "station-bench-probe")
	if err := stationproc.Build(ctx, b.bin, false); err != nil {
		return err
	}
	return b.goCmd(ctx, nil, "test", "-c", "-o", b.probe, "./cmd/station-bench")
}

// binarySize measures the release build for arm64.
func (b *bench) binarySize(ctx context.Context) error {
	out := filepath.Join(b.work, "bin", "station-arm64")
	err := b.goCmd(ctx, []string{"GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0"},
		"build", "-trimpath", "-ldflags", "-s -w", "-o", out, "./cmd/station")
	if err != nil {
		return err
	}
	fi, err := os.Stat(out)
	if err != nil {
		return err
	}
	b.emit("binary_arm64_mib", mib(fi.Size()), "MiB")
	return nil
}

// startProc starts cmd as a registered process, its stderr (and stdout, unless already set)
// going to a log file in the work directory. It dies with the benchmark should the benchmark
// be killed; normally cleanup stops it.
func (b *bench) startProc(name string, cmd *exec.Cmd) (*stationproc.Process, error) {
	p, err := stationproc.StartProcess(name, cmd, filepath.Join(b.work, name+".log"), nil)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.procs = append(b.procs, p)
	b.mu.Unlock()
	return p, nil
}

// stopProc stops p and forgets it.
func (b *bench) stopProc(p *stationproc.Process) error {
	err := p.Stop(10 * time.Second)
	b.mu.Lock()
	for i, q := range b.procs {
		if q == p {
			b.procs = append(b.procs[:i], b.procs[i+1:]...)
			break
		}
	}
	b.mu.Unlock()
	return err
}

// startMosquitto starts the broker on a free loopback port.
func (b *bench) startMosquitto(ctx context.Context) error {
	path, err := exec.LookPath("mosquitto")
	if err != nil {
		for _, p := range []string{"/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
			if _, serr := os.Stat(p); serr == nil {
				path, err = p, nil
				break
			}
		}
	}
	if err != nil {
		return errors.New("mosquitto not found: install it (apt-get install mosquitto) and run again")
	}
	// `mosquitto -h` prints its version first (and exits with status 3).
	out, _ := exec.CommandContext(ctx, path, "-h").CombinedOutput()
	b.mosqV, _, _ = strings.Cut(string(out), "\n")
	b.progress("broker: %s", strings.TrimSpace(b.mosqV))

	dir := filepath.Join(b.work, "mosquitto")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	var lastErr error
	for attempt := 1; attempt <= 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		conf := filepath.Join(dir, fmt.Sprintf("mosquitto-%d.conf", attempt))
		// max_queued_messages and max_inflight_messages lifted: the subscriber that observes
		// the drain must not be what limits it.
		text := fmt.Sprintf(`listener %d 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 10000000
max_inflight_messages 0
log_dest stderr
log_type error
log_type warning
`, port)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			return err
		}
		p, err := b.startProc(fmt.Sprintf("mosquitto-%d", attempt), exec.Command(path, "-c", conf))
		if err != nil {
			return err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if err := waitListening(ctx, p, addr, 5*time.Second); err != nil {
			lastErr = fmt.Errorf("%w\n%s", err, p.Tail(5))
			_ = b.stopProc(p)
			continue // most likely the port was taken meanwhile: try another
		}
		b.broker = "tcp://" + addr
		b.progress("broker: listening on %s", addr)
		return nil
	}
	return fmt.Errorf("mosquitto did not start: %w", lastErr)
}

// mkdir creates a directory (and its parents) for the benchmark's files.
func mkdir(dir string) error { return os.MkdirAll(dir, 0o755) }

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitListening polls until addr accepts a connection.
func waitListening(ctx context.Context, p *stationproc.Process, addr string, timeout time.Duration) error {
	err := stationproc.Poll(ctx, p, timeout, 20*time.Millisecond, func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		return fmt.Errorf("%s not listening on %s: %w", p.Name(), addr, err)
	}
	return nil
}
