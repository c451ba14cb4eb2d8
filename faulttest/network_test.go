//go:build faults

package faulttest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"station.dev/agent/agent/contract"
	"station.dev/agent/internal/stationproc"
)

// The network-fault scenarios (issue 13): the station in the root namespace, Mosquitto in a
// namespace of its own behind the lab's forwarder (netlab_test.go), production backoff (1s..2m)
// and a 5 s keepalive, so the broker fires the will after 7.5 s without a packet.

const netKeepAlive = 5 * time.Second

// netStation is an agent on a lab's faulty path, watched from its clean path.
type netStation struct {
	*agent
	lab       *netLab
	obs       *observer // events
	statusObs *observer // the retained status topic
	http      *http.Client

	mu  sync.Mutex
	ids []string // recorded taps, in order
}

func startNetStation(t *testing.T, lab *netLab) *netStation {
	t.Helper()
	s := newSpec(t, lab.BrokerURL())
	s.BackoffMax = "2m" // the production default: what the reconnect figures are about
	s.TOML = fmt.Sprintf("keepalive = %q\n", netKeepAlive)
	ns := &netStation{lab: lab}
	ns.obs = observe(t, lab.ObserverURL(), s.Prefix+"/"+s.StationID+"/events")
	ns.statusObs = observe(t, lab.ObserverURL(), s.Prefix+"/"+s.StationID+"/status")
	ns.agent = startAgent(t, s)
	ns.http = ns.HTTPClient()
	ns.waitLink(t, true, 30*time.Second)
	return ns
}

// linkUp reads the link state from the local API.
func (ns *netStation) linkUp() (bool, error) {
	resp, err := ns.http.Get("http://station" + contract.PathStatus)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var st contract.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return false, err
	}
	return st.Link != nil && st.Link.Connected, nil
}

// waitLink polls the local API (every 50 ms) until the link is up or down, and returns when it
// saw the change.
func (ns *netStation) waitLink(t testing.TB, up bool, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if !eventually(timeout, 50*time.Millisecond, func() bool {
		got, err := ns.linkUp()
		return err == nil && got == up
	}) {
		t.Fatalf("link not %s within %v", map[bool]string{true: "up", false: "down"}[up], timeout)
	}
	return time.Since(start)
}

// tap presents one card through the local API and keeps its id.
func (ns *netStation) tap(t testing.TB) {
	body, _ := json.Marshal(contract.TapRequest{Count: 1})
	resp, err := ns.http.Post("http://station"+contract.PathTap, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Errorf("tap: %v", err)
		return
	}
	defer resp.Body.Close()
	var tl stationproc.TapLine
	if err := json.NewDecoder(resp.Body).Decode(&tl); err != nil || !tl.OK {
		t.Errorf("tap: %v %+v", err, tl)
		return
	}
	ns.mu.Lock()
	ns.ids = append(ns.ids, tl.ID)
	ns.mu.Unlock()
}

// tapFor taps rate cards a second for d, on the caller's goroutine.
func (ns *netStation) tapFor(t testing.TB, d time.Duration, rate int) {
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		<-tick.C
		ns.tap(t)
	}
}

// checkDelivered waits until every recorded tap has reached the broker, then checks the events
// as they arrived: no seq missing, first arrivals in seq order, duplicates only with the same id.
// It reports the figures under name.
func (ns *netStation) checkDelivered(t *testing.T, name string, timeout time.Duration) {
	t.Helper()
	ns.mu.Lock()
	want := map[string]bool{}
	for _, id := range ns.ids {
		want[id] = true
	}
	ns.mu.Unlock()
	ns.obs.waitIDs(want, timeout)
	recs := ns.obs.records()
	stationproc.CheckSeq(t, recs)
	seen := map[string]bool{}
	var last uint64
	for _, r := range recs {
		if seen[r.ID] {
			continue
		}
		seen[r.ID] = true
		if r.Seq <= last {
			t.Fatalf("first arrivals out of order: seq %d after %d", r.Seq, last)
		}
		last = r.Seq
	}
	figure(t, name+"_records_expected", float64(len(want)), "records")
	received := 0
	for id := range want {
		if seen[id] {
			received++
		}
	}
	figure(t, name+"_records_received", float64(received), "records")
	figure(t, name+"_duplicates", float64(len(recs)-len(seen)), "records")
}

// waitWill waits for the broker's will on the status topic, from the message index from on.
func (ns *netStation) waitWill(t testing.TB, from int, timeout time.Duration) time.Time {
	t.Helper()
	var at time.Time
	ns.statusObs.waitFor(timeout, "the broker's will", func(msgs []observed) bool {
		for _, m := range msgs[min(from, len(msgs)):] {
			if strings.Contains(string(m.Payload), `"reason":"lost"`) {
				at = m.At
				return true
			}
		}
		return false
	})
	return at
}

func (ns *netStation) statusCount() int {
	msgs, _ := ns.statusObs.snapshot()
	return len(msgs)
}

// halfOpen black-holes the path and returns when the station noticed, with the station's
// detection time and the broker's will time, both from the start of the black hole.
func (ns *netStation) halfOpen(t *testing.T) (detect, will time.Duration) {
	t.Helper()
	from := ns.statusCount()
	start := time.Now()
	ns.lab.Shape(shape{Drop: true})
	detect = ns.waitLink(t, false, 6*netKeepAlive)
	will = ns.waitWill(t, from, 6*netKeepAlive).Sub(start)
	return detect, will
}

// heal restores the path and returns the time until the station is connected again.
func (ns *netStation) heal(t *testing.T) time.Duration {
	t.Helper()
	ns.lab.Shape(shape{})
	return ns.waitLink(t, true, 3*time.Minute)
}

func sec(d time.Duration) float64 { return float64(d.Milliseconds()) / 1000 }

// TestNetHalfOpenIdle: an idle station, then the network silently drops everything. It must
// notice before the broker fires its will (1.5 × keepalive), and be back soon after the path
// heals. The idle phase first counts the retained status publishes.
func TestNetHalfOpenIdle(t *testing.T) {
	t.Parallel()
	lab := newNetLab(t)
	ns := startNetStation(t, lab)
	// At start the link may connect before the hardware is up: the status loop's first turn
	// (5 s) then republishes the status once, a real change (components down -> ok). The idle
	// window starts after it.
	time.Sleep(6 * time.Second)
	idle := time.Duration(scale(20, 60)) * time.Second
	n0 := ns.statusCount()
	time.Sleep(idle) // the idle window being measured
	n := ns.statusCount() - n0
	if msgs, _ := ns.statusObs.snapshot(); n > 0 {
		for _, m := range msgs[max(0, n0-1):] {
			t.Logf("status at %s: %s", m.At.Format("15:04:05.000"), m.Payload)
		}
	}
	figure(t, "net_retained_status_per_hour_idle", float64(n)*float64(time.Hour)/float64(idle), "publishes/h")

	detect, will := ns.halfOpen(t)
	figure(t, "net_halfopen_idle_detect_s", sec(detect), "s")
	figure(t, "net_halfopen_idle_will_s", sec(will), "s")
	if detect > will || detect > 3*netKeepAlive/2 {
		t.Errorf("half-open noticed after %v, the broker's will after %v: want before the will, within 1.5 × keepalive", detect, will)
	}
	figure(t, "net_halfopen_idle_reconnect_s", sec(ns.heal(t)), "s")
	ns.tap(t)
	ns.checkDelivered(t, "net_halfopen_idle", time.Minute)
}

// TestNetHalfOpenMidDrain: a backlog drains over a slow path (100 ms each way) when the network
// silently drops everything; afterwards the whole backlog arrives, in order.
func TestNetHalfOpenMidDrain(t *testing.T) {
	t.Parallel()
	lab := newNetLab(t)
	ns := startNetStation(t, lab)
	lab.Shape(shape{Drop: true})
	ns.waitLink(t, false, 6*netKeepAlive)
	for range scale(400, 2000) {
		ns.tap(t)
	}
	lab.Shape(shape{Delay: 100 * time.Millisecond})
	ns.waitLink(t, true, 3*time.Minute)
	ns.obs.waitFor(time.Minute, "the drain under way", func(m []observed) bool { return len(m) >= 50 })
	got, _ := ns.obs.snapshot()
	detect, will := ns.halfOpen(t)
	t.Logf("black hole after %d of %d records", len(got), len(ns.ids))
	figure(t, "net_halfopen_busy_detect_s", sec(detect), "s")
	figure(t, "net_halfopen_busy_will_s", sec(will), "s")
	if detect > will || detect > 3*netKeepAlive/2 {
		t.Errorf("half-open noticed after %v, the broker's will after %v: want before the will, within 1.5 × keepalive", detect, will)
	}
	figure(t, "net_halfopen_busy_reconnect_s", sec(ns.heal(t)), "s")
	ns.checkDelivered(t, "net_halfopen_busy", 2*time.Minute)
}

// TestNetLossyPath: 10 % and 30 % of the frames lost each way, 200 ms ± 50 ms delay each way,
// while cards are tapped at 10/s.
func TestNetLossyPath(t *testing.T) {
	t.Parallel()
	for _, loss := range []float64{0.10, 0.30} {
		name := fmt.Sprintf("net_loss%d", int(loss*100))
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			lab := newNetLab(t)
			ns := startNetStation(t, lab)
			lab.Shape(shape{Loss: loss, Delay: 200 * time.Millisecond, Jitter: 50 * time.Millisecond})
			ns.tapFor(t, time.Duration(scale(20, 60))*time.Second, 10)
			lab.Shape(shape{})
			ns.checkDelivered(t, name, 3*time.Minute)
			st := ns.status()
			figure(t, name+"_reconnects", float64(st.Link.Connects-1), "connections")
		})
	}
}

// TestNetFlapping: the station's link goes down and up every 3 s for 60 s while cards are
// tapped at 10/s (behind the fence: nothing leaks to the default route).
func TestNetFlapping(t *testing.T) {
	t.Parallel()
	lab := newNetLab(t)
	ns := startNetStation(t, lab)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(3 * time.Second)
		defer tick.Stop()
		up := true
		for {
			select {
			case <-stop:
				lab.SetLink(true)
				return
			case <-tick.C:
				up = !up
				lab.SetLink(up)
			}
		}
	}()
	ns.tapFor(t, 60*time.Second, 10)
	close(stop)
	<-done
	back := ns.waitLink(t, true, 3*time.Minute)
	figure(t, "net_flapping_reconnect_after_s", sec(back), "s")
	ns.checkDelivered(t, "net_flapping", 3*time.Minute)
}

// TestNetHalfOpenSoak: repeated half-open cycles, each healed right after the station noticed.
// The reconnect time must not grow with the cycles (the failure count starts again after every
// connection that proved itself).
func TestNetHalfOpenSoak(t *testing.T) {
	t.Parallel()
	lab := newNetLab(t)
	ns := startNetStation(t, lab)
	var back []time.Duration
	for i := range scale(4, 11) {
		detect, will := ns.halfOpen(t)
		b := ns.heal(t)
		back = append(back, b)
		t.Logf("cycle %d: noticed after %v (will %v), back %v after healing", i+1, detect.Round(time.Millisecond), will.Round(time.Millisecond), b.Round(time.Millisecond))
		for range 10 {
			ns.tap(t)
		}
		ns.checkDelivered(t, "net_soak_cycle", time.Minute)
	}
	slices.Sort(back)
	figure(t, "net_soak_cycles", float64(len(back)), "cycles")
	figure(t, "net_soak_reconnect_median_s", sec(back[len(back)/2]), "s")
	figure(t, "net_soak_reconnect_max_s", sec(back[len(back)-1]), "s")
	if back[len(back)-1] > 10*time.Second {
		t.Errorf("reconnect after a healed half-open took up to %v: want a few seconds", back[len(back)-1])
	}
}
