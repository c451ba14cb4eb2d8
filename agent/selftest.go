package agent

import (
	"fmt"
	"strings"
	"time"

	"station.dev/agent/agent/config"
	"station.dev/agent/agent/contract"
)

// selfTest checks each component: the store's consistency, the broker connection, the reader,
// and each peripheral (the indicator blinks its locate pattern, the sensor is read now).
func (a *Agent) selfTest() contract.SelfTest {
	var checks []contract.Check
	add := func(name string, ok bool, detail string) {
		checks = append(checks, contract.Check{Name: name, OK: ok, Detail: detail})
	}

	if err := a.store.Check(); err != nil {
		add("store", false, err.Error())
	} else {
		q := a.Queue()
		add("store", !q.Full, fmt.Sprintf("%d waiting, %s of %s used", q.Depth, config.Size(q.Bytes).Human(), config.Size(q.MaxBytes).Human()))
	}

	if ls := a.link.Stats(); ls.Connected {
		add("broker", true, "connected to "+a.cfg.MQTT.Broker)
	} else {
		add("broker", false, "not connected to "+a.cfg.MQTT.Broker+": "+ls.LastError)
	}

	rh := a.readerHealth()
	switch rh.State {
	case contract.HealthAbsent:
		add("reader", true, "not configured")
	case contract.HealthOK, contract.HealthDegraded:
		add("reader", true, joinDetail(rh.Firmware, rh.State, rh.LastError))
	default:
		add("reader", false, joinDetail(rh.State, rh.Detail, rh.LastError))
	}

	comps := a.components()
	for _, name := range contract.Components {
		c, configured := comps[name]
		if !configured {
			add(name, true, "not configured")
			continue
		}
		if c.State == contract.HealthDown {
			add(name, false, "down: "+c.Detail)
			continue
		}
		ok, detail := a.exercise(name, c)
		add(name, ok, detail)
	}

	// Insecure settings pass (the station works) but say so in the check's detail.
	if ins := a.cfg.Insecure(a.keys().Len()); len(ins) > 0 {
		add("security", true, "INSECURE: "+strings.Join(ins, "; "))
	} else if !a.cfg.Sim {
		add("security", true, fmt.Sprintf("signed commands only (%d keys from %s)", a.keys().Len(), a.keySource))
	}

	st := contract.SelfTest{OK: true, Checks: checks}
	for _, c := range checks {
		st.OK = st.OK && c.OK
	}
	return st
}

// exercise makes a working peripheral show that it works and says what it saw.
func (a *Agent) exercise(name string, c contract.ComponentHealth) (bool, string) {
	p := a.periph
	p.mu.Lock()
	ind, door, env := p.ind, p.door, p.env
	p.mu.Unlock()
	switch {
	case name == contract.ComponentIndicator && ind != nil:
		if err := ind.Locate(2 * time.Second); err != nil {
			return false, err.Error()
		}
		return true, joinDetail(c.State, "blinking locate for 2s")
	case name == contract.ComponentDoor && door != nil:
		if door.State().Open {
			return true, joinDetail(c.State, "door open")
		}
		return true, joinDetail(c.State, "door closed")
	case name == contract.ComponentEnvironment && env != nil:
		rd, err := env.Read()
		if err != nil {
			return false, "read failed: " + err.Error()
		}
		d := fmt.Sprintf("%.1f°C", rd.TempC)
		if rd.HasHumidity() {
			d += fmt.Sprintf(", %.0f%% RH", rd.Humidity)
		}
		return true, joinDetail(c.State, d)
	}
	return true, joinDetail(c.State, c.Detail)
}

func joinDetail(parts ...string) string {
	out := ""
	for _, p := range parts {
		if p == "" {
			continue
		}
		if out != "" {
			out += ", "
		}
		out += p
	}
	return out
}
