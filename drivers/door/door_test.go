package door

import (
	"errors"
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/pin"

	"station.dev/agent/drivers/door/doorsim"
)

type rig struct {
	clk *fakeClock
	sw  *doorsim.Switch
	d   *Door
}

func newRig(t *testing.T, sc doorsim.Config, cfg Config) *rig {
	t.Helper()
	clk := newFakeClock()
	sc.Clock = clk
	x := &rig{clk: clk, sw: doorsim.New(sc)}
	cfg.Pin = x.sw
	cfg.Clock = clk
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	x.d = d
	t.Cleanup(func() { _ = d.Halt() })
	// The watcher waits for the first time.
	clk.WaitCreated(t, 1)
	return x
}

// at returns the fake time off after the start.
func (x *rig) at(off time.Duration) time.Time {
	return x.clk.Start().Add(off)
}

// set moves the switch; with edge detection the watcher wakes and the call
// waits until it waits again.
func (x *rig) set(t *testing.T, open bool) {
	t.Helper()
	if x.d.Polling() {
		x.sw.Set(open)
		return
	}
	x.clk.Do(t, func() { x.sw.Set(open) })
}

func (x *rig) wantEvent(t *testing.T, want Event) {
	t.Helper()
	select {
	case got := <-x.d.Events():
		if got.Open != want.Open || !got.At.Equal(want.At) {
			t.Fatalf("event %+v, want %+v", got, want)
		}
	default:
		t.Fatalf("no event, want %+v", want)
	}
	if s := x.d.State(); s.Open != want.Open || !s.At.Equal(want.At) {
		t.Fatalf("state %+v, want %+v", s, want)
	}
}

func (x *rig) wantNoEvent(t *testing.T) {
	t.Helper()
	select {
	case got := <-x.d.Events():
		t.Fatalf("unexpected event %+v", got)
	default:
	}
}

func TestStableChangeGivesOneEvent(t *testing.T) {
	x := newRig(t, doorsim.Config{}, Config{})
	if x.d.Polling() {
		t.Fatal("polling although the pin has edges")
	}
	if got := x.d.String(); got != "door{SIM_DOOR edges}" {
		t.Fatalf("String() = %q", got)
	}
	if s := x.d.State(); s.Open || !s.At.Equal(x.at(0)) {
		t.Fatalf("initial state %+v", s)
	}
	x.clk.AdvanceTo(t, time.Second)
	x.set(t, true)
	x.clk.AdvanceTo(t, 1049*time.Millisecond)
	x.wantNoEvent(t)
	x.clk.AdvanceTo(t, 1050*time.Millisecond)
	x.wantEvent(t, Event{Open: true, At: x.at(time.Second)})
	x.clk.AdvanceTo(t, 3*time.Second)
	x.wantNoEvent(t)

	x.set(t, false)
	x.clk.AdvanceTo(t, 3050*time.Millisecond)
	x.wantEvent(t, Event{Open: false, At: x.at(3 * time.Second)})
	x.clk.AdvanceTo(t, 4*time.Second)
	x.wantNoEvent(t)
}

func TestBounceShorterThanDebounceGivesNoEvent(t *testing.T) {
	x := newRig(t, doorsim.Config{}, Config{})
	x.clk.AdvanceTo(t, time.Second)
	x.set(t, true)
	x.clk.AdvanceTo(t, 1040*time.Millisecond)
	x.set(t, false)
	x.clk.AdvanceTo(t, 3*time.Second)
	x.wantNoEvent(t)
	if s := x.d.State(); s.Open || !s.At.Equal(x.at(0)) {
		t.Fatalf("state %+v", s)
	}
}

func TestChatterThenStableGivesOneEvent(t *testing.T) {
	x := newRig(t, doorsim.Config{}, Config{})
	x.clk.AdvanceTo(t, time.Second)
	// Nine changes 10 ms apart: the contacts chatter, then stay open.
	open := false
	for i := 0; i < 9; i++ {
		x.clk.AdvanceTo(t, time.Second+time.Duration(i)*10*time.Millisecond)
		open = !open
		x.set(t, open)
	}
	x.clk.AdvanceTo(t, 1129*time.Millisecond)
	x.wantNoEvent(t)
	x.clk.AdvanceTo(t, 1130*time.Millisecond)
	x.wantEvent(t, Event{Open: true, At: x.at(1080 * time.Millisecond)})
	x.clk.AdvanceTo(t, 2*time.Second)
	x.wantNoEvent(t)
}

func TestCustomDebounce(t *testing.T) {
	x := newRig(t, doorsim.Config{Open: true}, Config{Debounce: 200 * time.Millisecond})
	if !x.d.State().Open {
		t.Fatal("initial state closed")
	}
	x.clk.AdvanceTo(t, time.Second)
	x.set(t, false)
	x.clk.AdvanceTo(t, 1150*time.Millisecond)
	x.set(t, true)
	x.set(t, false)
	x.clk.AdvanceTo(t, 1349*time.Millisecond)
	x.wantNoEvent(t)
	x.clk.AdvanceTo(t, 1350*time.Millisecond)
	x.wantEvent(t, Event{Open: false, At: x.at(1150 * time.Millisecond)})
}

func TestPollingFallback(t *testing.T) {
	x := newRig(t, doorsim.Config{NoEdges: true}, Config{})
	if !x.d.Polling() {
		t.Fatal("not polling although the pin has no edges")
	}
	if s, r := x.d.Health(); s != HealthOK || r != "door: pin SIM_DOOR polled every 20ms" {
		t.Fatalf("health %s %q", s, r)
	}
	if got := x.d.String(); got != "door{SIM_DOOR polling 20ms}" {
		t.Fatalf("String() = %q", got)
	}
	x.clk.AdvanceTo(t, 1005*time.Millisecond)
	x.set(t, true)
	// Seen at the poll of 1.02 s; it must hold until 1.07 s.
	x.clk.AdvanceTo(t, 1069*time.Millisecond)
	x.wantNoEvent(t)
	x.clk.AdvanceTo(t, 1070*time.Millisecond)
	x.wantEvent(t, Event{Open: true, At: x.at(1020 * time.Millisecond)})

	// A bounce seen by one poll only is ignored.
	x.clk.AdvanceTo(t, 2005*time.Millisecond)
	x.set(t, false)
	x.clk.AdvanceTo(t, 2025*time.Millisecond)
	x.set(t, true)
	x.clk.AdvanceTo(t, 3*time.Second)
	x.wantNoEvent(t)
	if !x.d.State().Open {
		t.Fatal("state closed after a bounce")
	}
}

func TestForcedPolling(t *testing.T) {
	x := newRig(t, doorsim.Config{}, Config{Poll: true, PollInterval: 10 * time.Millisecond})
	if !x.d.Polling() {
		t.Fatal("not polling")
	}
	x.clk.AdvanceTo(t, 995*time.Millisecond)
	x.set(t, true)
	x.clk.AdvanceTo(t, 1050*time.Millisecond)
	x.wantEvent(t, Event{Open: true, At: x.at(time.Second)})
}

func TestOpenLow(t *testing.T) {
	x := newRig(t, doorsim.Config{OpenLow: true}, Config{OpenLow: true, Pull: gpio.Float})
	if x.sw.Read() != gpio.High || x.d.State().Open {
		t.Fatal("closed door should read High")
	}
	if x.sw.Pull() != gpio.Float {
		t.Fatalf("pull %s", x.sw.Pull())
	}
	x.set(t, true)
	if x.sw.Read() != gpio.Low {
		t.Fatal("open door should read Low")
	}
	x.clk.AdvanceTo(t, 50*time.Millisecond)
	x.wantEvent(t, Event{Open: true, At: x.at(0)})
}

func TestDefaultPullUp(t *testing.T) {
	x := newRig(t, doorsim.Config{}, Config{})
	if x.sw.Pull() != gpio.PullUp {
		t.Fatalf("pull %s", x.sw.Pull())
	}
}

// TestMissedEdgeIsCaught checks that the periodic read finds a change whose
// edge was lost.
func TestMissedEdgeIsCaught(t *testing.T) {
	x := newRig(t, doorsim.Config{}, Config{})
	x.clk.AdvanceTo(t, 1100*time.Millisecond)
	x.sw.SetNoEdge(true)
	x.clk.AdvanceTo(t, 1299*time.Millisecond)
	x.wantNoEvent(t)
	x.clk.AdvanceTo(t, 1300*time.Millisecond)
	x.wantEvent(t, Event{Open: true, At: x.at(1250 * time.Millisecond)})
}

func TestHaltClosesEvents(t *testing.T) {
	x := newRig(t, doorsim.Config{}, Config{})
	x.set(t, true)
	x.clk.AdvanceTo(t, 50*time.Millisecond)
	// Halt interrupts the wait for an edge: no time needs to pass.
	if err := x.d.Halt(); err != nil {
		t.Fatal(err)
	}
	// The event sent before Halt is still there, then the channel is closed.
	if ev, ok := <-x.d.Events(); !ok || !ev.Open {
		t.Fatalf("event %+v %t", ev, ok)
	}
	if _, ok := <-x.d.Events(); ok {
		t.Fatal("events not closed")
	}
	if s, _ := x.d.Health(); s != HealthDown {
		t.Fatalf("health %s", s)
	}
	if err := x.d.Halt(); err != nil {
		t.Fatal(err)
	}
}

func TestHaltWhilePolling(t *testing.T) {
	x := newRig(t, doorsim.Config{NoEdges: true}, Config{})
	if err := x.d.Halt(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-x.d.Events(); ok {
		t.Fatal("events not closed")
	}
}

type badPin struct{ doorsim.Switch }

func (*badPin) In(gpio.Pull, gpio.Edge) error { return errors.New("permission denied") }

func TestNewErrors(t *testing.T) {
	bad := &badPin{}
	bad.N = "GPIO4"
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "door: no pin configured"},
		{Config{Pin: gpio.INVALID}, "door: no pin configured"},
		{Config{Pin: doorsim.New(doorsim.Config{}), Debounce: -1}, "door: negative debounce or poll interval"},
		{Config{Pin: bad}, "door: pin GPIO4: permission denied"},
	} {
		d, err := New(tc.cfg)
		if err == nil {
			_ = d.Halt()
			t.Fatalf("New(%+v) succeeded", tc.cfg)
		}
		if err.Error() != tc.want {
			t.Errorf("error %q, want %q", err, tc.want)
		}
	}
}

func TestDebouncer(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	b := debouncer{window: 50 * time.Millisecond}
	if _, ok := b.deadline(); ok {
		t.Fatal("deadline while stable")
	}
	if _, ok := b.sample(true, ms(0), true); ok {
		t.Fatal("event at once")
	}
	if dl, ok := b.deadline(); !ok || !dl.Equal(ms(50)) {
		t.Fatalf("deadline %v %t", dl, ok)
	}
	// Another edge with the same level read: it bounced, the window restarts.
	b.sample(true, ms(30), true)
	if _, ok := b.sample(true, ms(60), false); ok {
		t.Fatal("event before the restarted window ends")
	}
	ev, ok := b.sample(true, ms(80), false)
	if !ok || !ev.Open || !ev.At.Equal(ms(30)) {
		t.Fatalf("event %+v %t", ev, ok)
	}
	if _, ok := b.sample(true, ms(200), true); ok {
		t.Fatal("event without a change")
	}
}

var _ pin.Pin = (*badPin)(nil)
