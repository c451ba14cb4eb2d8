// Package display shows a few lines of status text on an optional SSD1306
// OLED panel over I²C, with periph.io's ssd1306 driver and a built-in 5×7
// font (printable ASCII; anything else shows as '?').
//
// A 128×64 panel holds 8 lines of 21 characters, a 128×32 one 4 lines.
//
// A Display talks through the bus it is given and never closes it: whoever
// opened the bus (the hardware assembly, station.dev/agent/drivers/hw)
// closes it. Package displaysim is the emulated twin: an SSD1306 behind an
// i2c.Bus whose picture can be read back as text.
package display

import (
	"errors"
	"fmt"
	"image"
	"sync"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/devices/v3/ssd1306"
	"periph.io/x/devices/v3/ssd1306/image1bit"
)

// Health states reported by Health.
const (
	HealthOK       = "ok"
	HealthDegraded = "degraded"
	HealthDown     = "down"
)

// Addresses of SSD1306 panels, selected by the panel's SA0 pin.
const (
	DefaultAddr = 0x3C
	AltAddr     = 0x3D
)

// Opts are the options of a Display. A nil *Opts means all defaults.
type Opts struct {
	// Width and Height are the panel's size in pixels; zero means 128×64.
	Width, Height int
	// Addr is the panel's address, DefaultAddr (zero means it) or AltAddr.
	Addr uint16
	// Rotated turns the picture by 180°, for a panel mounted upside down.
	Rotated bool
}

// Display shows lines of text. Its methods are safe for concurrent use.
type Display struct {
	conn i2c.Bus      // the bus the driver talks through
	so   ssd1306.Opts // to set the controller up again
	addr uint16
	rect image.Rectangle

	mu     sync.Mutex
	dev    *ssd1306.Dev
	lines  []string
	err    error // of the last update; the next one sets the controller up again
	closed bool
}

// NewI2C initialises the panel on bus b and clears it. It talks to the panel
// at once, so a missing one fails here. The Display never closes b.
func NewI2C(b i2c.Bus, opts *Opts) (*Display, error) {
	var o Opts
	if opts != nil {
		o = *opts
	}
	if o.Width == 0 && o.Height == 0 {
		o.Width, o.Height = 128, 64
	}
	if o.Addr == 0 {
		o.Addr = DefaultAddr
	}
	if o.Addr != DefaultAddr && o.Addr != AltAddr {
		return nil, fmt.Errorf("display: address 0x%02x is not an SSD1306 address", o.Addr)
	}
	so := ssd1306.DefaultOpts
	so.W, so.H = o.Width, o.Height
	so.MirrorHorizontal, so.MirrorVertical = o.Rotated, o.Rotated
	var bus i2c.Bus = b
	if o.Addr != DefaultAddr {
		// periph's ssd1306 always speaks to 0x3C.
		bus = &readdress{Bus: b, to: o.Addr}
	}
	dev, err := ssd1306.NewI2C(bus, &so)
	if err != nil {
		return nil, fmt.Errorf("display: no panel at %s 0x%02x: %w", b, o.Addr, err)
	}
	d := &Display{conn: bus, so: so, dev: dev, addr: o.Addr, rect: dev.Bounds()}
	if err := d.Show(); err != nil {
		return nil, err
	}
	return d, nil
}

// String describes the display, e.g. "display{ssd1306 128x64 0x3c}".
func (d *Display) String() string {
	return fmt.Sprintf("display{ssd1306 %dx%d 0x%02x}", d.rect.Dx(), d.rect.Dy(), d.addr)
}

// Size returns how many lines of how many characters the panel holds.
func (d *Display) Size() (lines, columns int) {
	return d.rect.Dy() / cellH, d.rect.Dx() / cellW
}

// Show replaces the text on the panel: one string per line from the top.
// Lines beyond the panel are dropped and long lines cut; only the part of the
// picture that changed is sent.
func (d *Display) Show(lines ...string) error {
	n, cols := d.Size()
	if len(lines) > n {
		lines = lines[:n]
	}
	kept := make([]string, len(lines))
	for i, l := range lines {
		kept[i] = cut(l, cols)
	}
	img := Render(kept, d.rect.Dx(), d.rect.Dy())
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("display: closed")
	}
	var err error
	if d.err != nil {
		// The last update failed: the panel may hold part of it or may have
		// lost power. Set it up again, which also sends the whole picture.
		var dev *ssd1306.Dev
		if dev, err = ssd1306.NewI2C(d.conn, &d.so); err == nil {
			d.dev = dev
		}
	}
	if err == nil {
		err = d.dev.Draw(d.rect, img, image.Point{})
	}
	if err != nil {
		err = fmt.Errorf("display: draw: %w", err)
	} else {
		d.lines = kept
	}
	d.err = err
	return err
}

// Lines returns the text shown, as cut to fit.
func (d *Display) Lines() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.lines...)
}

// Health reports "ok", "degraded" when the last update failed (the panel
// shows older text; the next Show sets it up again), or "down" once closed.
func (d *Display) Health() (status, reason string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.closed:
		return HealthDown, "display: closed"
	case d.err != nil:
		return HealthDegraded, d.err.Error()
	}
	return HealthOK, ""
}

// Halt turns the panel off; the next Show turns it on again.
func (d *Display) Halt() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.dev.Halt(); err != nil {
		return fmt.Errorf("display: halt: %w", err)
	}
	return nil
}

// Close turns the panel off; later updates fail and Health reports "down".
// It does not close the bus.
func (d *Display) Close() error {
	err := d.Halt()
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	return err
}

// Status is what the station shows on its panel.
type Status struct {
	StationID string
	Online    bool
	Queue     int
	// Last is the outcome of the last presentation, e.g. "recorded".
	Last string
}

// StatusLines lays a Status out in lines for Show:
//
//	huayang-xianglong-01
//	online   queue 12
//	last: recorded
func StatusLines(s Status) []string {
	state := "offline"
	if s.Online {
		state = "online"
	}
	lines := []string{s.StationID, fmt.Sprintf("%-8s queue %d", state, s.Queue)}
	if s.Last != "" {
		lines = append(lines, "last: "+s.Last)
	}
	return lines
}

// Render draws lines of text, top left, into a w×h picture in the panel's
// memory layout.
func Render(lines []string, w, h int) *image1bit.VerticalLSB {
	img := image1bit.NewVerticalLSB(image.Rect(0, 0, w, h))
	for row, l := range lines {
		y0 := row * cellH
		if y0+cellH > h {
			break
		}
		col := 0
		for _, r := range l {
			x0 := col * cellW
			if x0+glyphW > w {
				break
			}
			g := glyph(r)
			for x := 0; x < glyphW; x++ {
				for y := 0; y < cellH-1; y++ {
					if g[x]&(1<<y) != 0 {
						img.SetBit(x0+x, y0+y, image1bit.On)
					}
				}
			}
			col++
		}
	}
	return img
}

// cut shortens s to n characters.
func cut(s string, n int) string {
	i := 0
	for j := range s {
		if i == n {
			return s[:j]
		}
		i++
	}
	return s
}

// readdress sends the transactions meant for 0x3C to another address.
type readdress struct {
	i2c.Bus
	to uint16
}

func (r *readdress) Tx(addr uint16, w, rd []byte) error {
	if addr == DefaultAddr {
		addr = r.to
	}
	return r.Bus.Tx(addr, w, rd)
}

// String implements i2c.Bus.
func (r *readdress) String() string {
	return r.Bus.String()
}
