package agent

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"station.dev/agent/agent/contract"
	"station.dev/agent/drivers/cardreader"
	"station.dev/agent/drivers/display"
	"station.dev/agent/drivers/door"
	"station.dev/agent/drivers/envsensor"
	"station.dev/agent/drivers/indicator"
	"station.dev/agent/drivers/pn532"
	"station.dev/agent/drivers/pn532/pn532sim"
	"station.dev/agent/internal/backoff"
	"station.dev/agent/store"
)

// Hardware opens the station's parts: a nil opener means the part is not fitted. The hardware
// assembly (drivers/hw, or drivers/hw/hwsim for --sim) provides them and closes everything it
// opened once Run has returned; the agent only opens parts (again, after one failed) and uses
// them.
type Hardware struct {
	// Reader opens the card reader. beat is called on every poll (watchdog progress).
	Reader      func(beat func()) (Reader, error)
	Indicator   func() (Indicator, error)
	Door        func() (Door, error)
	Environment func() (EnvSensor, error)
	Display     func() (Display, error)
	// Sim drives the emulated hardware (station tap, station sim); nil on real hardware.
	Sim Simulator
}

// Reader yields card presentations. Next blocks until a presentation completes or ctx ends.
type Reader interface {
	Next(ctx context.Context) (cardreader.Presentation, error)
	Health() pn532.Health
}

// Indicator tells the person at the kiosk what happened (LEDs, buzzer).
type Indicator interface {
	Show(p indicator.Pattern) error
	Locate(d time.Duration) error
	Clear(p indicator.Pattern) error
	State() indicator.State
	Health() (status, reason string)
}

// Door is the cabinet door switch.
type Door interface {
	Events() <-chan door.Event
	State() door.Event
	Health() (status, reason string)
}

// EnvSensor is the cabinet's temperature and humidity sensor.
type EnvSensor interface {
	Read() (envsensor.Reading, error)
	Health() (status, reason string)
}

// Display is the small status panel.
type Display interface {
	Show(lines ...string) error
	Health() (status, reason string)
}

// Simulator drives the emulated station.
type Simulator interface {
	// Present places a card in the emulated reader's field; the channel is closed once it left.
	Present(c pn532sim.Card) <-chan struct{}
	SetDoor(open bool)
	SetEnvironment(tempC float64, humidity *float64)
}

// Health polling and reopening of the peripherals.
const (
	healthInterval = 5 * time.Second
	openBackoffMin = time.Second
	openBackoffMax = 5 * time.Minute
)

// part is one peripheral's health, kept for status, telemetry and self-test.
type part struct {
	mu     sync.Mutex
	state  string
	detail string
}

func (p *part) set(state, detail string) {
	p.mu.Lock()
	p.state, p.detail = state, detail
	p.mu.Unlock()
}

func (p *part) get() contract.ComponentHealth {
	p.mu.Lock()
	defer p.mu.Unlock()
	return contract.ComponentHealth{State: p.state, Detail: p.detail}
}

// peripherals are the station's parts other than the reader. Each is absent when not fitted; a
// fitted part that cannot be opened is down with its reason and is retried with backoff while
// the agent keeps serving.
type peripherals struct {
	parts   map[string]*part // fitted parts only
	envPoke chan struct{}

	mu      sync.Mutex
	ind     Indicator
	door    Door
	env     EnvSensor
	disp    Display
	envLast map[string]float64
	last    string // what the display shows as the last outcome
	host    envsensor.Host
}

func newPeripherals(hw Hardware) *peripherals {
	p := &peripherals{parts: map[string]*part{}, envPoke: make(chan struct{}, 1)}
	for name, fitted := range map[string]bool{
		contract.ComponentIndicator:   hw.Indicator != nil,
		contract.ComponentDoor:        hw.Door != nil,
		contract.ComponentEnvironment: hw.Environment != nil,
		contract.ComponentDisplay:     hw.Display != nil,
	} {
		if fitted {
			p.parts[name] = &part{state: contract.HealthDown, detail: "starting"}
		}
	}
	return p
}

func (p *peripherals) indicator() Indicator {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ind
}

func (p *peripherals) doorSwitch() Door {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.door
}

// indicate shows a pattern to the person at the kiosk and remembers it for the display.
func (a *Agent) indicate(pattern indicator.Pattern) {
	p := a.periph
	p.mu.Lock()
	ind := p.ind
	p.last = string(pattern)
	p.mu.Unlock()
	if ind != nil {
		if err := ind.Show(pattern); err != nil {
			a.log.Warn("indicator", "err", err)
		}
	}
}

// components reports the health of the station's parts other than the reader.
func (a *Agent) components() map[string]contract.ComponentHealth {
	if len(a.periph.parts) == 0 {
		return nil
	}
	out := map[string]contract.ComponentHealth{}
	for name, p := range a.periph.parts {
		out[name] = p.get()
	}
	return out
}

// environment reports the last cabinet and CPU readings.
func (a *Agent) environment() map[string]float64 {
	p := a.periph
	out := map[string]float64{}
	p.mu.Lock()
	for k, v := range p.envLast {
		out[k] = v
	}
	p.mu.Unlock()
	if c, ok, err := p.host.CPUTemp(); ok && err == nil {
		out["cpu_temp_c"] = c
	}
	if t, ok, err := p.host.Throttled(); ok && err == nil {
		out["throttled"] = float64(t.Raw)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// indicatorState is what the indicator shows, for `station status`.
func (a *Agent) indicatorState() *contract.IndicatorState {
	ind := a.periph.indicator()
	if ind == nil {
		return nil
	}
	s := ind.State()
	out := &contract.IndicatorState{Pattern: string(s.Pattern), LEDs: s.LEDs, Buzzer: s.Buzzer}
	for _, p := range s.Active {
		out.Active = append(out.Active, string(p))
	}
	return out
}

// doorStatus reports the door: nil when there is no working door switch.
func (a *Agent) doorStatus() *contract.DoorStatus {
	d := a.periph.doorSwitch()
	if d == nil {
		return nil
	}
	return &contract.DoorStatus{Open: d.State().Open}
}

// sleep waits d on the agent's clock; false if ctx ended first.
func (a *Agent) sleep(ctx context.Context, d time.Duration) bool {
	t := a.clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	}
}

// peripheralsLoop opens each fitted part (retrying with backoff) and serves it until ctx ends.
func (a *Agent) peripheralsLoop(ctx context.Context) error {
	var wg sync.WaitGroup
	run := func(name string, open func() (func() (string, string), error), serve func(context.Context)) {
		pt := a.periph.parts[name]
		if pt == nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			bo := backoff.Backoff{Min: openBackoffMin, Max: openBackoffMax}
			var health func() (string, string)
			for {
				h, err := open()
				if err == nil {
					health = h
					break
				}
				pt.set(contract.HealthDown, err.Error())
				a.log.Warn("peripheral not available; retrying", "part", name, "err", err)
				if !a.sleep(ctx, bo.Next()) {
					return
				}
			}
			pt.set(health())
			var serving sync.WaitGroup
			if serve != nil {
				serving.Add(1)
				go func() {
					defer serving.Done()
					serve(ctx)
				}()
			}
			for a.sleep(ctx, healthInterval) {
				pt.set(health())
			}
			serving.Wait()
		}()
	}
	hw := a.hw
	if hw.Indicator != nil {
		run(contract.ComponentIndicator, func() (func() (string, string), error) {
			ind, err := hw.Indicator()
			if err != nil {
				return nil, err
			}
			a.periph.mu.Lock()
			a.periph.ind = ind
			a.periph.mu.Unlock()
			return ind.Health, nil
		}, nil)
	}
	if hw.Door != nil {
		run(contract.ComponentDoor, func() (func() (string, string), error) {
			d, err := hw.Door()
			if err != nil {
				return nil, err
			}
			a.periph.mu.Lock()
			a.periph.door = d
			a.periph.mu.Unlock()
			return d.Health, nil
		}, a.serveDoor)
	}
	if hw.Environment != nil {
		run(contract.ComponentEnvironment, a.openEnv, a.serveEnv)
	}
	if hw.Display != nil {
		run(contract.ComponentDisplay, func() (func() (string, string), error) {
			d, err := hw.Display()
			if err != nil {
				return nil, err
			}
			a.periph.mu.Lock()
			a.periph.disp = d
			a.periph.mu.Unlock()
			return d.Health, nil
		}, a.serveDisplay)
	}
	wg.Wait()
	return nil
}

// serveDoor turns debounced door changes into door.open / door.close records.
func (a *Agent) serveDoor(ctx context.Context) {
	d := a.periph.doorSwitch()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-d.Events():
			if !ok {
				return
			}
			typ := contract.TypeDoorClose
			if ev.Open {
				typ = contract.TypeDoorOpen
			}
			r := a.newRecord(typ)
			r.Data = map[string]any{"changed_at": rfc3339(ev.At)}
			if _, err := a.appendRecord(r, store.Critical); err != nil {
				a.log.Error("recording door change", "err", err)
			}
			a.log.Info("door", "open", ev.Open)
			a.link.UpdateStatus()
		}
	}
}

// openEnv opens the cabinet sensor.
func (a *Agent) openEnv() (func() (string, string), error) {
	s, err := a.hw.Environment()
	if err != nil {
		return nil, err
	}
	a.periph.mu.Lock()
	a.periph.env = s
	a.periph.mu.Unlock()
	return s.Health, nil
}

// serveEnv reads the sensor every interval (and at once when the simulation changes it) and writes
// env.alarm / env.ok records when a threshold is crossed.
func (a *Agent) serveEnv(ctx context.Context) {
	c := a.cfg.Env
	mon, err := envsensor.NewMonitor(
		envsensor.Threshold{Quantity: envsensor.TempHigh, Limit: *c.TempHigh, Hysteresis: c.Hysteresis},
		envsensor.Threshold{Quantity: envsensor.TempLow, Limit: *c.TempLow, Hysteresis: c.Hysteresis},
		envsensor.Threshold{Quantity: envsensor.HumidityHigh, Limit: *c.HumidityHigh, Hysteresis: c.Hysteresis})
	if err != nil {
		a.log.Error("cabinet sensor thresholds", "err", err)
		return
	}
	for {
		a.readEnv(mon)
		t := a.clk.NewTimer(c.Interval.D())
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		case <-a.periph.envPoke:
			t.Stop()
		}
	}
}

func (a *Agent) readEnv(mon *envsensor.Monitor) {
	p := a.periph
	p.mu.Lock()
	s := p.env
	p.mu.Unlock()
	rd, err := s.Read()
	if err != nil {
		a.log.Warn("reading the cabinet sensor", "err", err)
		return
	}
	last := map[string]float64{"temp_c": round2(rd.TempC), "pressure_pa": math.Round(rd.PressurePa)}
	if rd.HasHumidity() {
		last["humidity"] = round2(rd.Humidity)
	}
	p.mu.Lock()
	p.envLast = last
	p.mu.Unlock()
	for _, tr := range mon.Observe(rd) {
		typ := contract.TypeEnvOK
		if tr.Raised {
			typ = contract.TypeEnvAlarm
		}
		r := a.newRecord(typ)
		r.Data = map[string]any{"quantity": string(tr.Quantity), "value": round2(tr.Value), "limit": tr.Limit}
		if _, err := a.appendRecord(r, store.Critical); err != nil {
			a.log.Error("recording environment alarm", "err", err)
		}
		a.log.Warn("cabinet environment", "alarm", tr.Quantity, "raised", tr.Raised, "value", tr.Value)
	}
}

func round2(f float64) float64 { return math.Round(f*100) / 100 }

// displayInterval is how often the panel is refreshed (it sends only what changed).
const displayInterval = time.Second

// serveDisplay keeps the panel up to date.
func (a *Agent) serveDisplay(ctx context.Context) {
	p := a.periph
	for {
		p.mu.Lock()
		d, last := p.disp, p.last
		p.mu.Unlock()
		_ = d.Show(display.StatusLines(display.Status{
			StationID: a.cfg.StationID, Online: a.link.Stats().Connected,
			Queue: a.Queue().Depth, Last: last,
		})...)
		if !a.sleep(ctx, displayInterval) {
			return
		}
	}
}

// errNotSim answers the simulation's requests on real hardware.
var errNotSim = fmt.Errorf("the agent must run with --sim")

// SimDoor sets the emulated door switch.
func (a *Agent) SimDoor(open bool) error {
	if a.hw.Sim == nil {
		return conflict("no emulated door: %v", errNotSim)
	}
	a.hw.Sim.SetDoor(open)
	return nil
}

// SimEnv sets the emulated cabinet sensor and reads it at once.
func (a *Agent) SimEnv(tempC float64, humidity *float64) error {
	if a.hw.Sim == nil {
		return conflict("no emulated sensor: %v", errNotSim)
	}
	a.hw.Sim.SetEnvironment(tempC, humidity)
	select {
	case a.periph.envPoke <- struct{}{}:
	default:
	}
	return nil
}
