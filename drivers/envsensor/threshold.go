package envsensor

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// Quantity names an alarm: what is measured and on which side of its limit
// the alarm lies.
type Quantity string

// The alarms a Monitor knows.
const (
	TempHigh     Quantity = "temp_high"
	TempLow      Quantity = "temp_low"
	HumidityHigh Quantity = "humidity_high"
	HumidityLow  Quantity = "humidity_low"
)

// high tells whether the alarm is raised above its limit (rather than below).
func (q Quantity) high() bool {
	return q == TempHigh || q == HumidityHigh
}

// value picks the quantity's value from a reading (NaN when absent).
func (q Quantity) value(r Reading) float64 {
	switch q {
	case TempHigh, TempLow:
		return r.TempC
	case HumidityHigh, HumidityLow:
		return r.Humidity
	}
	return math.NaN()
}

// Threshold is one alarm with hysteresis. For a high alarm (temp_high,
// humidity_high) the alarm is raised when the value rises above Limit and
// cleared when it falls below Limit-Hysteresis; for a low alarm (temp_low,
// humidity_low), raised below Limit and cleared above Limit+Hysteresis. In
// between the alarm keeps its state, so a value hovering at the limit does
// not flap.
type Threshold struct {
	Quantity   Quantity
	Limit      float64
	Hysteresis float64
}

// Next returns the alarm's state after value v, given its state before. A NaN
// value (not measured) leaves the state as it was.
func (t Threshold) Next(raised bool, v float64) bool {
	if math.IsNaN(v) {
		return raised
	}
	if t.Quantity.high() {
		if raised {
			return v >= t.Limit-t.Hysteresis
		}
		return v > t.Limit
	}
	if raised {
		return v <= t.Limit+t.Hysteresis
	}
	return v < t.Limit
}

func (t Threshold) validate() error {
	switch t.Quantity {
	case TempHigh, TempLow, HumidityHigh, HumidityLow:
	default:
		return fmt.Errorf("unknown quantity %q", t.Quantity)
	}
	if math.IsNaN(t.Limit) || math.IsInf(t.Limit, 0) {
		return fmt.Errorf("%s: limit %v is not a number", t.Quantity, t.Limit)
	}
	if !(t.Hysteresis >= 0) || math.IsInf(t.Hysteresis, 0) {
		return fmt.Errorf("%s: hysteresis %v must be zero or positive", t.Quantity, t.Hysteresis)
	}
	return nil
}

// Transition is an alarm raised or cleared.
type Transition struct {
	// Quantity names the alarm.
	Quantity Quantity `json:"quantity"`
	// Raised is true when the alarm was raised, false when it cleared.
	Raised bool `json:"raised"`
	// Value is the value that caused the transition.
	Value float64 `json:"value"`
	// Limit is the threshold's limit.
	Limit float64 `json:"limit"`
	// At is the time of the reading.
	At time.Time `json:"at"`
}

// Monitor follows readings and reports alarm transitions. It is safe for
// concurrent use.
type Monitor struct {
	ts []Threshold

	mu     sync.Mutex
	raised []bool
}

// NewMonitor returns a Monitor of the given thresholds, every alarm clear.
// Each quantity may appear once.
func NewMonitor(ts ...Threshold) (*Monitor, error) {
	seen := map[Quantity]bool{}
	for _, t := range ts {
		if err := t.validate(); err != nil {
			return nil, fmt.Errorf("envsensor: threshold: %w", err)
		}
		if seen[t.Quantity] {
			return nil, fmt.Errorf("envsensor: threshold: %s given twice", t.Quantity)
		}
		seen[t.Quantity] = true
	}
	if err := checkBands(ts); err != nil {
		return nil, err
	}
	return &Monitor{ts: append([]Threshold(nil), ts...), raised: make([]bool, len(ts))}, nil
}

// checkBands rejects a low limit at or above the high limit of the same
// measurement, which would keep one alarm or the other raised for ever.
func checkBands(ts []Threshold) error {
	lim := map[Quantity]float64{}
	for _, t := range ts {
		lim[t.Quantity] = t.Limit
	}
	for _, p := range [][2]Quantity{{TempLow, TempHigh}, {HumidityLow, HumidityHigh}} {
		lo, okL := lim[p[0]]
		hi, okH := lim[p[1]]
		if okL && okH && lo >= hi {
			return errors.New("envsensor: threshold: " + string(p[0]) + " limit must be below " + string(p[1]) + " limit")
		}
	}
	return nil
}

// Observe takes a reading and returns the transitions it causes, in the order
// the thresholds were given (none most of the time).
func (m *Monitor) Observe(r Reading) []Transition {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Transition
	for i, t := range m.ts {
		v := t.Quantity.value(r)
		next := t.Next(m.raised[i], v)
		if next != m.raised[i] {
			m.raised[i] = next
			out = append(out, Transition{Quantity: t.Quantity, Raised: next, Value: v, Limit: t.Limit, At: r.At})
		}
	}
	return out
}

// Raised returns the alarms raised now.
func (m *Monitor) Raised() []Quantity {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Quantity
	for i, t := range m.ts {
		if m.raised[i] {
			out = append(out, t.Quantity)
		}
	}
	return out
}
