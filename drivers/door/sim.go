package door

import (
	"errors"
	"sync"
	"time"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/conn/v3/pin"

	"station.dev/agent/internal/clock"
)

// SimSwitchConfig configures a SimSwitch.
type SimSwitchConfig struct {
	// Open is the initial state of the door.
	Open bool
	// OpenLow must match the Door's Config.OpenLow.
	OpenLow bool
	// NoEdges emulates a pin without edge detection: In refuses edges and the
	// Door falls back to polling.
	NoEdges bool
	// Clock times WaitForEdge; nil means the system clock.
	Clock Clock
}

// SimSwitch is the emulated door switch: a gpio.PinIn for a Door whose level
// simulation sets with Set. It reports edges to WaitForEdge when edge
// detection is enabled; edges that come faster than they are waited for
// collapse into one, as on real pins.
type SimSwitch struct {
	pin.BasicPin
	openLow bool
	noEdges bool
	clk     Clock

	halt chan struct{} // Halt interrupts WaitForEdge

	mu    sync.Mutex
	open  bool
	pull  gpio.Pull
	edge  gpio.Edge
	edges chan struct{} // non-nil while edge detection is enabled
}

// NewSimSwitch returns an emulated switch named "SIM_DOOR".
func NewSimSwitch(cfg SimSwitchConfig) *SimSwitch {
	s := &SimSwitch{
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
func (s *SimSwitch) Set(open bool) {
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

// IsOpen tells whether the emulated door is open.
func (s *SimSwitch) IsOpen() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open
}

func (s *SimSwitch) levelLocked() gpio.Level {
	return gpio.Level(s.open != s.openLow)
}

// Function implements pin.Pin.
func (s *SimSwitch) Function() string {
	return "In/" + s.Read().String()
}

// In implements gpio.PinIn. It refuses edge detection when the switch was
// made with NoEdges.
func (s *SimSwitch) In(pull gpio.Pull, edge gpio.Edge) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if edge != gpio.NoEdge && s.noEdges {
		return errors.New("door: sim: edge detection not supported")
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
func (s *SimSwitch) Read() gpio.Level {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.levelLocked()
}

// WaitForEdge implements gpio.PinIn: it returns true at an edge, false when
// timeout passes (a negative timeout waits for ever), when Halt is called, or
// at once when edge detection is off.
func (s *SimSwitch) WaitForEdge(timeout time.Duration) bool {
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
func (s *SimSwitch) Halt() error {
	select {
	case s.halt <- struct{}{}:
	default:
	}
	return nil
}

// Pull implements gpio.PinIn.
func (s *SimSwitch) Pull() gpio.Pull {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pull
}

// DefaultPull implements gpio.PinIn.
func (s *SimSwitch) DefaultPull() gpio.Pull {
	return gpio.PullUp
}

// Out implements gpio.PinOut: the switch is an input and refuses.
func (s *SimSwitch) Out(gpio.Level) error {
	return errors.New("door: sim: the switch is an input")
}

// PWM implements gpio.PinOut: the switch is an input and refuses.
func (s *SimSwitch) PWM(gpio.Duty, physic.Frequency) error {
	return errors.New("door: sim: the switch is an input")
}

// SimSwitch is a gpio.PinIO so that simulation may register it with gpioreg
// and Open it by name.
var _ gpio.PinIO = (*SimSwitch)(nil)
