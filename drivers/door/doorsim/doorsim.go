// Package doorsim emulates the cabinet door switch for the door driver
// (station.dev/agent/drivers/door): a gpio.PinIO whose level simulation and
// tests set, with edge detection that can be interrupted like a real pin's.
// It is test support and the switch of `station run --sim`.
package doorsim

import (
	"errors"
	"sync"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/conn/v3/pin"

	"station.dev/agent/internal/clock"
)

// Config configures a Switch.
type Config struct {
	// Open is the initial state of the door.
	Open bool
	// OpenLow must match the door.Config.OpenLow of the Door reading it.
	OpenLow bool
	// NoEdges emulates a pin without edge detection: In refuses edges and the
	// Door falls back to polling.
	NoEdges bool
	// Clock times WaitForEdge; nil means the system clock.
	Clock clock.Clock
}

// Switch is the emulated door switch: a gpio.PinIn for a door.Door whose
// level simulation sets with Set. It reports edges to WaitForEdge when edge
// detection is enabled; edges that come faster than they are waited for
// collapse into one, as on real pins.
type Switch struct {
	pin.BasicPin
	openLow bool
	noEdges bool
	clk     clock.Clock

	halt chan struct{} // Halt interrupts WaitForEdge

	mu    sync.Mutex
	open  bool
	pull  gpio.Pull
	edge  gpio.Edge
	edges chan struct{} // non-nil while edge detection is enabled
}

// New returns an emulated switch named "SIM_DOOR".
func New(cfg Config) *Switch {
	s := &Switch{
		BasicPin: pin.BasicPin{N: "SIM_DOOR"},
		openLow:  cfg.OpenLow,
		noEdges:  cfg.NoEdges,
		clk:      cfg.Clock,
		open:     cfg.Open,
		halt:     make(chan struct{}, 1),
	}
	if s.clk == nil {
		s.clk = clock.System
	}
	return s
}

// Set opens or closes the emulated door.
func (s *Switch) Set(open bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if open == s.open {
		return
	}
	s.open = open
	if s.edges == nil {
		return
	}
	rising := s.levelLocked() == gpio.High
	if s.edge == gpio.BothEdges || (rising && s.edge == gpio.RisingEdge) || (!rising && s.edge == gpio.FallingEdge) {
		select {
		case s.edges <- struct{}{}:
		default:
		}
	}
}

// SetNoEdge opens or closes the emulated door without reporting an edge, as
// a real pin does when it misses one: only a read of the level sees it.
func (s *Switch) SetNoEdge(open bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.open = open
}

// IsOpen tells whether the emulated door is open.
func (s *Switch) IsOpen() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open
}

func (s *Switch) levelLocked() gpio.Level {
	return gpio.Level(s.open != s.openLow)
}

// Function implements pin.Pin.
func (s *Switch) Function() string {
	return "In/" + s.Read().String()
}

// In implements gpio.PinIn. It refuses edge detection when the switch was
// made with NoEdges.
func (s *Switch) In(pull gpio.Pull, edge gpio.Edge) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if edge != gpio.NoEdge && s.noEdges {
		return errors.New("doorsim: edge detection not supported")
	}
	if pull != gpio.PullNoChange {
		s.pull = pull
	}
	s.edge = edge
	s.edges = nil
	if edge != gpio.NoEdge {
		s.edges = make(chan struct{}, 1)
	}
	return nil
}

// Read implements gpio.PinIn.
func (s *Switch) Read() gpio.Level {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.levelLocked()
}

// WaitForEdge implements gpio.PinIn: it returns true at an edge, false when
// timeout passes (a negative timeout waits for ever), when Halt is called, or
// at once when edge detection is off.
func (s *Switch) WaitForEdge(timeout time.Duration) bool {
	s.mu.Lock()
	edges := s.edges
	s.mu.Unlock()
	if edges == nil {
		return false
	}
	if timeout < 0 {
		select {
		case <-edges:
			return true
		case <-s.halt:
			return false
		}
	}
	t := s.clk.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-edges:
		return true
	case <-t.C():
		return false
	case <-s.halt:
		return false
	}
}

// Halt implements conn.Resource: it interrupts a WaitForEdge in progress.
func (s *Switch) Halt() error {
	select {
	case s.halt <- struct{}{}:
	default:
	}
	return nil
}

// Pull implements gpio.PinIn.
func (s *Switch) Pull() gpio.Pull {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pull
}

// DefaultPull implements gpio.PinIn.
func (s *Switch) DefaultPull() gpio.Pull {
	return gpio.PullUp
}

// Out implements gpio.PinOut: the switch is an input and refuses.
func (s *Switch) Out(gpio.Level) error {
	return errors.New("doorsim: the switch is an input")
}

// PWM implements gpio.PinOut: the switch is an input and refuses.
func (s *Switch) PWM(gpio.Duty, physic.Frequency) error {
	return errors.New("doorsim: the switch is an input")
}

// Switch is a gpio.PinIO so that it may stand for any pin, also in periph's
// registry.
var _ gpio.PinIO = (*Switch)(nil)
