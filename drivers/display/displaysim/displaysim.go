// Package displaysim emulates the station's SSD1306 OLED panel behind an
// i2c.Bus, so that simulation and tests run the real display code
// (station.dev/agent/drivers/display and periph's ssd1306) and can read the
// picture back as text.
package displaysim

import (
	"fmt"
	"strings"
	"sync"

	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/physic"

	"station.dev/agent/drivers/display"
)

// Cell geometry of display's built-in font: 5×7 glyphs in 6×8 cells.
const (
	glyphW = 5
	cellW  = 6
	cellH  = 8
)

// Panel emulates a 128×64 SSD1306 on its own I²C bus at display.DefaultAddr:
// it follows the command stream (display on/off, addressing mode, column and
// page addresses) and keeps the picture written to its memory, which Lines
// reads back as text.
type Panel struct {
	mu    sync.Mutex
	ram   [8][128]byte // 8 pages of 128 columns, bit 0 at the top
	on    bool
	page  int
	col   int
	mode  byte // 0 horizontal, 1 vertical, 2 page addressing
	c0    int  // column range (horizontal and vertical modes)
	c1    int
	p0    int // page range
	p1    int
	bytes int // data bytes received
}

// New returns an emulated panel, off and blank.
func New() *Panel {
	return &Panel{mode: 2, c1: 127, p1: 7}
}

// String implements i2c.Bus.
func (p *Panel) String() string {
	return "SimSSD1306"
}

// SetSpeed implements i2c.Bus.
func (p *Panel) SetSpeed(physic.Frequency) error {
	return nil
}

// Tx implements i2c.Bus. A write starts with a control byte: 0x00 for
// commands, 0x40 for picture data.
func (p *Panel) Tx(addr uint16, w, r []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if addr != display.DefaultAddr {
		return fmt.Errorf("displaysim: no device answers at 0x%02x", addr)
	}
	if len(r) != 0 || len(w) == 0 {
		return fmt.Errorf("displaysim: unsupported transaction (write %d, read %d bytes)", len(w), len(r))
	}
	switch w[0] {
	case 0x00:
		return p.commands(w[1:])
	case 0x40:
		for _, b := range w[1:] {
			p.data(b)
		}
		return nil
	}
	return fmt.Errorf("displaysim: unknown control byte 0x%02x", w[0])
}

// argCount is the number of argument bytes of the SSD1306 commands that
// take some.
var argCount = map[byte]int{
	0x20: 1, 0x21: 2, 0x22: 2, 0x26: 6, 0x27: 6, 0x29: 5, 0x2A: 5, 0x81: 1, 0x8D: 1,
	0xA3: 2, 0xA8: 1, 0xD3: 1, 0xD5: 1, 0xD9: 1, 0xDA: 1, 0xDB: 1,
}

func (p *Panel) commands(c []byte) error {
	for len(c) > 0 {
		op := c[0]
		n := argCount[op]
		if len(c) < 1+n {
			return fmt.Errorf("displaysim: command 0x%02x lacks arguments", op)
		}
		a := c[1 : 1+n]
		c = c[1+n:]
		switch {
		case op == 0xAE:
			p.on = false
		case op == 0xAF:
			p.on = true
		case op == 0x20:
			p.mode = a[0] & 3
		case op == 0x21:
			p.c0, p.c1 = int(a[0]&0x7F), int(a[1]&0x7F)
			p.col = p.c0
		case op == 0x22:
			p.p0, p.p1 = int(a[0]&7), int(a[1]&7)
			p.page = p.p0
		case op >= 0xB0 && op <= 0xB7:
			p.page = int(op & 7)
		case op <= 0x0F:
			p.col = p.col&0xF0 | int(op)
		case op >= 0x10 && op <= 0x1F:
			p.col = p.col&0x0F | int(op&0x0F)<<4
		}
		// Other commands (contrast, remapping, timing, scrolling) do not
		// change what the memory holds.
	}
	return nil
}

func (p *Panel) data(b byte) {
	p.bytes++
	p.ram[p.page][p.col&0x7F] = b
	switch p.mode {
	case 0: // horizontal
		if p.col++; p.col > p.c1 {
			p.col = p.c0
			if p.page++; p.page > p.p1 {
				p.page = p.p0
			}
		}
	case 1: // vertical
		if p.page++; p.page > p.p1 {
			p.page = p.p0
			if p.col++; p.col > p.c1 {
				p.col = p.c0
			}
		}
	default: // page
		p.col = (p.col + 1) & 0x7F
	}
}

// On tells whether the panel is on.
func (p *Panel) On() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.on
}

// Pixel tells whether the pixel at x, y is lit in the panel's memory.
func (p *Panel) Pixel(x, y int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if x < 0 || x >= 128 || y < 0 || y >= 64 {
		return false
	}
	return p.ram[y/8][x]&(1<<(y%8)) != 0
}

// DataBytes returns how many picture bytes the panel has received.
func (p *Panel) DataBytes() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bytes
}

// Lines reads the picture back as text in the built-in font, one string per
// line of the panel with trailing blanks removed; a cell that is no glyph
// reads as '#'. An empty panel gives empty strings.
func (p *Panel) Lines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 8)
	for page := range p.ram {
		var b strings.Builder
		for x0 := 0; x0+glyphW <= 128; x0 += cellW {
			var cell [glyphW]byte
			copy(cell[:], p.ram[page][x0:x0+glyphW])
			b.WriteByte(decode(cell))
		}
		out[page] = strings.TrimRight(b.String(), " ")
	}
	return out
}

// decode finds the character drawn in a cell.
func decode(cell [glyphW]byte) byte {
	if c, ok := glyphs()[cell]; ok {
		return c
	}
	return '#'
}

// glyphs maps the columns of each printable ASCII character, as
// display.Render draws it, to the character.
var glyphs = sync.OnceValue(func() map[[glyphW]byte]byte {
	m := make(map[[glyphW]byte]byte, 0x7F-0x20)
	for c := byte(0x20); c < 0x7F; c++ {
		img := display.Render([]string{string(rune(c))}, cellW, cellH)
		var cell [glyphW]byte
		for x := range cell {
			for y := 0; y < cellH; y++ {
				if img.BitAt(x, y) {
					cell[x] |= 1 << y
				}
			}
		}
		m[cell] = c
	}
	return m
})

var _ i2c.Bus = (*Panel)(nil)
