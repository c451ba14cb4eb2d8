package indicator

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"periph.io/x/conn/v3/physic"
)

// Pattern names something the station shows with its LEDs and buzzer.
type Pattern string

// The patterns every Indicator knows. Config.Patterns may redefine them or add
// others.
const (
	// Idle is the heartbeat shown when nothing else is active. It is always
	// active underneath the others: Show(Idle) and Clear(Idle) do nothing.
	Idle Pattern = "idle"
	// Recorded answers a card presentation that was stored and is online.
	Recorded Pattern = "recorded"
	// RecordedOffline answers a presentation that was stored locally and will
	// be forwarded once the broker is reachable again.
	RecordedOffline Pattern = "recorded_offline"
	// Refused answers a presentation that was not recorded: the store is full
	// or the card is not accepted.
	Refused Pattern = "refused"
	// Error answers a failed read (card removed too early, unsupported card)
	// or signals a station fault.
	Error Pattern = "error"
	// Locate blinks so that the unit can be found among others. It lasts
	// until cleared or until the duration given to Locate passes.
	Locate Pattern = "locate"
)

// Color is a set of LEDs: one bit per LED, whether the three LEDs are the
// dies of one RGB LED or separate lamps.
type Color uint8

// LED sets.
const (
	Off     Color = 0
	Red     Color = 1
	Green   Color = 2
	Blue    Color = 4
	Yellow  Color = Red | Green
	Cyan    Color = Green | Blue
	Magenta Color = Red | Blue
	White   Color = Red | Green | Blue
)

var colorNames = [...]string{"off", "red", "green", "yellow", "blue", "magenta", "cyan", "white"}

// String returns the colour's name, e.g. "yellow".
func (c Color) String() string {
	if int(c) < len(colorNames) {
		return colorNames[c]
	}
	return fmt.Sprintf("Color(%d)", uint8(c))
}

// Step is one state of the outputs held for a time.
type Step struct {
	// LEDs lists the LEDs lit during the step.
	LEDs Color
	// Tone is the buzzer frequency; 0 keeps the buzzer silent. A buzzer
	// driven on/off sounds for any non-zero Tone.
	Tone physic.Frequency
	// D is how long the step lasts; it must be positive.
	D time.Duration
}

// Program describes how a Pattern looks and how it competes with others.
type Program struct {
	// Priority orders the active patterns: the one with the highest priority
	// is shown. Patterns of equal priority replace one another, the most
	// recent Show winning.
	Priority int
	// Steps are played in order. There must be at least one.
	Steps []Step
	// Loop repeats the steps until the pattern is cleared or Duration passes.
	// Without Loop the steps are played once and the pattern ends (a
	// transient pattern): the pattern underneath shows again.
	Loop bool
	// Duration bounds a looping pattern; 0 means until cleared. It is ignored
	// without Loop.
	Duration time.Duration
}

// Priorities of the default programs.
const (
	PriorityIdle     = 0
	PriorityLocate   = 10
	PriorityFeedback = 20
)

// DefaultPrograms returns the programs of the standard patterns. The map and
// its slices are fresh copies which the caller may change.
//
// Feedback patterns (recorded, recorded_offline, refused, error) share one
// priority so that the answer to the latest presentation replaces an earlier
// one; they pre-empt locate, which pre-empts the idle heartbeat.
func DefaultPrograms() map[Pattern]Program {
	const (
		beepHigh = 2 * physic.KiloHertz
		beepLow  = 500 * physic.Hertz
		chirp    = 3 * physic.KiloHertz
	)
	return map[Pattern]Program{
		Idle: {Priority: PriorityIdle, Loop: true, Steps: []Step{
			{LEDs: Green, D: 60 * time.Millisecond},
			{LEDs: Off, D: 2940 * time.Millisecond},
		}},
		Recorded: {Priority: PriorityFeedback, Steps: []Step{
			{LEDs: Green, Tone: beepHigh, D: 150 * time.Millisecond},
			{LEDs: Green, D: 850 * time.Millisecond},
		}},
		RecordedOffline: {Priority: PriorityFeedback, Steps: []Step{
			{LEDs: Yellow, Tone: beepHigh, D: 150 * time.Millisecond},
			{LEDs: Yellow, D: 850 * time.Millisecond},
		}},
		Refused: {Priority: PriorityFeedback, Steps: []Step{
			{LEDs: Red, Tone: beepLow, D: 300 * time.Millisecond},
			{LEDs: Off, D: 100 * time.Millisecond},
			{LEDs: Red, Tone: beepLow, D: 300 * time.Millisecond},
			{LEDs: Red, D: 800 * time.Millisecond},
		}},
		Error: {Priority: PriorityFeedback, Steps: []Step{
			{LEDs: Red, Tone: beepHigh, D: 100 * time.Millisecond},
			{LEDs: Off, D: 100 * time.Millisecond},
			{LEDs: Red, Tone: beepHigh, D: 100 * time.Millisecond},
			{LEDs: Off, D: 100 * time.Millisecond},
			{LEDs: Red, Tone: beepHigh, D: 100 * time.Millisecond},
			{LEDs: Red, D: 1000 * time.Millisecond},
		}},
		Locate: {Priority: PriorityLocate, Loop: true, Steps: []Step{
			{LEDs: White, Tone: chirp, D: 50 * time.Millisecond},
			{LEDs: White, D: 200 * time.Millisecond},
			{LEDs: Off, D: 250 * time.Millisecond},
			{LEDs: Blue, D: 250 * time.Millisecond},
			{LEDs: Off, D: 250 * time.Millisecond},
		}},
	}
}

// validate checks a program and returns a copy that shares nothing with p.
func (p Program) validate() (Program, error) {
	if len(p.Steps) == 0 {
		return Program{}, errors.New("no steps")
	}
	for i, s := range p.Steps {
		if s.D <= 0 {
			return Program{}, fmt.Errorf("step %d: duration %s is not positive", i, s.D)
		}
		if s.LEDs > White {
			return Program{}, fmt.Errorf("step %d: invalid LED set %d", i, s.LEDs)
		}
		if s.Tone < 0 {
			return Program{}, fmt.Errorf("step %d: negative tone", i)
		}
	}
	if p.Duration < 0 {
		return Program{}, fmt.Errorf("negative duration %s", p.Duration)
	}
	p.Steps = append([]Step(nil), p.Steps...)
	return p, nil
}

// total returns the time the steps take once through.
func (p *Program) total() time.Duration {
	var t time.Duration
	for _, s := range p.Steps {
		t += s.D
	}
	return t
}

// at returns the step shown elapsed after the program started and how long
// that step still lasts. elapsed must not be negative; a program that does
// not loop holds its last step past its end.
func (p *Program) at(elapsed time.Duration) (Step, time.Duration) {
	if p.Loop {
		elapsed %= p.total()
	}
	for _, s := range p.Steps {
		if elapsed < s.D {
			return s, s.D - elapsed
		}
		elapsed -= s.D
	}
	last := p.Steps[len(p.Steps)-1]
	return last, last.D
}

// String describes a program in one line, e.g. "prio 20 once: green+2kHz/150ms off/850ms".
func (p Program) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "prio %d ", p.Priority)
	if p.Loop {
		b.WriteString("loop")
		if p.Duration > 0 {
			fmt.Fprintf(&b, " %s", p.Duration)
		}
	} else {
		b.WriteString("once")
	}
	b.WriteString(":")
	for _, s := range p.Steps {
		b.WriteString(" ")
		b.WriteString(s.LEDs.String())
		if s.Tone > 0 {
			b.WriteString("+")
			b.WriteString(s.Tone.String())
		}
		b.WriteString("/")
		b.WriteString(s.D.String())
	}
	return b.String()
}
