package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"station.dev/agent/agent/config"
	"station.dev/agent/agent/localapi"
	"station.dev/agent/drivers/cardreader"
	"station.dev/agent/drivers/door"
	"station.dev/agent/drivers/emv"
	"station.dev/agent/drivers/envsensor"
	"station.dev/agent/drivers/indicator"
	"station.dev/agent/drivers/pn532"
	"station.dev/agent/drivers/pn532/pn532sim"
	"station.dev/agent/internal/clock"
	"station.dev/agent/mqtt"
	"station.dev/agent/mqtt/brokertest"
	"station.dev/agent/store"
)

// The fakes below stand in for the station's hardware; the store and the broker are real.

// fakeReader hands out the presentations a test sends on c, and the errors it sends on errs.
type fakeReader struct {
	c      chan cardreader.Presentation
	errs   chan error
	mu     sync.Mutex
	health pn532.Health
}

func (f *fakeReader) Next(ctx context.Context) (cardreader.Presentation, error) {
	select {
	case p := <-f.c:
		return p, nil
	case err := <-f.errs:
		return cardreader.Presentation{}, err
	case <-ctx.Done():
		return cardreader.Presentation{}, ctx.Err()
	}
}

func (f *fakeReader) setHealth(h pn532.Health) {
	f.mu.Lock()
	f.health = h
	f.mu.Unlock()
}

func (f *fakeReader) Health() pn532.Health {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.health
}

// fakeIndicator records the patterns shown.
type fakeIndicator struct {
	mu       sync.Mutex
	patterns []indicator.Pattern
	shown    chan indicator.Pattern
	locate   time.Duration
}

func (f *fakeIndicator) Show(p indicator.Pattern) error {
	f.mu.Lock()
	f.patterns = append(f.patterns, p)
	f.mu.Unlock()
	select {
	case f.shown <- p:
	default:
	}
	return nil
}

func (f *fakeIndicator) Locate(d time.Duration) error {
	f.mu.Lock()
	f.locate = d
	f.mu.Unlock()
	return nil
}

func (f *fakeIndicator) Clear(p indicator.Pattern) error {
	f.mu.Lock()
	if p == indicator.Locate {
		f.locate = 0
	}
	f.mu.Unlock()
	return nil
}

func (f *fakeIndicator) State() indicator.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := indicator.State{Pattern: indicator.Idle, LEDs: "off"}
	if n := len(f.patterns); n > 0 {
		st.Pattern = f.patterns[n-1]
	}
	return st
}

func (f *fakeIndicator) Health() (string, string) { return "ok", "" }

// fakeDoor is a door switch whose events the test sends.
type fakeDoor struct {
	events chan door.Event
	mu     sync.Mutex
	state  door.Event
}

func (f *fakeDoor) Events() <-chan door.Event { return f.events }
func (f *fakeDoor) State() door.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state
}
func (f *fakeDoor) Health() (string, string) { return "ok", "" }

// set changes the door and sends the event, as the driver does after debouncing.
func (f *fakeDoor) set(open bool, at time.Time) {
	f.mu.Lock()
	f.state = door.Event{Open: open, At: at}
	f.mu.Unlock()
	f.events <- door.Event{Open: open, At: at}
}

// fakeEnv is a cabinet sensor that reads what the test sets.
type fakeEnv struct {
	mu  sync.Mutex
	rd  envsensor.Reading
	err error
}

func (f *fakeEnv) Read() (envsensor.Reading, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rd, f.err
}
func (f *fakeEnv) Health() (string, string) { return "ok", "" }

// fakeDisplay keeps the lines shown.
type fakeDisplay struct {
	mu    sync.Mutex
	lines []string
	shown chan []string
}

func (f *fakeDisplay) Show(lines ...string) error {
	f.mu.Lock()
	f.lines = lines
	f.mu.Unlock()
	select {
	case f.shown <- lines:
	default:
	}
	return nil
}
func (f *fakeDisplay) Health() (string, string) { return "ok", "" }

// fakeSim is the emulated station's controls: presented cards go to the fake reader.
type fakeSim struct {
	reader *fakeReader
	door   *fakeDoor
	env    *fakeEnv
	key    []byte
}

func (f *fakeSim) Present(c pn532sim.Card) <-chan struct{} {
	gone := make(chan struct{})
	go func() {
		id := emv.UIDIdentity(f.key, c.UID())
		f.reader.c <- cardreader.Presentation{Card: &id}
		close(gone)
	}()
	return gone
}
func (f *fakeSim) SetDoor(open bool) { f.door.set(open, time.Now()) }
func (f *fakeSim) SetEnvironment(tempC float64, humidity *float64) {
	f.env.mu.Lock()
	defer f.env.mu.Unlock()
	f.env.rd.TempC = tempC
	if humidity != nil {
		f.env.rd.Humidity = *humidity
	}
}

// fakes are the harness's hardware.
type fakes struct {
	reader  *fakeReader
	ind     *fakeIndicator
	door    *fakeDoor
	env     *fakeEnv
	display *fakeDisplay
	sim     *fakeSim
}

func newFakes() *fakes {
	f := &fakes{
		reader:  &fakeReader{c: make(chan cardreader.Presentation), errs: make(chan error), health: pn532.Health{State: "ok", Firmware: "PN532 v1.6"}},
		ind:     &fakeIndicator{shown: make(chan indicator.Pattern, 100)},
		door:    &fakeDoor{events: make(chan door.Event, 10)},
		env:     &fakeEnv{rd: envsensor.Reading{TempC: 22, Humidity: 45, PressurePa: 101325}},
		display: &fakeDisplay{shown: make(chan []string, 10)},
	}
	f.sim = &fakeSim{reader: f.reader, door: f.door, env: f.env, key: []byte("0123456789abcdef")}
	return f
}

// hardware is every part fitted, backed by the fakes; no simulator.
func (f *fakes) hardware() Hardware {
	return Hardware{
		Reader:      func(func()) (Reader, error) { return f.reader, nil },
		Indicator:   func() (Indicator, error) { return f.ind, nil },
		Door:        func() (Door, error) { return f.door, nil },
		Environment: func() (EnvSensor, error) { return f.env, nil },
		Display:     func() (Display, error) { return f.display, nil },
	}
}

type harnessOpts struct {
	broker   string                  // broker URL; default a closed port (offline)
	config   func(*config.Config)    // changes to the configuration
	hardware func(*Hardware, *fakes) // changes to the hardware; default every part fitted
	clock    clock.Clock             // default the system clock
	options  func(*Options)          // changes to the options
	parts    func(*Parts)            // last changes to the parts
	noRun    bool                    // build the agent but do not start Run
}

type harness struct {
	a *Agent
	*fakes
	socket string
	stop   func() error  // cancels Run and returns what it returned
	ended  chan struct{} // closed once Run has returned
}

func closedPortURL(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return "tcp://" + ln.Addr().String()
}

func testConfig(t *testing.T, broker string) *config.Config {
	dir := t.TempDir()
	return &config.Config{
		StationID: "agent-test", DataDir: filepath.Join(dir, "data"), Socket: filepath.Join(dir, "s.sock"),
		MQTT:   config.MQTT{Broker: broker, TopicPrefix: brokertest.UniquePrefix(t)},
		Reader: config.Reader{Driver: "none"},
	}
}

// startHarness builds an agent of a real store, a real link and fake hardware, and runs it until
// the test ends (or h.stop).
func startHarness(t *testing.T, o harnessOpts) *harness {
	t.Helper()
	if o.broker == "" {
		o.broker = closedPortURL(t)
	}
	cfg := testConfig(t, o.broker)
	if o.config != nil {
		o.config(cfg)
	}
	if err := cfg.Normalize(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(cfg.DataDir, "station.db"), &store.Options{MaxBytes: int64(cfg.Store.MaxBytes)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Check(); err != nil {
			t.Errorf("store check: %v", err)
		}
		st.Close()
	})
	f := newFakes()
	hw := f.hardware()
	if o.hardware != nil {
		o.hardware(&hw, f)
	}
	h := &harness{fakes: f, socket: cfg.Socket}
	ready := make(chan struct{})
	opts := Options{Version: "test", OnReady: func() { close(ready) }}
	if o.options != nil {
		o.options(&opts)
	}
	parts := Parts{
		Config: cfg, Store: st, Hardware: hw, Clock: o.clock,
		Link: MQTTLink(mqtt.Config{Broker: cfg.MQTT.Broker, ClientID: cfg.StationID,
			BackoffMax: time.Second, KeepAlive: 5 * time.Second}),
	}
	if o.parts != nil {
		o.parts(&parts)
	}
	a, err := New(parts, opts)
	if err != nil {
		t.Fatal(err)
	}
	h.a = a
	if o.noRun {
		return h
	}
	ln, err := localapi.Listen(cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.ended = make(chan struct{})
	var runErr error
	go func() {
		runErr = a.Run(ctx, ln)
		close(h.ended)
	}()
	h.stop = func() error {
		cancel()
		<-h.ended
		return runErr
	}
	t.Cleanup(func() {
		if err := h.stop(); err != nil && err != ErrRestart && !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-ready:
	case <-h.ended:
		t.Fatalf("Run ended before ready: %v", runErr)
	}
	// The peripherals are opened by their own loops: wait until each has been tried once.
	waitFor(t, func() bool {
		for _, c := range a.components() {
			if c.Detail == "starting" {
				return false
			}
		}
		return true
	})
	return h
}

func card(n int) cardreader.Presentation {
	return cardreader.Presentation{Card: &emv.Identity{Kind: "uid", Token: fmt.Sprintf("token-%d", n)}}
}

// runLoop runs one of the agent's loops (of a harness built with noRun) until the test ends.
func runLoop(t *testing.T, loop func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- loop(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("loop: %v", err)
		}
	})
}
