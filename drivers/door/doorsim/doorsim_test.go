package doorsim_test

import (
	"strings"
	"testing"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/physic"

	"station.dev/agent/drivers/door"
	"station.dev/agent/drivers/door/doorsim"
	"station.dev/agent/internal/clock/clocktest"
)

// TestDoorSystemClock runs the emulated door as simulation does, with the
// system clock, and waits for the event.
func TestDoorSystemClock(t *testing.T) {
	sw := doorsim.New(doorsim.Config{})
	d, err := door.New(door.Config{Pin: sw})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Halt()
	before := time.Now()
	sw.Set(true)
	select {
	case ev := <-d.Events():
		if !ev.Open || ev.At.Before(before) {
			t.Fatalf("event %+v", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no event")
	}
	if !sw.IsOpen() {
		t.Fatal("switch closed")
	}
	if err := sw.Out(gpio.High); err == nil {
		t.Fatal("Out on an input succeeded")
	}
	if err := sw.PWM(gpio.DutyHalf, physic.KiloHertz); err == nil {
		t.Fatal("PWM on an input succeeded")
	}
}

func TestSwitchEdges(t *testing.T) {
	sw := doorsim.New(doorsim.Config{Clock: clocktest.New()})
	if sw.WaitForEdge(time.Hour) {
		t.Fatal("edge without edge detection")
	}
	if err := sw.In(gpio.PullUp, gpio.RisingEdge); err != nil {
		t.Fatal(err)
	}
	sw.Set(true) // rising
	if !sw.WaitForEdge(-1) {
		t.Fatal("no rising edge")
	}
	sw.Set(false) // falling: not watched
	sw.Set(true)  // rising again
	sw.Set(false)
	sw.Set(true)
	if !sw.WaitForEdge(-1) {
		t.Fatal("no rising edge")
	}
	if !strings.HasPrefix(sw.Function(), "In/High") {
		t.Fatalf("Function() = %q", sw.Function())
	}
	ns := doorsim.New(doorsim.Config{NoEdges: true})
	if err := ns.In(gpio.PullUp, gpio.BothEdges); err == nil {
		t.Fatal("NoEdges switch accepted edges")
	}
}

func TestSetNoEdge(t *testing.T) {
	clk := clocktest.New()
	sw := doorsim.New(doorsim.Config{Clock: clk})
	if err := sw.In(gpio.PullUp, gpio.BothEdges); err != nil {
		t.Fatal(err)
	}
	sw.SetNoEdge(true)
	if !sw.IsOpen() || sw.Read() != gpio.High {
		t.Fatalf("open %t, level %s", sw.IsOpen(), sw.Read())
	}
	// No edge was reported: a wait times out (on the fake clock).
	got := make(chan bool)
	go func() { got <- sw.WaitForEdge(time.Second) }()
	clk.WaitCreated(t, 1)
	clk.Advance(time.Second)
	if <-got {
		t.Fatal("SetNoEdge reported an edge")
	}
}

func TestHaltInterruptsWait(t *testing.T) {
	sw := doorsim.New(doorsim.Config{})
	if err := sw.In(gpio.PullUp, gpio.BothEdges); err != nil {
		t.Fatal(err)
	}
	got := make(chan bool)
	go func() { got <- sw.WaitForEdge(-1) }()
	if err := sw.Halt(); err != nil {
		t.Fatal(err)
	}
	if <-got {
		t.Fatal("edge after Halt")
	}
}
