package agent

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"station.dev/agent/drivers/display"
	"station.dev/agent/drivers/door"
	"station.dev/agent/drivers/envsensor"
	"station.dev/agent/drivers/hw/hwsim"
	"station.dev/agent/drivers/indicator"
	"station.dev/agent/store"
)

// The station's other parts: indicator, door switch, cabinet sensor, display. Each is "absent"
// when not configured; a configured part that cannot be opened is "down" with its reason and is
// retried with backoff while the agent keeps serving.

// Record types of the peripherals.
const (
	TypeEnvAlarm = "env.alarm"
	TypeEnvOK    = "env.ok"
)

// part is one peripheral's health, kept for status, telemetry and self-test.
type part struct {
	mu     sync.Mutex
	state  string // ok, degraded, down
	detail string
}

func (p *part) set(state, detail string) {
	p.mu.Lock()
	p.state, p.detail = state, detail
	p.mu.Unlock()
}

func (p *part) get() ComponentHealth {
	p.mu.Lock()
	defer p.mu.Unlock()
	return ComponentHealth{State: p.state, Detail: p.detail}
}

// healthFunc is how each driver reports its health.
type healthFunc func() (status, reason string)

type peripherals struct {
	hw   hardware // opens the parts; set before the loops start
	mu   sync.Mutex
	ind  *indicator.Indicator
	door *door.Door
	env  *envsensor.Sensor
	mon  *envsensor.Monitor
	disp *display.Display
	host envsensor.Host

	parts   map[string]*part // configured parts only
	envLast map[string]float64
	envPoke chan struct{}
	last    string // outcome of the last presentation, for the display
}

// indicatorSlot lets the reader path show patterns on an indicator that may be opened later.
type indicatorSlot struct{ p *peripherals }

func (s indicatorSlot) Show(pattern string) {
	s.p.mu.Lock()
	ind := s.p.ind
	s.p.last = pattern
	s.p.mu.Unlock()
	if ind != nil {
		_ = ind.Show(indicator.Pattern(pattern))
	}
}

// setupPeripherals decides which parts exist; opening them happens in peripheralsLoop.
func (a *Agent) setupPeripherals() {
	cfg := a.cfg
	p := &peripherals{parts: map[string]*part{}, envPoke: make(chan struct{}, 1)}
	a.periph = p
	configured := map[string]bool{
		"indicator":   cfg.Sim || cfg.Indicator.Configured(),
		"door":        cfg.Sim || cfg.Door.Pin != "",
		"environment": cfg.Sim || cfg.Env.Enabled,
		"display":     cfg.Display.Enabled,
	}
	for name, ok := range configured {
		if ok {
			p.parts[name] = &part{state: "down", detail: "starting"}
		}
	}
	if len(p.parts) > 0 {
		p.hw = a.hardware()
	}
	if a.ind == nil && p.parts["indicator"] != nil {
		a.ind = indicatorSlot{p}
	}
}

// components reports the health of the station's parts other than the reader.
func (a *Agent) components() map[string]ComponentHealth {
	if a.periph == nil || len(a.periph.parts) == 0 {
		return nil
	}
	out := map[string]ComponentHealth{}
	for name, p := range a.periph.parts {
		out[name] = p.get()
	}
	return out
}

// environment reports the last cabinet and CPU readings for telemetry.
func (a *Agent) environment() map[string]float64 {
	if a.periph == nil {
		return nil
	}
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

// indicatorState is what the (emulated) indicator shows, for `station status`.
func (a *Agent) indicatorState() *indicator.State {
	if a.periph == nil {
		return nil
	}
	a.periph.mu.Lock()
	ind := a.periph.ind
	a.periph.mu.Unlock()
	if ind == nil {
		return nil
	}
	s := ind.State()
	return &s
}

// doorOpen reports the door state: nil when there is no door switch.
func (a *Agent) doorOpen() *bool {
	if a.periph == nil {
		return nil
	}
	a.periph.mu.Lock()
	d := a.periph.door
	a.periph.mu.Unlock()
	if d == nil {
		return nil
	}
	open := d.State().Open
	return &open
}

// peripheralsLoop opens each configured part (retrying with backoff) and runs it until ctx ends.
func (a *Agent) peripheralsLoop(ctx context.Context) error {
	p := a.periph
	var wg sync.WaitGroup
	run := func(name string, open func() (healthFunc, error), serve func(context.Context)) {
		pt := p.parts[name]
		if pt == nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			bo := newBackoff(time.Second, 5*time.Minute)
			var health healthFunc
			for {
				h, err := open()
				if err == nil {
					health = h
					break
				}
				pt.set("down", err.Error())
				a.log.Warn("peripheral not available; retrying", "part", name, "err", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(bo.next()):
				}
			}
			pt.set(health())
			done := make(chan struct{})
			go func() {
				defer close(done)
				t := time.NewTicker(5 * time.Second)
				defer t.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-t.C:
						pt.set(health())
					}
				}
			}()
			if serve != nil {
				serve(ctx)
			}
			<-done
		}()
	}
	run("indicator", a.openIndicator, nil)
	run("door", a.openDoor, a.serveDoor)
	run("environment", a.openEnv, a.serveEnv)
	run("display", a.openDisplay, a.serveDisplay)
	wg.Wait()
	// The reader may share the hardware (a bus): close it, which halts every part, only once the
	// agent stops.
	<-ctx.Done()
	a.closeHardware()
	return nil
}

func (a *Agent) openIndicator() (healthFunc, error) {
	ind, err := a.periph.hw.OpenIndicator()
	if err != nil {
		return nil, err
	}
	a.periph.mu.Lock()
	a.periph.ind = ind
	a.periph.mu.Unlock()
	return ind.Health, nil
}

func (a *Agent) openDoor() (healthFunc, error) {
	d, err := a.periph.hw.OpenDoor()
	if err != nil {
		return nil, err
	}
	a.periph.mu.Lock()
	a.periph.door = d
	a.periph.mu.Unlock()
	return d.Health, nil
}

// serveDoor turns debounced door changes into door.open / door.close records.
func (a *Agent) serveDoor(ctx context.Context) {
	a.periph.mu.Lock()
	d := a.periph.door
	a.periph.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-d.Events():
			if !ok {
				return
			}
			typ := TypeDoorClose
			if ev.Open {
				typ = TypeDoorOpen
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

func (a *Agent) openEnv() (healthFunc, error) {
	c := a.cfg.Env
	var ts []envsensor.Threshold
	ts = append(ts,
		envsensor.Threshold{Quantity: envsensor.TempHigh, Limit: *c.TempHigh, Hysteresis: c.Hysteresis},
		envsensor.Threshold{Quantity: envsensor.TempLow, Limit: *c.TempLow, Hysteresis: c.Hysteresis},
		envsensor.Threshold{Quantity: envsensor.HumidityHigh, Limit: *c.HumidityHigh, Hysteresis: c.Hysteresis})
	mon, err := envsensor.NewMonitor(ts...)
	if err != nil {
		return nil, err
	}
	s, err := a.periph.hw.OpenEnvironment()
	if err != nil {
		return nil, err
	}
	a.periph.mu.Lock()
	a.periph.env, a.periph.mon = s, mon
	a.periph.mu.Unlock()
	return s.Health, nil
}

// serveEnv reads the sensor every interval (and at once when the simulation changes it) and writes
// env.alarm / env.ok records when a threshold is crossed.
func (a *Agent) serveEnv(ctx context.Context) {
	p := a.periph
	t := time.NewTicker(a.cfg.Env.Interval.D())
	defer t.Stop()
	for {
		a.readEnv()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.envPoke:
		}
	}
}

func (a *Agent) readEnv() {
	p := a.periph
	p.mu.Lock()
	s, mon := p.env, p.mon
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
		typ := TypeEnvOK
		if tr.Raised {
			typ = TypeEnvAlarm
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

func (a *Agent) openDisplay() (healthFunc, error) {
	d, err := a.periph.hw.OpenDisplay()
	if err != nil {
		return nil, err
	}
	a.periph.mu.Lock()
	a.periph.disp = d
	a.periph.mu.Unlock()
	return d.Health, nil
}

// serveDisplay refreshes the panel once a second (it sends only what changed).
func (a *Agent) serveDisplay(ctx context.Context) {
	p := a.periph
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		p.mu.Lock()
		d, last := p.disp, p.last
		p.mu.Unlock()
		_ = d.Show(display.StatusLines(display.Status{
			StationID: a.cfg.StationID, Online: a.link.Stats().Connected,
			Queue: a.queueStatus().Depth, Last: last,
		})...)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// simDoor sets the emulated door switch.
func (a *Agent) simDoor(open bool) error {
	sim, ok := a.periph.hw.(*hwsim.Station)
	if !ok {
		return fmt.Errorf("no emulated door: the agent must run with --sim")
	}
	sim.SetDoor(open)
	return nil
}

// simEnv sets the emulated cabinet sensor and reads it at once.
func (a *Agent) simEnv(tempC float64, humidity *float64) error {
	p := a.periph
	sim, ok := p.hw.(*hwsim.Station)
	if !ok {
		return fmt.Errorf("no emulated sensor: the agent must run with --sim")
	}
	sim.SetEnvironment(tempC, humidity)
	select {
	case p.envPoke <- struct{}{}:
	default:
	}
	return nil
}
