package display

import (
	"strings"
	"testing"

	"periph.io/x/conn/v3/i2c/i2ctest"
)

// initOps returns the transactions of NewI2C for a blank 128×64 panel at
// addr: the controller's set-up, then the first (full) picture, page by page.
func initOps(addr uint16) []i2ctest.IO {
	ops := []i2ctest.IO{{Addr: addr, W: []byte{
		0x00,       // control byte: commands
		0xAE,       // display off
		0xD3, 0x00, // display offset 0
		0x40,       // start line 0
		0xA1,       // segment remap: column 127 is SEG0
		0xC8,       // COM scan from COM[N-1]
		0xDA, 0x12, // COM pins: alternative, no left/right remap
		0x81, 0xFF, // contrast
		0xA4,       // show the memory
		0xA6,       // normal (not inverted)
		0xD5, 0xF0, // clock divide ratio and oscillator frequency
		0x8D, 0x14, // charge pump on
		0xD9, 0xF1, // pre-charge period
		0xDB, 0x40, // VCOMH deselect level
		0x2E,     // scrolling off
		0xA8, 63, // multiplex ratio: 64 lines
		0x20, 0x00, // horizontal addressing
		0x21, 0, 127, // columns 0…127
		0x22, 0, 7, // pages 0…7
		0xAF, // display on
	}}}
	for page := byte(0); page < 8; page++ {
		// Page start address, column 0 (low and high nibbles), then the
		// page's 128 columns, blank.
		ops = append(ops,
			i2ctest.IO{Addr: addr, W: []byte{0x00, 0xB0 | page, 0x00, 0x10}},
			i2ctest.IO{Addr: addr, W: append([]byte{0x40}, make([]byte, 128)...)},
		)
	}
	return ops
}

func TestNewI2CPlayback(t *testing.T) {
	pb := &i2ctest.Playback{Ops: initOps(DefaultAddr)}
	d, err := NewI2C(pb, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := pb.Close(); err != nil {
		t.Fatal(err)
	}
	if got := d.String(); got != "display{ssd1306 128x64 0x3c}" {
		t.Fatalf("String() = %q", got)
	}
	if l, c := d.Size(); l != 8 || c != 21 {
		t.Fatalf("Size() = %d, %d", l, c)
	}
	// Showing the same (blank) picture again sends nothing: Playback would
	// panic on an unexpected transaction.
	if err := d.Show(); err != nil {
		t.Fatal(err)
	}
}

func TestAltAddress(t *testing.T) {
	pb := &i2ctest.Playback{Ops: initOps(AltAddr)}
	d, err := NewI2C(pb, &Opts{Addr: AltAddr})
	if err != nil {
		t.Fatal(err)
	}
	if err := pb.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(d.String(), " 0x3d}") {
		t.Fatalf("String() = %q", d.String())
	}
	if _, err := NewI2C(pb, &Opts{Addr: 0x50}); err == nil || err.Error() != "display: address 0x50 is not an SSD1306 address" {
		t.Fatalf("NewI2C(0x50) = %v", err)
	}
}

func TestFontGlyphsDistinct(t *testing.T) {
	seen := map[[glyphW]byte]rune{}
	for i, g := range font {
		r := rune(0x20 + i)
		if prev, ok := seen[g]; ok {
			t.Errorf("%q and %q look the same", prev, r)
		}
		seen[g] = r
		for _, col := range g {
			if col&0x80 != 0 {
				t.Errorf("%q uses the cell's spacing row", r)
			}
		}
	}
}

func TestCut(t *testing.T) {
	// Cutting counts characters, not bytes.
	if got := cut("温度温度", 3); got != "温度温" {
		t.Fatalf("cut = %q", got)
	}
	if got := cut("abc", 5); got != "abc" {
		t.Fatalf("cut = %q", got)
	}
}
